"""The sweeper: what it stops, what it never stops, in which order it touches the state file.

No process is signalled here: ``stop_gracefully`` is replaced by a fake that records what the
sweeper asked for, answering as the real one does (a :data:`StopPath`, or
:class:`SignalRefused` / :class:`TimeoutError`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked

from sks_harness import DEFAULT_TIMEOUT
from spec_kitty_supervisor import _sweep
from spec_kitty_supervisor._discovery import Observation
from spec_kitty_supervisor._identity import ProcessIdentity, read_identity
from spec_kitty_supervisor._legacy_state import LegacyRecord, read_legacy_state, write_legacy_state
from spec_kitty_supervisor._signals import (
    SignalRefused,
    SignalTarget,
    check_family_boundary,
    send_signal,
)
from spec_kitty_supervisor._sweep import plan_sweep, sweep
from spec_kitty_supervisor_client._models import (
    CleanupClass,
    ListenerRecord,
    ResetRequest,
    ResetResult,
)

TOKEN = "5bd2a7e6c1f04d3e9a8b7c6d5e4f3a2b"


def observed(
    port: int,
    cleanup_class: CleanupClass,
    skip_reason: str | None = None,
    *,
    pid: int | None = None,
    recorded: bool = False,
    proven: bool = True,
    uid: int | None = None,
) -> Observation:
    pid = pid if pid is not None else 50_000 + port
    return Observation(
        record=ListenerRecord(
            port=port,
            pid=pid,
            package_version="3.2.4",
            protocol_version=1,
            cleanup_class=cleanup_class,
            skip_reason=skip_reason,
            is_recorded_singleton=recorded,
            self_report_matches_listener=proven,
            why="A daemon of this root at 3.2.4.",
        ),
        identity=ProcessIdentity(
            pid=pid, start=f"boot:{pid}", uid=os.getuid() if uid is None else uid
        ),
        health_token=TOKEN,
    )


class FakeStops:
    """Stands in for ``stop_gracefully``; ``on_stop`` may raise or inspect the world."""

    def __init__(self, on_stop: Callable[[SignalTarget], str] | None = None) -> None:
        self.calls: list[tuple[SignalTarget, str | None, float]] = []
        self.on_stop = on_stop

    async def __call__(
        self,
        target: SignalTarget,
        token: str | None,
        grace: float,
        http_timeout: float = 1.0,
    ) -> str:
        self.calls.append((target, token, grace))
        await anyio.lowlevel.checkpoint()
        return self.on_stop(target) if self.on_stop is not None else "http_shutdown"

    @property
    def pids(self) -> list[int]:
        return sorted(target.identity.pid for target, _, _ in self.calls)


async def sweep_guarded(
    observations: list[Observation], tmp_path: Path, **options: Any
) -> ResetResult:
    """A sweep of ``safe_auto`` choices, guarded against a deadlock (the guard is no duration)."""
    with anyio.fail_after(DEFAULT_TIMEOUT):
        return await sweep(
            observations, ResetRequest(), legacy_state=tmp_path / "sd", grace=3, **options
        )


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> FakeStops:
    fake = FakeStops()
    monkeypatch.setattr(_sweep, "stop_gracefully", fake)
    return fake


# --------------------------------------------------------------------------------------------
# What is chosen


@pytest.mark.anyio
async def test_safe_auto_daemons_are_all_stopped(stops: FakeStops, tmp_path: Path) -> None:
    observations = [observed(port, "safe_auto") for port in range(9401, 9419)]

    result = await sweep(observations, ResetRequest(), legacy_state=tmp_path / "sd", grace=3)

    assert stops.pids == sorted(o.identity.pid for o in observations if o.identity)
    assert [s.port for s in result.swept] == list(range(9401, 9419))
    assert {s.cleanup_path for s in result.swept} == {"http_shutdown"}
    assert result.skipped == []
    assert result.failed == []


@pytest.mark.anyio
async def test_a_few_daemons_exit_at_once_and_the_next_is_asked_when_one_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    count, at_once = 7, 3
    deaths: dict[int, anyio.Event] = {}  # asked, and dying when the test says so

    async def dying_when_told(
        target: SignalTarget, token: str | None, grace: float, _: float, **__: object
    ) -> str:
        deaths[target.port] = anyio.Event()
        await deaths[target.port].wait()
        return "http_shutdown"

    monkeypatch.setattr(_sweep, "stop_gracefully", dying_when_told)
    observations = [observed(9400 + i, "safe_auto") for i in range(count)]
    results: list[ResetResult] = []

    async def sweeping() -> None:
        # Only a death frees a place here.
        results.append(
            await sweep_guarded(
                observations, tmp_path, at_once=at_once, slot_seconds=DEFAULT_TIMEOUT * 10
            )
        )

    async with anyio.create_task_group() as group:
        group.start_soon(sweeping)
        await wait_all_tasks_blocked()
        assert sorted(deaths) == [9400, 9401, 9402]
        deaths[9401].set()
        await wait_all_tasks_blocked()
        assert sorted(deaths) == [9400, 9401, 9402, 9403]  # one gone, one more asked
        deaths[9400].set()
        deaths[9402].set()
        await wait_all_tasks_blocked()
        assert sorted(deaths) == list(range(9400, 9406))
        for port in range(9403, 9406):
            deaths[port].set()
        await wait_all_tasks_blocked()
        assert sorted(deaths) == list(range(9400, 9407))
        deaths[9406].set()
    (result,) = results
    assert [s.port for s in result.swept] == list(range(9400, 9407))


@pytest.mark.anyio
async def test_a_daemon_slow_to_die_lets_the_next_be_asked_after_its_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    count = 6
    asked: list[int] = []
    everyone_asked = anyio.Event()

    async def never_dies_first(
        target: SignalTarget, token: str | None, grace: float, _: float, **__: object
    ) -> str:
        asked.append(target.port)
        if len(asked) == count:
            everyone_asked.set()
        # With one place and no time limit, the second daemon would never be asked.
        await everyone_asked.wait()
        return "terminate"

    monkeypatch.setattr(_sweep, "stop_gracefully", never_dies_first)
    observations = [observed(9400 + i, "safe_auto") for i in range(count)]
    result = await sweep_guarded(observations, tmp_path, at_once=1, slot_seconds=0.01)
    assert asked == list(range(9400, 9400 + count))  # in order, each after the last's time
    assert len(result.swept) == count


@pytest.mark.anyio
async def test_once_the_sweep_may_ask_no_more_the_rest_are_left_and_reported(
    stops: FakeStops, tmp_path: Path
) -> None:
    answers = iter([True, True, False])
    observations = [observed(9400 + i, "safe_auto") for i in range(5)]

    result = await sweep(
        observations,
        ResetRequest(),
        legacy_state=tmp_path / "sd",
        grace=3,
        may_ask=lambda: next(answers),
        at_once=1,
    )

    assert [target.port for target, _, _ in stops.calls] == [9400, 9401]
    assert [s.port for s in result.swept] == [9400, 9401]
    assert [f.port for f in result.failed] == [9402, 9403, 9404]
    assert all(f.failure_reason.startswith("not asked") for f in result.failed)


def test_exits_at_once_is_one_more_than_the_cpus_we_may_run_on() -> None:
    assert _sweep.exits_at_once() == len(os.sched_getaffinity(0)) + 1


@pytest.mark.anyio
async def test_operator_required_is_left_alone_without_force(
    stops: FakeStops, tmp_path: Path
) -> None:
    wedged = observed(9402, "operator_required", "unresponsive")

    result = await sweep([wedged], ResetRequest(), legacy_state=tmp_path / "sd", grace=3)

    assert stops.calls == []
    assert [(s.port, s.cleanup_class, s.skip_reason) for s in result.skipped] == [
        (9402, "operator_required", "unresponsive")
    ]


@pytest.mark.anyio
async def test_operator_required_is_stopped_with_force(stops: FakeStops, tmp_path: Path) -> None:
    cross_root = observed(9403, "operator_required", "cross_root")

    result = await sweep(
        [cross_root], ResetRequest(force=True), legacy_state=tmp_path / "sd", grace=3
    )

    assert [s.port for s in result.swept] == [9403]
    assert result.skipped == []


@pytest.mark.anyio
async def test_a_confirmed_pid_is_stopped_and_only_that_one(
    stops: FakeStops, tmp_path: Path
) -> None:
    yes = observed(9404, "operator_required", "pre_marker")
    no = observed(9405, "operator_required", "pre_marker")
    request = ResetRequest(confirmed_pids=[yes.record.pid or 0])

    result = await sweep([yes, no], request, legacy_state=tmp_path / "sd", grace=3)

    assert [s.port for s in result.swept] == [9404]
    assert [s.port for s in result.skipped] == [9405]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("cleanup_class", "skip_reason"),
    [
        ("supervised", "supervised"),
        ("never_touch", "third_party"),
        ("never_touch", "not_spec_kitty"),
        ("never_touch", "other_user"),
        ("never_touch", "is_recorded_singleton"),
        ("never_touch", "dashboard_range"),
    ],
)
async def test_supervised_and_never_touch_are_never_stopped_by_any_flag(
    stops: FakeStops, tmp_path: Path, cleanup_class: CleanupClass, skip_reason: str
) -> None:
    listener = observed(9406, cleanup_class, skip_reason)
    request = ResetRequest(force=True, confirmed_pids=[listener.record.pid or 0])

    result = await sweep([listener], request, legacy_state=tmp_path / "sd", grace=3)

    assert stops.calls == []
    assert result.swept == []
    assert result.skipped == []
    assert result.failed == []


def test_the_recorded_daemon_is_left_to_the_lifecycle_even_when_safe_auto() -> None:
    recorded = observed(9407, "safe_auto", recorded=True)

    plan = plan_sweep([recorded], ResetRequest(force=True))

    assert plan.to_stop == []
    assert [(s.port, s.skip_reason) for s in plan.skipped] == [(9407, "is_recorded_singleton")]


@pytest.mark.anyio
async def test_dry_run_stops_nothing_and_writes_nothing(stops: FakeStops, tmp_path: Path) -> None:
    state = tmp_path / "sync-daemon"
    orphan = observed(9408, "safe_auto")
    write_legacy_state(state, 9408, TOKEN, orphan.record.pid or 0)

    result = await sweep([orphan], ResetRequest(dry_run=True), legacy_state=state, grace=3)

    assert stops.calls == []
    assert result.swept == []
    assert read_legacy_state(state) is not None


# --------------------------------------------------------------------------------------------
# How it acts


@pytest.mark.anyio
async def test_the_token_is_sent_only_when_the_answer_was_proven_the_listeners(
    stops: FakeStops, tmp_path: Path
) -> None:
    proven = observed(9409, "safe_auto")
    unproven = observed(9410, "operator_required", "token_mismatch", proven=False)

    await sweep([proven, unproven], ResetRequest(force=True), legacy_state=tmp_path / "sd", grace=3)

    tokens = {target.port: token for target, token, _ in stops.calls}
    assert tokens == {9409: TOKEN, 9410: None}


@pytest.mark.anyio
async def test_the_signal_target_is_the_observed_process_and_its_listening_port(
    stops: FakeStops, tmp_path: Path
) -> None:
    orphan = observed(9411, "safe_auto")

    await sweep([orphan], ResetRequest(), legacy_state=tmp_path / "sd", grace=2.5)

    ((target, _, grace),) = stops.calls
    assert target == SignalTarget(orphan.identity, 9411)  # type: ignore[arg-type]
    assert grace == 2.5


@pytest.mark.anyio
async def test_refusals_and_survivors_are_reported_as_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def outcome(target: SignalTarget) -> str:
        if target.port == 9412:
            raise SignalRefused("pid 1 now belongs to another process")
        raise TimeoutError("pid 2 survived SIGKILL for 3 s")

    monkeypatch.setattr(_sweep, "stop_gracefully", FakeStops(outcome))
    observations = [observed(9412, "safe_auto"), observed(9413, "safe_auto")]

    result = await sweep(observations, ResetRequest(), legacy_state=tmp_path / "sd", grace=3)

    assert result.swept == []
    reasons = {f.port: f.failure_reason for f in result.failed}
    assert reasons[9412].startswith("refused: ")
    assert "survived SIGKILL" in reasons[9413]


@pytest.mark.anyio
async def test_another_users_process_is_refused_before_anything(
    stops: FakeStops, tmp_path: Path
) -> None:
    # Classification never calls another user's process safe_auto; the sweeper checks anyway.
    stranger = observed(9414, "safe_auto", uid=os.getuid() + 1)

    result = await sweep([stranger], ResetRequest(), legacy_state=tmp_path / "sd", grace=3)

    assert stops.calls == []
    assert "uid" in result.failed[0].failure_reason


# --------------------------------------------------------------------------------------------
# Condemned, then asked and dying: the caller's locks are needed only until the state file
# names none of them


@pytest.mark.anyio
async def test_sent_comes_once_the_state_file_is_released_and_before_any_daemon_is_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    legacy = tmp_path / "sd"
    condemned = observed(9400, "safe_auto")
    assert condemned.identity is not None
    write_legacy_state(legacy, 9400, TOKEN, condemned.identity.pid)
    asked: list[int] = []
    reports: list[tuple[list[int], bool]] = []

    async def asking(
        target: SignalTarget, token: str | None, grace: float, _: float, **__: object
    ) -> str:
        asked.append(target.port)
        return "http_shutdown"

    def sent() -> None:
        reports.append((list(asked), legacy.exists()))

    monkeypatch.setattr(_sweep, "stop_gracefully", asking)
    observations = [condemned, *(observed(9401 + i, "safe_auto") for i in range(17))]
    with anyio.fail_after(DEFAULT_TIMEOUT):  # a guard against the deadlock, not a duration
        result = await sweep(observations, ResetRequest(), legacy_state=legacy, grace=3, sent=sent)

    assert reports == [([], False)]  # once: nobody asked yet, and the state file names none
    assert len(asked) == 18
    assert len(result.swept) == 18


@pytest.mark.anyio
async def test_sent_comes_when_nothing_is_to_be_stopped_or_only_refusals(
    stops: FakeStops, tmp_path: Path
) -> None:
    calls: list[str] = []
    await sweep(
        [],
        ResetRequest(),
        legacy_state=tmp_path / "sd",
        grace=3,
        sent=lambda: calls.append("empty"),
    )
    stranger = observed(9414, "safe_auto", uid=os.getuid() + 1)  # refused before asking
    await sweep(
        [stranger],
        ResetRequest(),
        legacy_state=tmp_path / "sd",
        grace=3,
        sent=lambda: calls.append("refused"),
    )
    dry = observed(9415, "safe_auto")
    await sweep(
        [dry],
        ResetRequest(dry_run=True),
        legacy_state=tmp_path / "sd",
        grace=3,
        sent=lambda: calls.append("dry"),
    )
    assert calls == ["empty", "refused", "dry"]
    assert stops.calls == []


# --------------------------------------------------------------------------------------------
# The family boundary: nothing outside [9400, 9450) is ever acted on


@pytest.mark.parametrize("port", [9237, 9336, 9399, 9450, 8080])
def test_the_family_boundary_refuses_ports_outside_the_sync_range(port: int) -> None:
    with pytest.raises(SignalRefused, match="outside the sync family range"):
        check_family_boundary(port)


@pytest.mark.parametrize("port", [9400, 9425, 9449])
def test_the_family_boundary_admits_the_sync_range(port: int) -> None:
    check_family_boundary(port)


@pytest.mark.anyio
async def test_a_stop_outside_the_family_is_refused_before_the_token_shutdown(
    stops: FakeStops,
) -> None:
    # A record that came from anywhere but classification: the sweeper still refuses it.
    dashboard = observed(9300, "safe_auto")

    outcome = await _sweep._stop(dashboard, grace=3, http_timeout=1)

    assert stops.calls == []
    assert outcome.port == 9300
    assert "outside the sync family range" in getattr(outcome, "failure_reason", "")


def test_send_signal_refuses_a_process_not_tied_to_a_family_port() -> None:
    me = read_identity(os.getpid())
    assert me is not None
    # Signal 0 only asks "does it exist": even a failed assertion would harm nothing.
    with pytest.raises(SignalRefused, match="outside the sync family range"):
        send_signal(SignalTarget(me, 9300), 0)


# --------------------------------------------------------------------------------------------
# R/sync-daemon first: it never names a daemon being stopped (upstream SIGKILLs it unchecked)


@pytest.mark.anyio
async def test_the_state_file_stops_naming_a_daemon_before_it_is_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "sync-daemon"
    orphan = observed(9415, "operator_required", "unresponsive")
    write_legacy_state(state, 9415, TOKEN, orphan.record.pid or 0)
    seen_at_stop: list[object] = []

    def look(target: SignalTarget) -> str:
        seen_at_stop.append(read_legacy_state(state))
        return "terminate"

    monkeypatch.setattr(_sweep, "stop_gracefully", FakeStops(look))

    await sweep([orphan], ResetRequest(force=True), legacy_state=state, grace=3)

    assert seen_at_stop == [None]
    assert not state.exists()


@pytest.mark.anyio
async def test_the_state_file_is_rewritten_to_the_current_daemon_when_there_is_one(
    stops: FakeStops, tmp_path: Path
) -> None:
    state = tmp_path / "sync-daemon"
    orphan = observed(9416, "operator_required", "unresponsive")
    write_legacy_state(state, 9416, TOKEN, orphan.record.pid or 0)
    current = LegacyRecord("http://localhost:9430", 9430, "f" * 32, 777)

    await sweep(
        [orphan], ResetRequest(force=True), legacy_state=state, grace=3, replacement=current
    )

    assert read_legacy_state(state) == LegacyRecord("http://localhost:9430", 9430, "f" * 32, 777)


@pytest.mark.anyio
async def test_a_state_file_naming_another_daemon_is_left_as_it_is(
    stops: FakeStops, tmp_path: Path
) -> None:
    state = tmp_path / "sync-daemon"
    write_legacy_state(state, 9430, TOKEN, 4242)

    await sweep([observed(9417, "safe_auto")], ResetRequest(), legacy_state=state, grace=3)

    recorded = read_legacy_state(state)
    assert recorded is not None
    assert recorded.pid == 4242

"""The lifecycle's rules, on fake effects and a fake clock: milliseconds, no process, no sleep.

Each test reads as a specification of one rule; the same rules are proven on real daemons by
``tests/interop/test_lifecycle.py``. ``effects.acts`` is what the lifecycle did to the world,
in order ("spawn", "journal" for a table write, "record"/"unrecord" for ``R/sync-daemon``,
"stop", "abandon"); ``effects.events`` is its ledger.
"""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._lifecycle import (
    Lifecycle,
    ensure,
    lift_quarantine,
    recover,
    retire,
    retire_now,
    stop_all,
    sweep_orphans,
    tick,
)
from spec_kitty_supervisor._lifecycle import _ensure as ensure_module
from spec_kitty_supervisor._lifecycle._decisions import (
    Quarantine,
    Restart,
    Rules,
    after_death,
    classify_exit,
    decide_current,
    ensure_verdict_for_current,
)
from spec_kitty_supervisor._policy import EnsureDecision
from spec_kitty_supervisor._spawn import ValidatedInterpreters
from spec_kitty_supervisor._table import DaemonRecord
from spec_kitty_supervisor_client._models import (
    DaemonView,
    EnsureRequest,
    EnsureResponse,
    Settings,
)
from tests.unit.lifecycle_fakes import FakeClock, FakeDaemon, FakeEffects, make_lifecycle

pytestmark = pytest.mark.anyio

PYTHON = sys.executable


@dataclass
class World:
    lifecycle: Lifecycle
    effects: FakeEffects
    clock: FakeClock

    async def ensure(self, version: str = "3.2.4", python: str = PYTHON) -> EnsureResponse:
        answer = await ensure(self.lifecycle, EnsureRequest(python=python, package_version=version))
        await wait_all_tasks_blocked()
        return answer

    def daemon(self, pid: int) -> FakeDaemon:
        return self.effects.daemons[pid]

    @property
    def current(self) -> DaemonRecord:
        current = self.lifecycle.table.current
        assert current is not None
        return current

    async def kill(self, pid: int, returncode: int | None) -> None:
        self.daemon(pid).exit(returncode)
        await wait_all_tasks_blocked()

    async def tick(self) -> None:
        await tick(self.lifecycle)
        await wait_all_tasks_blocked()


@asynccontextmanager
async def running(**settings: object) -> AsyncIterator[World]:
    effects, clock = FakeEffects(), FakeClock()
    lifecycle = make_lifecycle(effects, clock, Settings.model_validate(settings))
    async with anyio.create_task_group() as group:
        lifecycle.attach(group)
        yield World(lifecycle, effects, clock)
        group.cancel_scope.cancel()


# --------------------------------------------------------------------------------------------
# ensure


async def test_a_cold_ensure_spawns_writes_the_journal_then_the_state_file() -> None:
    async with running() as world:
        answer = await world.ensure()
        pid = answer.daemon.pid
        assert answer.action == "spawned"
        assert world.effects.acts[:3] == [f"spawn {pid}", "journal", f"record {pid}"]
        assert world.effects.journal == [(pid, "current", "healthy")]
        assert world.effects.kinds() == ["spawned"]


@pytest.fixture
def walk(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each interpreter validation and each version-policy decision of one ensure, in order."""
    steps: list[str] = []
    real_decide = ensure_module.decide_ensure
    real_resolve = ValidatedInterpreters.resolve

    def counting_decide(*args: Any) -> EnsureDecision:
        steps.append("decide")
        return real_decide(*args)

    def counting_resolve(self: ValidatedInterpreters, python: str) -> str:
        steps.append("validate")
        return real_resolve(self, python)

    monkeypatch.setattr(ensure_module, "decide_ensure", counting_decide)
    monkeypatch.setattr(ValidatedInterpreters, "resolve", counting_resolve)
    return steps


async def test_the_warm_ensure_validates_the_interpreter_and_decides_once(
    walk: list[str],
) -> None:
    async with running() as world:
        first = await world.ensure()
        walk.clear()
        answer = await world.ensure()
        assert answer.action == "reused"
        assert answer.daemon.pid == first.daemon.pid
        assert walk == ["validate", "decide"]


async def test_a_warm_answer_is_given_again_only_while_everything_it_says_is_the_same() -> None:
    # The lifecycle gives the same (frozen) answer object again while the daemon's view, the
    # action and the reason are unchanged; each of them that changes gives a new answer.
    async with running() as world:
        await world.ensure()
        first = await world.ensure()
        assert first.action == "reused"
        assert await world.ensure() is first
        current = world.current
        changes: dict[str, object] = {
            "pid": current.pid + 1,
            "port": current.port + 1,
            "package_version": current.package_version,  # the request must still match
            "python": current.python,
            "origin": "adopted" if current.origin != "adopted" else "spawned",
            "state": "unresponsive" if current.state != "unresponsive" else "healthy",
            "started_at": current.started_at + "1",
            "last_healthy_at": "2026-12-01T00:00:09+00:00",
            "token": (current.token or "") + "x",
        }
        shown = set(DaemonView.model_fields) - {"url", "role", "package_version", "python"}
        assert set(changes) - {"package_version", "python"} == shown
        for name in sorted(shown):
            before = await world.ensure()
            setattr(current, name, changes[name])
            world.lifecycle.handed_out.add(current.pid)
            after = await world.ensure()
            assert after is not before, name
            assert after.daemon.model_dump() == current.view(with_token=True).model_dump(), name
        # The reason is part of what it says: an older client is told the newer one is kept.
        kept = await world.ensure("3.2.3")
        assert (kept.action, kept.message != first.message) == ("kept_newer", True)


async def test_warm_ensures_wait_for_a_step_without_queueing_for_its_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No lock convoy: warm requests arriving while a step (a heartbeat) holds the lock wait
    for its release, all together, and are answered from the table, none through the lock."""
    locked_path: list[str] = []
    real_locked = ensure_module._ensure_locked

    async def counting_locked(*args: Any) -> EnsureResponse:
        locked_path.append("locked")
        return await real_locked(*args)

    monkeypatch.setattr(ensure_module, "_ensure_locked", counting_locked)
    async with running() as world:
        first = await world.ensure()
        locked_path.clear()
        step_done = anyio.Event()
        answers: list[EnsureResponse] = []

        async def step() -> None:
            async with world.lifecycle.lock:
                await step_done.wait()

        async def warm() -> None:
            answers.append(await ensure(world.lifecycle, EnsureRequest(python=PYTHON)))

        async with anyio.create_task_group() as group:
            group.start_soon(step)
            await wait_all_tasks_blocked()
            for _ in range(5):
                group.start_soon(warm)
            await wait_all_tasks_blocked()
            assert answers == []  # nothing is answered while the step is under way
            assert world.lifecycle.lock.statistics().tasks_waiting == 0
            step_done.set()
        assert [a.action for a in answers] == ["reused"] * 5
        assert {a.daemon.pid for a in answers} == {first.daemon.pid}
        assert locked_path == []


async def test_a_warm_ensure_waits_out_every_step_queued_for_the_lock() -> None:
    """A release that hands the lock to the next queued step is not the end of the steps: the
    request is answered once the lock is free."""
    async with running() as world:
        await world.ensure()
        order: list[str] = []
        first_done, second_done = anyio.Event(), anyio.Event()

        async def step(name: str, done: anyio.Event) -> None:
            async with world.lifecycle.lock:
                await done.wait()
                order.append(name)

        async def warm() -> None:
            await ensure(world.lifecycle, EnsureRequest(python=PYTHON))
            order.append("answered")

        async with anyio.create_task_group() as group:
            group.start_soon(step, "first", first_done)
            await wait_all_tasks_blocked()
            group.start_soon(step, "second", second_done)
            await wait_all_tasks_blocked()
            group.start_soon(warm)
            await wait_all_tasks_blocked()
            first_done.set()
            await wait_all_tasks_blocked()
            assert order == ["first"]
            second_done.set()
        assert order == ["first", "second", "answered"]


async def test_the_cold_ensure_validates_the_interpreter_and_decides_once(
    walk: list[str],
) -> None:
    async with running() as world:
        assert (await world.ensure()).action == "spawned"
        assert walk == ["validate", "decide"]


async def test_the_first_answer_after_an_adoption_says_adopted_then_reused() -> None:
    async with running() as world:
        upstream = world.effects.add_daemon("3.2.4", our_child=False)
        world.effects.record_upstream(upstream)
        await recover(world.lifecycle)
        assert [(await world.ensure()).action for _ in range(2)] == ["adopted", "reused"]


async def test_a_newer_client_gets_a_new_daemon_healthy_before_the_old_one_is_stopped() -> None:
    async with running() as world:
        old = (await world.ensure("3.2.4")).daemon.pid
        new_answer = await world.ensure("3.2.7")
        new = new_answer.daemon.pid
        assert new_answer.action == "upgraded"
        acts = world.effects.acts
        assert acts.index(f"spawn {new}") < acts.index(f"record {new}") < acts.index(f"stop {old}")
        assert [d.pid for d in world.lifecycle.table.daemons] == [new]
        assert world.effects.legacy is not None
        assert world.effects.legacy.pid == new


async def test_replace_starts_a_new_daemon_healthy_before_the_old_one_is_stopped() -> None:
    async with running() as world:
        old = (await world.ensure("3.2.7")).daemon.pid
        request = EnsureRequest(python=PYTHON, package_version="3.2.7", cwd="/", replace=True)
        answer = await ensure(world.lifecycle, request)
        await wait_all_tasks_blocked()
        new = answer.daemon.pid
        assert (answer.action, new != old) == ("replaced", True)
        acts = world.effects.acts
        assert acts.index(f"spawn {new}") < acts.index(f"record {new}") < acts.index(f"stop {old}")
        assert [d.pid for d in world.lifecycle.table.daemons] == [new]
        assert world.effects.spawn_orders[-1].context.cwd == "/"
        # Replace is asked once: the next ordinary ensure reuses the new daemon.
        assert (await world.ensure("3.2.7")).daemon.pid == new


async def test_replace_with_no_current_daemon_is_an_ordinary_spawn() -> None:
    async with running() as world:
        request = EnsureRequest(python=PYTHON, package_version="3.2.4", replace=True)
        answer = await ensure(world.lifecycle, request)
        assert answer.action == "spawned"
        assert len(world.effects.spawn_orders) == 1


async def test_an_older_client_keeps_the_newer_daemon() -> None:
    async with running() as world:
        newer = (await world.ensure("3.2.7")).daemon.pid
        answer = await world.ensure("3.2.4")
        assert (answer.action, answer.daemon.pid) == ("kept_newer", newer)
        assert len(world.effects.spawn_orders) == 1


# --------------------------------------------------------------------------------------------
# a crash during a spawn


async def test_a_daemon_that_exits_at_once_is_retried_on_the_next_port() -> None:
    async with running(port_range=(9440, 9444)) as world:
        world.effects.spawn_outcomes = ["exits_at_once", "healthy"]
        answer = await world.ensure()
        assert [order.port for order in world.effects.spawn_orders] == [9440, 9441]
        assert answer.daemon.port == 9441
        assert world.effects.kinds() == ["spawn_failed", "spawned"]


async def test_a_spawn_that_never_gets_healthy_is_stopped_and_reported_with_its_log() -> None:
    async with running() as world:
        world.effects.spawn_outcomes = ["never_healthy"] * 3
        with pytest.raises(LifecycleError) as raised:
            await world.ensure()
        assert raised.value.code == "spawn_failed"
        assert "ModuleNotFoundError" in str(raised.value.details["log_tail"])
        assert sum(act.startswith("abandon") for act in world.effects.acts) == 3
        assert world.lifecycle.table.daemons == []
        assert world.effects.journal is None  # nothing was ever written
        assert world.effects.legacy is None


async def test_no_free_port_is_refused_before_any_spawn() -> None:
    async with running(port_range=(9440, 9442)) as world:
        world.effects.taken_ports = {9440, 9441}
        with pytest.raises(LifecycleError, match="no free port") as raised:
            await world.ensure()
        assert raised.value.code == "no_free_port"
        assert world.effects.spawn_orders == []


# --------------------------------------------------------------------------------------------
# degraded: the journal, the ledger, upstream's files; each ends by itself


async def test_a_ledger_that_cannot_be_written_is_degraded_but_refuses_nothing() -> None:
    # The ledger records acts already done, and the journal (table, R/sync-daemon) is what
    # makes an act safe: refusing spawns for want of history would only add an outage.
    async with running() as world:
        world.effects.ledger_fails = True
        answer = await world.ensure()
        pid = answer.daemon.pid
        assert answer.action == "spawned"
        assert world.effects.acts[:3] == [f"spawn {pid}", "journal", f"record {pid}"]
        assert world.effects.kinds() == ["spawned"]  # in memory: events serves it
        assert world.effects.ledger_file == []
        degraded = world.lifecycle.degraded
        assert degraded is not None
        assert "events.jsonl" in degraded
        assert world.lifecycle.writes_failing is None


async def test_the_heartbeat_writes_the_events_the_ledger_missed_in_order_then_degraded_ends() -> (
    None
):
    async with running() as world:
        world.effects.ledger_fails = True
        first = (await world.ensure()).daemon.pid
        await world.kill(first, -9)
        world.clock.advance(60)
        await world.tick()
        assert world.lifecycle.degraded is not None  # still full: still degraded
        missed = list(world.effects.ledger_unwritten)
        assert missed[:2] == ["spawned", "died"]
        world.effects.ledger_fails = False  # space freed
        await world.tick()
        assert world.lifecycle.degraded is None
        assert world.effects.ledger_file[: len(missed)] == missed
        assert world.effects.ledger_file == world.effects.kinds()


async def test_a_refused_upstream_file_is_degraded_refuses_the_spawn_and_ends_once_moved() -> None:
    async with running() as world:
        refused = "/r/sync-daemon.lock is a FIFO, not a regular file; move it away"
        world.effects.refused_files = refused
        await world.tick()
        assert world.lifecycle.degraded == refused
        with pytest.raises(LifecycleError) as raised:
            await world.ensure()
        assert raised.value.code == "root_file_refused"
        assert world.effects.spawn_orders == []
        world.effects.refused_files = None  # the user moved it away
        await world.tick()
        assert world.lifecycle.degraded is None
        assert (await world.ensure()).action == "spawned"


async def test_a_refused_lock_file_at_start_up_is_degraded_not_a_failed_start() -> None:
    async with running() as world:
        refused = "/r/sync-daemon.lock is a FIFO, not a regular file; move it away"
        world.effects.refused_files = refused
        await recover(world.lifecycle)  # used to raise out of the start-up
        assert world.lifecycle.degraded == refused


async def test_a_tick_whose_follow_of_the_state_file_is_refused_still_decides() -> None:
    async with running(idle_retirement_seconds=100) as world:
        pid = (await world.ensure()).daemon.pid
        world.effects.legacy = None  # removed: the tick wants to write it again...
        world.effects.refused_files = "/r/sync-daemon.lock is a FIFO, not a regular file"
        world.clock.advance(101)
        await world.tick()  # ...cannot, and still decides the idle retirement
        record = world.lifecycle.table.by_pid(pid)
        assert record is not None
        assert record.role == "retiring"
        assert world.effects.journal == [(pid, "retiring", "retiring")]
        # Its stop waits for R/sync-daemon to be rewritten under the lock: nothing is acted
        # on that upstream's file could still name.
        assert f"stop {pid}" not in world.effects.acts
        assert world.lifecycle.degraded == world.effects.refused_files


async def test_every_cause_of_degraded_is_shown_at_once() -> None:
    async with running() as world:
        world.effects.refused_files = "/r/sync-daemon.log is a directory, not a regular file"
        world.effects.ledger_fails = True
        world.effects.journal_fails = True
        world.effects.record("signal", reason="received SIGHUP")
        world.lifecycle.write_journal()
        await world.tick()
        degraded = world.lifecycle.degraded
        assert degraded is not None
        causes = degraded.split("; ")
        assert any("state.json" in cause for cause in causes)
        assert any("events.jsonl" in cause for cause in causes)
        assert any("sync-daemon.log is a directory" in cause for cause in causes)


# --------------------------------------------------------------------------------------------
# a failed write before an act: nothing is acted on


async def test_a_retirement_that_cannot_be_written_stops_nothing() -> None:
    async with running() as world:
        record = world.lifecycle.table.by_pid((await world.ensure()).daemon.pid)
        assert record is not None
        world.effects.journal_fails = True
        with pytest.raises(LifecycleError) as raised:
            await retire(world.lifecycle, record, "requested")
        assert raised.value.code == "state_not_writable"
        assert not any(act.startswith("stop") for act in world.effects.acts)
        assert (record.role, record.state) == ("current", "healthy")


async def test_a_spawn_the_journal_cannot_name_is_stopped_and_never_recorded() -> None:
    async with running() as world:
        world.effects.journal_fails = True
        with pytest.raises(LifecycleError) as raised:
            await world.ensure()
        assert raised.value.code == "state_not_writable"
        spawned = world.effects.spawn_orders and world.effects.acts[0]
        assert spawned == "spawn 4000"
        assert world.effects.acts == ["spawn 4000", "abandon 4000"]
        assert world.lifecycle.table.daemons == []
        assert world.effects.legacy is None


async def test_an_idle_retirement_that_cannot_be_written_is_not_started() -> None:
    async with running(idle_retirement_seconds=900) as world:
        pid = (await world.ensure()).daemon.pid
        world.effects.journal_fails = True
        world.clock.advance(901)
        await world.tick()
        assert f"stop {pid}" not in world.effects.acts
        assert world.current.pid == pid


async def test_a_busy_upstream_lock_spawns_nothing() -> None:
    async with running() as world:
        world.effects.legacy_lock_busy = True
        with pytest.raises(LifecycleError) as raised:
            await world.ensure()
        assert raised.value.code == "legacy_lock_busy"
        assert world.effects.acts == []


# --------------------------------------------------------------------------------------------
# exits: retired, died, replaced upstream


async def test_exit_0_is_a_retirement_not_a_death() -> None:
    async with running() as world:
        pid = (await world.ensure()).daemon.pid
        await world.kill(pid, 0)
        assert world.effects.kinds()[-1] == "retired"
        assert world.lifecycle.table.daemons == []
        assert world.lifecycle.death_times == []
        assert len(world.effects.spawn_orders) == 1
        assert world.effects.legacy is None  # never left naming a dead pid


async def test_a_killed_daemon_is_restarted_after_its_backoff_with_the_same_context() -> None:
    async with running(restart_backoff_seconds=2) as world:
        first = (await world.ensure()).daemon.pid
        await world.kill(first, -9)
        assert world.effects.kinds()[-3:] == ["died", "spawned", "restarted"]
        assert 1.6 <= world.clock.slept[-1] <= 2.4
        first_order, restart_order = world.effects.spawn_orders
        assert restart_order.context == first_order.context
        assert world.current.pid != first


async def test_an_adopted_daemon_whose_owner_record_still_names_it_died() -> None:
    async with running() as world:
        upstream = world.effects.add_daemon(our_child=False)
        world.effects.record_upstream(upstream)
        await recover(world.lifecycle)
        world.effects.owner_record.add(upstream.identity.pid)
        await world.kill(upstream.identity.pid, None)
        assert "died" in world.effects.kinds()
        assert world.current.pid != upstream.identity.pid


async def test_an_adopted_daemon_that_removed_its_owner_record_retired() -> None:
    async with running() as world:
        upstream = world.effects.add_daemon(our_child=False)
        world.effects.record_upstream(upstream)
        await recover(world.lifecycle)
        await world.kill(upstream.identity.pid, None)
        assert world.effects.kinds()[-1] == "retired"
        assert world.lifecycle.table.daemons == []


async def test_an_upstream_replacement_is_adopted_not_restarted() -> None:
    async with running() as world:
        ours = (await world.ensure("3.2.4")).daemon.pid
        theirs = world.effects.add_daemon("3.2.7", port=9441, our_child=False)
        world.effects.record_upstream(theirs)
        await world.kill(ours, -9)
        assert world.current.pid == theirs.identity.pid
        assert "replaced_upstream" in world.effects.kinds()
        assert "died" not in world.effects.kinds()
        assert len(world.effects.spawn_orders) == 1


async def test_a_replacement_seen_by_the_heartbeat_is_adopted_once_without_thrash() -> None:
    async with running() as world:
        ours = (await world.ensure("3.2.4")).daemon.pid
        theirs = world.effects.add_daemon("3.2.7", port=9441, our_child=False)
        world.effects.record_upstream(theirs)
        for _ in range(3):
            await world.tick()
        assert world.current.pid == theirs.identity.pid
        assert world.effects.acts.count(f"stop {ours}") == 1
        assert world.effects.acts.count(f"stop {theirs.identity.pid}") == 0
        assert len(world.effects.spawn_orders) == 1
        assert world.effects.kinds().count("version_skew") == 1


# --------------------------------------------------------------------------------------------
# restart backoff and quarantine


def test_backoff_doubles_per_death_within_twenty_percent_and_is_capped() -> None:
    rules = Rules(restart_backoff_seconds=1, restart_backoff_max_seconds=8, quarantine_deaths=99)
    rng = random.Random(7)
    for deaths, expected in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        times = [100.0] * deaths
        for _ in range(200):
            verdict = after_death(times, 100.0, rules, "killed", rng)
            assert isinstance(verdict, Restart)
            assert verdict.deaths == deaths
            assert 0.8 * expected <= verdict.delay <= min(8.0, 1.2 * expected)


def test_quarantine_counts_only_deaths_inside_the_window() -> None:
    rules = Rules(quarantine_deaths=3, quarantine_window_seconds=60)
    assert isinstance(after_death([0.0, 10.0, 20.0], 20.0, rules, "x"), Quarantine)
    assert isinstance(after_death([0.0, 10.0, 100.0], 100.0, rules, "x"), Restart)


async def test_deaths_in_the_window_quarantine_the_root_and_another_interpreter_lifts_it(
    tmp_path: object,
) -> None:
    async with running(quarantine_deaths=3, restart_backoff_seconds=1) as world:
        await world.ensure()
        for _ in range(3):
            await world.kill(world.current.pid, -9)
        assert world.lifecycle.table.current is None
        assert world.lifecycle.table.quarantine_reason is not None
        assert world.lifecycle.table.quarantine_reason.startswith("3 deaths")
        assert world.effects.journal_quarantine == world.lifecycle.table.quarantine_reason
        spawns = len(world.effects.spawn_orders)
        with pytest.raises(LifecycleError) as refused:
            await world.ensure()
        assert refused.value.code == "root_quarantined"
        assert len(world.effects.spawn_orders) == spawns
        answer = await world.ensure(python="/usr/bin/python3")
        assert answer.action == "spawned"
        assert world.lifecycle.table.quarantine_reason is None
        assert world.lifecycle.death_times == []


async def test_restart_lifts_the_quarantine() -> None:
    async with running(quarantine_deaths=1) as world:
        await world.ensure()
        await world.kill(world.current.pid, -9)
        assert world.lifecycle.table.quarantine_reason is not None
        lift_quarantine(world.lifecycle, "spec-kitty-supervisor restart")
        assert world.lifecycle.table.quarantine_reason is None
        assert world.effects.kinds()[-1] == "quarantine_lifted"
        assert (await world.ensure()).action == "spawned"


# --------------------------------------------------------------------------------------------
# the heartbeat: watchdog and idle retirement


def test_the_watchdog_comes_before_idleness() -> None:
    rules = Rules(watchdog_seconds=60, idle_retirement_seconds=900)
    assert decide_current(None, 0.0, 100.0, rules).action == "keep"
    assert decide_current(50.0, 0.0, 100.0, rules).action == "keep"
    assert decide_current(40.0, 0.0, 100.0, rules).action == "restart_wedged"
    assert decide_current(None, 0.0, 900.0, rules).action == "retire_idle"
    assert decide_current(0.0, 0.0, 900.0, rules).action == "restart_wedged"


async def test_a_wedged_daemon_is_replaced_new_one_healthy_before_the_old_one_stops() -> None:
    async with running(watchdog_seconds=60) as world:
        wedged = (await world.ensure()).daemon.pid
        world.daemon(wedged).responsive = False
        await world.tick()
        assert world.current.state == "unresponsive"
        assert "unresponsive" in world.effects.kinds()
        world.clock.advance(61)
        await world.tick()
        fresh = world.current.pid
        assert fresh != wedged
        acts = world.effects.acts
        assert (
            acts.index(f"spawn {fresh}")
            < acts.index(f"record {fresh}")
            < acts.index(f"stop {wedged}")
        )
        assert "watchdog" in world.effects.kinds()
        assert len(world.lifecycle.death_times) == 1


async def test_a_wedged_daemon_is_replaced_only_once_its_replacement_can_be_recorded() -> None:
    async with running(watchdog_seconds=60, quarantine_deaths=2) as world:
        wedged = (await world.ensure()).daemon.pid
        world.daemon(wedged).responsive = False
        await world.tick()
        world.effects.journal_fails = True
        world.lifecycle.write_journal()  # the disk is full now
        for _ in range(4):
            world.clock.advance(61)
            await world.tick()
        # No spawn that could only be stopped again, no death counted, no quarantine.
        assert len(world.effects.spawn_orders) == 1
        assert world.lifecycle.death_times == []
        assert world.current.pid == wedged
        world.effects.journal_fails = False
        await world.tick()  # writes work: the watchdog acts on this same tick
        assert world.current.pid != wedged
        assert world.effects.kinds().count("watchdog") == 1
        assert len(world.lifecycle.death_times) == 1


async def test_a_daemon_that_answers_again_is_healthy_again() -> None:
    async with running(watchdog_seconds=60) as world:
        pid = (await world.ensure()).daemon.pid
        world.daemon(pid).responsive = False
        await world.tick()
        world.daemon(pid).responsive = True
        world.clock.advance(61)
        await world.tick()
        assert (world.current.pid, world.current.state) == (pid, "healthy")
        assert world.current.unresponsive_since is None


def test_an_ensure_doubts_a_daemon_only_after_two_missed_heartbeats() -> None:
    assert ensure_verdict_for_current(0, None) == "serve"
    assert ensure_verdict_for_current(1, None) == "serve"  # busy for a moment
    assert ensure_verdict_for_current(2, None) == "probe"
    assert ensure_verdict_for_current(2, True) == "serve"
    assert ensure_verdict_for_current(2, False) == "replace"
    assert ensure_verdict_for_current(7, False) == "replace"


async def test_a_daemon_that_missed_one_heartbeat_is_handed_out_without_a_probe() -> None:
    async with running(watchdog_seconds=60) as world:
        pid = (await world.ensure()).daemon.pid
        world.daemon(pid).responsive = False
        await world.tick()
        probes = len(world.effects.probes)
        answer = await world.ensure()
        assert (answer.action, answer.daemon.pid) == ("reused", pid)
        assert len(world.effects.probes) == probes
        assert world.effects.kinds().count("spawned") == 1


async def test_a_daemon_busy_for_two_heartbeats_that_answers_the_ensure_probe_is_kept() -> None:
    async with running(watchdog_seconds=60) as world:
        pid = (await world.ensure()).daemon.pid
        world.daemon(pid).responsive = False
        await world.tick()
        await world.tick()
        assert world.lifecycle.missed_heartbeats[pid] == 2
        world.daemon(pid).responsive = True  # it was only busy
        probes = len(world.effects.probes)
        answer = await world.ensure()
        assert (answer.action, answer.daemon.pid) == ("reused", pid)
        assert world.effects.probes[probes:] == [world.daemon(pid).port]
        assert world.current.state == "healthy"
        assert pid not in world.lifecycle.missed_heartbeats
        assert world.effects.kinds().count("spawned") == 1
        assert f"stop {pid}" not in world.effects.acts


async def test_an_ensure_replaces_a_daemon_that_missed_two_heartbeats_and_its_probe() -> None:
    async with running(watchdog_seconds=60) as world:
        wedged = (await world.ensure()).daemon.pid
        world.daemon(wedged).responsive = False
        await world.tick()
        await world.tick()
        # Nobody asked: well inside the watchdog's window the heartbeat alone replaces nothing.
        assert world.current.pid == wedged
        assert world.effects.kinds().count("spawned") == 1
        answer = await world.ensure()
        fresh = answer.daemon.pid
        assert answer.action == "replaced"
        assert fresh != wedged
        assert answer.daemon.state == "healthy"
        assert world.current.pid == fresh
        acts = world.effects.acts
        assert (
            acts.index(f"spawn {fresh}")
            < acts.index(f"record {fresh}")
            < acts.index(f"stop {wedged}")
        )
        assert world.lifecycle.table.by_pid(wedged) is None
        watchdog = [e for e in world.effects.events if e[0] == "watchdog"]
        assert watchdog[0][1] == wedged
        assert "probe of an ensure" in watchdog[0][2]
        # The next ensure is served by the new daemon, warm.
        assert (await world.ensure()).daemon.pid == fresh


async def test_an_idle_daemon_is_retired_and_the_next_ensure_spawns() -> None:
    async with running(idle_retirement_seconds=900) as world:
        pid = (await world.ensure()).daemon.pid
        world.clock.advance(899)
        await world.tick()
        assert f"stop {pid}" not in world.effects.acts
        world.clock.advance(2)
        await world.tick()
        assert f"stop {pid}" in world.effects.acts
        assert world.lifecycle.table.daemons == []
        assert "idle: no ensure for 900 s" in world.effects.events[-1][2]
        assert (await world.ensure()).action == "spawned"


# --------------------------------------------------------------------------------------------
# retiring, recovery


async def test_a_second_retirement_of_the_same_daemon_is_a_conflict() -> None:
    async with running() as world:
        record = world.lifecycle.table.by_pid((await world.ensure()).daemon.pid)
        assert record is not None
        world.effects.stop_gate = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(retire, world.lifecycle, record, "first")
            await wait_all_tasks_blocked()
            with pytest.raises(LifecycleError) as raised:
                await retire_now(world.lifecycle, record, "second")
            assert raised.value.code == "already_retiring"
            world.effects.stop_gate.set()
        assert world.effects.acts.count(f"stop {record.pid}") == 1


async def test_a_journaled_pid_now_owned_by_another_process_is_dropped_never_stopped() -> None:
    async with running() as world:
        gone = world.effects.add_daemon()
        journaled = DaemonRecord(
            pid=gone.identity.pid,
            process_start="boot:earlier",
            uid=gone.identity.uid,
            port=gone.port,
            token=gone.token,
            package_version="3.2.4",
            python=PYTHON,
            resolved_python=PYTHON,
            origin="spawned",
            state="healthy",
            role="current",
            started_at="2026-01-01T00:00:00+00:00",
        )
        world.effects.loaded.daemons.append(journaled)
        await recover(world.lifecycle)
        assert world.effects.kinds() == ["journal_dropped"]
        assert world.lifecycle.table.daemons == []
        assert not any(act.startswith("stop") for act in world.effects.acts)


def test_exits_are_classified_by_status_then_by_the_owner_record() -> None:
    assert classify_exit(0, owner_record_names_it=True) == "retired"
    assert classify_exit(-9, owner_record_names_it=False) == "died"
    assert classify_exit(1, owner_record_names_it=False) == "died"
    assert classify_exit(None, owner_record_names_it=True) == "died"
    assert classify_exit(None, owner_record_names_it=False) == "retired"


async def test_a_restart_that_fails_counts_as_another_death() -> None:
    async with running(quarantine_deaths=2, restart_backoff_seconds=1) as world:
        await world.ensure()
        world.effects.spawn_outcomes = ["never_healthy"] * 3
        await world.kill(world.current.pid, -9)
        assert world.effects.kinds()[-2:] == ["restart_failed", "quarantined"]
        assert world.lifecycle.table.current is None
        assert len(world.lifecycle.death_times) == 2


async def test_a_restart_the_journal_cannot_record_waits_for_it_and_is_no_death() -> None:
    # A full disk is not the daemon's fault: it must not walk the root into quarantine, nor
    # spawn and stop a daemon every backoff while nothing can be recorded.
    async with running(quarantine_deaths=2, restart_backoff_seconds=1) as world:
        first = (await world.ensure()).daemon.pid
        world.effects.journal_fails = True
        await world.kill(first, -9)
        assert world.effects.kinds()[-2:] == ["died", "restart_failed"]
        assert [d for d, daemon in world.effects.daemons.items() if daemon.alive] == []
        for _ in range(5):
            await world.tick()
        assert len(world.effects.spawn_orders) == 2  # the first daemon and one restart
        assert len(world.lifecycle.death_times) == 1
        assert world.lifecycle.table.quarantine_reason is None
        assert "quarantined" not in world.effects.kinds()
        world.effects.journal_fails = False  # space freed
        await world.tick()
        assert world.effects.kinds()[-2:] == ["spawned", "restarted"]
        assert world.lifecycle.degraded is None
        assert world.current.pid != first
        # A daemon the supervisor restarted is handed out as reused, not as adopted.
        assert (await world.ensure()).action == "reused"


async def test_a_restart_a_refused_lock_file_stops_waits_until_it_is_moved() -> None:
    async with running(quarantine_deaths=2) as world:
        first = (await world.ensure()).daemon.pid
        world.effects.refused_files = "/r/sync-daemon.lock is a FIFO, not a regular file"
        await world.kill(first, -9)
        await world.tick()
        await world.tick()
        assert world.lifecycle.table.current is None
        assert len(world.effects.spawn_orders) == 1  # nothing spawned through a refused lock
        assert "quarantined" not in world.effects.kinds()
        world.effects.refused_files = None  # moved away
        await world.tick()
        assert world.effects.kinds()[-1] == "restarted"


async def test_a_daemon_whose_pid_is_no_longer_ours_is_forgotten_not_signalled() -> None:
    async with running() as world:
        record = world.lifecycle.table.by_pid((await world.ensure()).daemon.pid)
        assert record is not None
        world.effects.refuse_stop.add(record.pid)
        with pytest.raises(LifecycleError) as raised:
            await retire(world.lifecycle, record, "requested")
        assert raised.value.code == "retire_failed"
        assert world.effects.kinds()[-1] == "retire_abandoned"
        assert world.lifecycle.table.daemons == []


async def test_a_journaled_retirement_is_resumed_after_a_restart_of_the_supervisor() -> None:
    async with running() as world:
        daemon = world.effects.add_daemon()
        world.effects.loaded.daemons.append(
            DaemonRecord(
                pid=daemon.identity.pid,
                process_start=daemon.identity.start,
                uid=daemon.identity.uid,
                port=daemon.port,
                token=daemon.token,
                package_version="3.2.4",
                python=PYTHON,
                resolved_python=PYTHON,
                origin="spawned",
                state="retiring",
                role="retiring",
                started_at="2026-01-01T00:00:00+00:00",
            )
        )
        await recover(world.lifecycle)
        await wait_all_tasks_blocked()
        assert f"stop {daemon.identity.pid}" in world.effects.acts
        assert world.effects.kinds() == ["adopted", "retired"]
        assert world.lifecycle.table.daemons == []


# --------------------------------------------------------------------------------------------
# sweeps


async def test_an_ensure_is_not_held_up_while_swept_orphans_die() -> None:
    async with running() as world:
        world.effects.sweep_deaths = anyio.Event()

        async def orphans_found(table: object) -> bool:
            return True

        world.effects.orphans_to_sweep = orphans_found  # type: ignore[assignment,method-assign]
        async with anyio.create_task_group() as group:
            group.start_soon(sweep_orphans, world.lifecycle)
            await wait_all_tasks_blocked()
            # Every orphan is asked; they are still dying, and no lock is held for that.
            assert world.effects.acts == ["sweep"]
            assert not world.lifecycle.lock.locked()

            answer = await world.ensure()

            assert answer.action == "spawned"
            assert "sweep_done" not in world.effects.acts
            world.effects.sweep_deaths.set()
        assert world.effects.acts[-1] == "sweep_done"


# --------------------------------------------------------------------------------------------
# stop --children


async def test_an_ensure_that_waited_while_stop_children_ran_spawns_nothing() -> None:
    async with running() as world:
        first = (await world.ensure()).daemon.pid
        world.effects.stop_gate = anyio.Event()  # the daemon's stop is under way until set
        stopped: list[int] = []
        refusals: list[str] = []

        async def stopping_with_children() -> None:
            stopped.extend(await stop_all(world.lifecycle, "supervisor stop --children"))

        async def ensuring_meanwhile() -> None:
            with pytest.raises(LifecycleError) as raised:
                await world.ensure()
            refusals.append(raised.value.code)

        async with anyio.create_task_group() as group:
            group.start_soon(stopping_with_children)
            await wait_all_tasks_blocked()
            group.start_soon(ensuring_meanwhile)  # waits for the lock stop_all holds
            await wait_all_tasks_blocked()
            world.effects.stop_gate.set()
        assert stopped == [first]
        assert refusals == ["supervisor_exiting"]
        assert list(world.effects.daemons) == [first]  # no second spawn
        assert not world.daemon(first).alive
        assert world.lifecycle.table.daemons == []


async def test_a_daemon_dying_while_stop_children_runs_is_not_restarted() -> None:
    async with running() as world:
        first = (await world.ensure()).daemon.pid
        world.lifecycle.closed = "supervisor stop --children"  # as stop_all sets it first
        await world.kill(first, 1)
        world.clock.advance(60)  # past any restart backoff
        await wait_all_tasks_blocked()
        assert list(world.effects.daemons) == [first]
        assert "restarted" not in world.effects.kinds()

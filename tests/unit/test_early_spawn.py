"""The supervisor's light first stage (ADR 0013): when it spawns early, and why not.

The decision is pure (``decide_early_spawn``, ``early_invocation``) and tested as a table; the
stage's reads run against a real root in a temporary folder (no daemon is spawned here: every
case below decides not to, or stops at the interpreter); the lifecycle's take-over runs on the
fake effects. Real daemons: ``tests/interop/test_cold_early_spawn.py``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from hypothesis import given, settings
from hypothesis import strategies as st

from spec_kitty_supervisor._early_spawn import (
    SETTING_FIELDS,
    EarlyChild,
    EarlyFacts,
    EarlyStart,
    EarlyVerdict,
    Invocation,
    decide_early_spawn,
    early_invocation,
    start_early,
    take_handed_request,
)
from spec_kitty_supervisor._fd_limit import raise_fd_limit
from spec_kitty_supervisor._first_stage import (
    FirstStage,
    first_stage_invocation,
    setting_refused,
)
from spec_kitty_supervisor._identity import read_identity
from spec_kitty_supervisor._legacy_state import write_legacy_state
from spec_kitty_supervisor._lifecycle import (
    ensure,
    recover,
    sweep_orphans_forever,
    take_over_early_spawn,
)
from spec_kitty_supervisor._lifecycle._decisions import nothing_to_sweep
from spec_kitty_supervisor._lifecycle._effects import SpawnContext
from spec_kitty_supervisor._lock import SupervisorLock
from spec_kitty_supervisor._settings import SettingsError, load_settings
from spec_kitty_supervisor._spawn import (
    SpawnedDaemon,
    child_environment,
    resolve_working_directory,
)
from spec_kitty_supervisor_client import _autostart as autostart_module
from spec_kitty_supervisor_client._errors import SupervisorUnavailable
from spec_kitty_supervisor_client._models import EnsureRequest, Settings
from spec_kitty_supervisor_client._wire import (
    HANDED_REQUEST_FD_ENV,
    Reply,
    _handed_request_pipe,
)
from tests.unit.lifecycle_fakes import ROOT, FakeClock, FakeEffects, make_lifecycle

PYTHON = sys.executable
REQUEST: dict[str, Any] = {"python": PYTHON, "cwd": None, "env": {}}


def _argv(root: Path | str) -> list[str]:
    return ["run", "--root", str(root), "--auto-started"]


# --------------------------------------------------------------------------------------------
# the decision, once the root's lock is held

NOTHING_RECORDED = EarlyFacts(
    journal="absent",
    recorded="absent",
    legacy_lock="taken",
    installed_version="3.2.4",
    claimed_version=None,
)


def _facts(**changes: Any) -> EarlyFacts:
    return EarlyFacts(**{**NOTHING_RECORDED.__dict__, **changes})


@pytest.mark.parametrize(
    ("changes", "spawn", "reason"),
    [
        ({}, True, "nothing alive is recorded"),
        ({"journal": "no_live"}, True, "nothing alive is recorded"),
        ({"recorded": "dead"}, True, "nothing alive is recorded"),
        ({"claimed_version": "3.2.4"}, True, "nothing alive is recorded"),
        ({"claimed_version": "unknown"}, True, "nothing alive is recorded"),
        ({"journal": "live"}, False, "the journal names a live process"),
        ({"journal": "quarantined"}, False, "quarantined"),
        ({"journal": "unreadable"}, False, "the journal is not readable"),
        ({"recorded": "live"}, False, "R/sync-daemon names a live process"),
        ({"recorded": "unreadable"}, False, "R/sync-daemon is not readable"),
        ({"legacy_lock": "busy"}, False, "R/sync-daemon.lock is busy"),
        ({"legacy_lock": "refused"}, False, "R/sync-daemon.lock is refused"),
        ({"installed_version": None}, False, "not readable from its files"),
        ({"claimed_version": "3.2.7"}, False, "not the installed one"),
    ],
)
def test_the_early_spawn_waits_for_recovery_whenever_something_may_be_alive(
    changes: dict[str, Any], spawn: bool, reason: str
) -> None:
    verdict = decide_early_spawn(_facts(**changes))
    assert verdict.spawn is spawn
    assert reason in verdict.reason


# --------------------------------------------------------------------------------------------
# the invocation: before anything is touched


def test_the_auto_start_with_a_handed_ensure_is_an_invocation() -> None:
    found = early_invocation(_argv("/r"), {}, {**REQUEST, "package_version": "3.2.4"})
    assert found == Invocation("/r", None, PYTHON, "3.2.4", None, {})
    assert isinstance(found, Invocation)
    assert found.spawn_range() == Settings().port_range


def test_the_port_range_variable_is_where_the_early_daemon_spawns() -> None:
    environ = {"SPEC_KITTY_SUPERVISOR_PORT_RANGE": "9425-9450"}
    found = early_invocation(_argv("/r"), environ, REQUEST)
    assert isinstance(found, Invocation)
    assert found.spawn_range() == (9425, 9450)


@pytest.mark.parametrize(
    ("argv", "environ", "request_", "reason"),
    [
        (_argv("/r"), {}, None, "no ensure request"),
        (["run", "--root", "/r"], {}, REQUEST, "not the auto-start's command line"),
        (["run", "--root", "/r", "--takeover"], {}, REQUEST, "not the auto-start's"),
        (["run", "--auto-started", "--root", "/r"], {}, REQUEST, "not the auto-start's"),
        (_argv("/r"), {"NOTIFY_SOCKET": "/run/x"}, REQUEST, "service manager"),
        (_argv("/r"), {"LISTEN_FDS": "1"}, REQUEST, "service manager"),
        (_argv("/r"), {"SPEC_KITTY_SUPERVISOR_PORT_RANGE": "9000-9100"}, REQUEST, "settings"),
        (_argv("/r"), {"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "0"}, REQUEST, "settings"),
        (_argv("/r"), {"SPEC_KITTY_SUPERVISOR_VERSION_POLICY": "x"}, REQUEST, "settings"),
        (_argv("/r"), {}, {**REQUEST, "replace": True}, "replace"),
        (_argv("/r"), {}, {**REQUEST, "surprise": 1}, "does not know"),
        (_argv("/r"), {}, {"cwd": None}, "no interpreter"),
        (_argv("/r"), {}, {**REQUEST, "env": {"A": 1}}, "environment"),
        (_argv("/r"), {}, {**REQUEST, "cwd": 3}, "cwd"),
    ],
)
def test_anything_unusual_means_no_early_spawn(
    argv: list[str], environ: dict[str, str], request_: dict[str, Any] | None, reason: str
) -> None:
    found = early_invocation(argv, environ, request_)
    assert isinstance(found, str)
    assert reason in found


def test_variables_that_are_not_settings_are_left_alone() -> None:
    environ = {"SPEC_KITTY_SUPERVISOR_COMMAND": "whatever", "SPEC_KITTY_SUPERVISOR_DISABLE": "1"}
    assert isinstance(early_invocation(_argv("/r"), environ, REQUEST), Invocation)


def test_the_stage_knows_every_setting() -> None:
    assert set(Settings.model_fields) == SETTING_FIELDS


_SETTING_VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "0.5", "5", "1e3", "-1", "nan", "inf", " 2", "2 ", "abc"]),
    st.sampled_from(["9400-9450", "9425-9450", "9450-9400", "9000-9100", "9400-", "x-y"]),
    st.sampled_from(["keep_newer", "latest_wins", "KEEP_NEWER", "1.0", "007", "99999999999"]),
    # Digits to str.isdigit, not to int (superscripts), or to int only (other scripts' digits).
    st.sampled_from(["\u00b2", "1\u00b2", "\u0663", "9400-9\u00b2", "9400-94\u0665\u0660"]),
    st.text(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(SETTING_FIELDS)), _SETTING_VALUES, max_size=4))
def test_the_stage_accepts_no_setting_the_settings_loader_refuses(
    values: dict[str, str],
) -> None:
    environ = {f"SPEC_KITTY_SUPERVISOR_{name.upper()}": raw for name, raw in values.items()}
    found = early_invocation(_argv("/r"), environ, REQUEST)
    if isinstance(found, Invocation):
        loaded = load_settings(None, environ=environ)  # must not raise
        assert found.spawn_range() == loaded.port_range
    else:
        assert "settings" in found


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("quarantine_deaths", "\u00b2"),  # superscript two: str.isdigit, not int
        ("quarantine_deaths", "\u0663"),  # Arabic-Indic three: int takes it, Settings may not
        ("port_range", "9400-9\u00b2"),
        ("port_range", "9400-94\u0665\u0660"),
        ("scan_range", "\u00b9-9450"),
    ],
)
def test_digits_other_than_0_to_9_are_left_to_the_settings_loader(name: str, raw: str) -> None:
    assert setting_refused(name, raw) is True
    environ = {f"SPEC_KITTY_SUPERVISOR_{name.upper()}": raw}
    assert isinstance(early_invocation(_argv("/r"), environ, REQUEST), str)


def test_the_settings_loader_refuses_what_the_stage_leaves_to_it() -> None:
    environ = {"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "0"}
    assert isinstance(early_invocation(_argv("/r"), environ, REQUEST), str)
    with pytest.raises(SettingsError):
        load_settings(None, environ=environ)


# --------------------------------------------------------------------------------------------
# the handed request: a pipe, never argv or the environment's values


def test_the_handed_request_is_read_from_its_pipe_and_the_variable_removed() -> None:
    body = json.dumps({**REQUEST, "env": {"SPEC_KITTY_TOKEN": "secret"}}).encode()
    fd = _handed_request_pipe(body)
    assert fd is not None
    environ = {HANDED_REQUEST_FD_ENV: str(fd), "PATH": "/bin"}
    assert take_handed_request(environ) == json.loads(body)
    assert environ == {"PATH": "/bin"}
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed: no daemon inherits it


def test_a_request_larger_than_the_pipe_is_not_handed() -> None:
    assert _handed_request_pipe(b"x" * (16 * 1024 * 1024)) is None
    assert _handed_request_pipe(None) is None


@pytest.mark.parametrize("value", ["", "x", "1", "-5"])
def test_a_bad_descriptor_variable_hands_nothing_and_is_removed(value: str) -> None:
    environ = {HANDED_REQUEST_FD_ENV: value}
    assert take_handed_request(environ) is None
    assert environ == {}


def test_a_pipe_holding_no_json_object_hands_nothing() -> None:
    for body in (b"[1]", b"{not json"):
        fd = _handed_request_pipe(body)
        assert take_handed_request({HANDED_REQUEST_FD_ENV: str(fd)}) is None


# --------------------------------------------------------------------------------------------
# the stage against a real root: what it reads prevents the spawn


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv whose files say spec-kitty-cli 3.2.4 (ADR 0010); its python is this one."""
    env = tmp_path / "venv"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text(
        f"home = {Path(sys.executable).parent}\nversion = "
        f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n"
    )
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    dist = site / "site-packages" / "spec_kitty_cli-3.2.4.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: spec-kitty-cli\nVersion: 3.2.4\n")
    (env / "bin" / "python").symlink_to(sys.executable)
    return env / "bin" / "python"


def _start(root: Path, python: Path) -> Any:
    fd = _handed_request_pipe(json.dumps({**REQUEST, "python": str(python)}).encode())
    environ = {HANDED_REQUEST_FD_ENV: str(fd)}
    return start_early(_argv(root), environ)


def _journal_naming(root: Path, pid: int) -> None:
    (root / "supervisor").mkdir(parents=True, exist_ok=True)
    (root / "supervisor" / "state.json").write_text(
        json.dumps({"schema_version": 1, "supervisor_pid": 1, "daemons": [{"pid": pid}]})
    )


def test_a_journal_naming_a_live_process_prevents_the_early_spawn(
    tmp_path: Path, venv: Path
) -> None:
    root = tmp_path / "root"
    _journal_naming(root, os.getpid())
    start = _start(root, venv)
    try:
        assert start is not None
        assert start.child is None
        assert start.verdict == EarlyVerdict(
            False, "the journal names a live process: recovery decides"
        )
        assert start.lock.still_ours()  # the normal start goes on with the root's lock
        assert (root / "sync-daemon.lock").exists()
    finally:
        start.let_go()
        os.umask(start.user_umask)


def test_a_state_file_naming_a_live_process_prevents_the_early_spawn(
    tmp_path: Path, venv: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    write_legacy_state(root / "sync-daemon", 9401, "t" * 32, os.getpid())
    start = _start(root, venv)
    try:
        assert start is not None
        assert start.child is None
        assert "R/sync-daemon names a live process" in start.verdict.reason
    finally:
        start.let_go()
        os.umask(start.user_umask)


def test_a_root_another_supervisor_holds_is_left_to_the_normal_start(
    tmp_path: Path, venv: Path
) -> None:
    root = tmp_path / "root"
    _journal_naming(root, os.getpid())  # so that the first holder spawns nothing
    first = _start(root, venv)
    try:
        assert first is not None
        os.umask(first.user_umask)
        umask_before = os.umask(0o022)
        os.umask(umask_before)
        # Changed nothing, the umask included, and says why.
        assert _start(root, venv) == (
            "the root's lock is held by another supervisor, or could not be taken"
        )
        assert os.umask(umask_before) == umask_before
    finally:
        first.let_go()


def test_a_settings_file_is_left_to_the_settings_loader(tmp_path: Path, venv: Path) -> None:
    root = tmp_path / "root"
    (root / "supervisor").mkdir(parents=True)
    (root / "supervisor" / "config.toml").write_text("heartbeat_seconds = 1\n")
    assert _start(root, venv) == "R/supervisor/config.toml is read by the settings loader only"
    assert not (root / "supervisor" / "supervisor.lock").exists()


def test_without_a_handed_request_the_stage_serves_and_spawns_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    start = start_early(_argv(root), {})
    try:
        assert start is not None
        assert start.child is None
        assert start.request == {}
        assert start.lock.still_ours()
        assert start.starting is not None  # the socket is bound and answered (test_starting)
        assert (root / "supervisor" / "supervisor.sock").is_socket()
        assert not (root / "sync-daemon.lock").exists()  # nothing of upstream's was touched
    finally:
        start.let_go()
        os.umask(start.user_umask)
    assert not (root / "supervisor" / "supervisor.sock").exists()  # let go: unlinked


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--root", "R", "--heartbeat-seconds", "2"],
        ["run", "--root", "R", "--service"],
        ["run", "--root", "R", "--takeover"],
        ["run", "--root=R"],
        ["run"],
        ["status", "--root", "R"],
    ],
)
def test_a_command_line_with_anything_more_has_no_first_stage(
    tmp_path: Path, argv: list[str]
) -> None:
    root = tmp_path / "root"
    argv = [str(root) if word == "R" else word.replace("=R", f"={root}") for word in argv]
    assert start_early(argv, {}) is None
    assert not root.exists()


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({"NOTIFY_SOCKET": "/run/x"}, "under a service manager (NOTIFY_SOCKET is set)"),
        ({"LISTEN_FDS": "1"}, "under a service manager (LISTEN_FDS is set)"),
        ({"INVOCATION_ID": "ab"}, "under a service manager (INVOCATION_ID is set)"),
        ({"XPC_SERVICE_NAME": "x"}, "under a service manager (XPC_SERVICE_NAME is set)"),
        (
            {"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "0"},
            "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS='0' is left to the settings loader",
        ),
    ],
)
def test_the_first_stage_leaves_service_managers_and_doubtful_settings_to_the_runner(
    environ: dict[str, str], reason: str
) -> None:
    assert first_stage_invocation(["run", "--root", "/r"], environ) == reason


def test_a_plain_run_by_hand_or_by_auto_start_has_a_first_stage() -> None:
    by_hand = first_stage_invocation(["run", "--root", "/r"], {"XPC_SERVICE_NAME": "0"})
    assert by_hand == FirstStage("/r")
    assert first_stage_invocation(["run", "--root", "/r", "--auto-started"], {}) == FirstStage("/r")
    assert first_stage_invocation(["run", "--root", "--auto-started"], {}) == (
        "not a plain `run --root R` command line"
    )


def test_a_settings_file_means_no_first_stage(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "supervisor").mkdir(parents=True)
    (root / "supervisor" / "config.toml").write_text("heartbeat_seconds = 1\n")
    assert start_early(_argv(root), {}) is None
    assert not (root / "supervisor" / "supervisor.lock").exists()


def test_a_request_the_stage_does_not_take_is_left_with_its_reason(tmp_path: Path) -> None:
    fd = _handed_request_pipe(json.dumps({**REQUEST, "replace": True}).encode())
    environ = {HANDED_REQUEST_FD_ENV: str(fd)}
    found = start_early(_argv(tmp_path / "root"), environ)
    try:
        # The stage still serves the socket (a plain run), and spawns nothing.
        assert found.verdict == EarlyVerdict(False, "the handed request asks to replace a daemon")
        assert found.child is None
        assert environ == {}
        assert not (tmp_path / "root" / "sync-daemon.lock").exists()
    finally:
        found.let_go()
        os.umask(found.user_umask)


def test_a_request_on_a_command_line_with_more_is_left_with_its_reason(tmp_path: Path) -> None:
    fd = _handed_request_pipe(json.dumps(REQUEST).encode())
    environ = {HANDED_REQUEST_FD_ENV: str(fd)}
    argv = [*_argv(tmp_path / "root"), "--heartbeat-seconds", "2"]
    assert start_early(argv, environ) == "not the auto-start's command line"
    assert environ == {}
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------------------------
# the lifecycle takes the early child over (fake effects)

ENSURE = EnsureRequest(python=PYTHON, package_version="3.2.4")


def _early_context() -> SpawnContext:
    env = child_environment({}, ROOT, "3.2.4")
    return SpawnContext(env=env, cwd=resolve_working_directory(None, ROOT))


async def _take_over(effects: FakeEffects, handed: dict[str, Any]) -> Any:
    lifecycle = make_lifecycle(effects, FakeClock())
    async with anyio.create_task_group() as group:
        lifecycle.attach(group)
        await recover(lifecycle)
        await group.start(take_over_early_spawn, lifecycle, handed)
        first = await ensure(lifecycle, ENSURE)
        second = await ensure(lifecycle, ENSURE)
        await wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    return lifecycle, first, second


@pytest.mark.anyio
async def test_the_early_child_becomes_the_current_daemon_and_its_first_client_hears_spawned() -> (
    None
):
    effects = FakeEffects()
    early = effects.add_early(PYTHON, "3.2.4", _early_context())
    _, first, second = await _take_over(effects, ENSURE.model_dump())
    pid = early.identity.pid
    assert (first.action, second.action) == ("spawned", "reused")
    assert first.daemon.pid == second.daemon.pid == pid
    assert effects.journal == [(pid, "current", "healthy")]
    assert effects.kinds() == ["spawned_early", "spawned"]
    # Recovery's journal, then no spawn of its own: the early child is taken, journaled only
    # once healthy, written to R/sync-daemon, and the upstream lock released.
    assert effects.acts == ["journal", f"take early {pid}", "journal", f"record {pid}", "end early"]


@pytest.mark.anyio
async def test_an_early_child_for_another_request_is_stopped_and_the_request_spawns() -> None:
    effects = FakeEffects()
    early = effects.add_early(PYTHON, "3.2.3", _early_context())
    _, first, _ = await _take_over(effects, ENSURE.model_dump())
    assert first.action == "spawned"
    assert first.daemon.pid != early.identity.pid
    assert f"abandon {early.identity.pid}" in effects.acts


@pytest.mark.anyio
async def test_an_early_child_that_never_answers_is_stopped_and_the_spawn_retried() -> None:
    effects = FakeEffects()
    early = effects.add_early(PYTHON, "3.2.4", _early_context())
    effects.daemons[early.identity.pid].responsive = False
    _, first, _ = await _take_over(effects, ENSURE.model_dump())
    assert first.action == "spawned"
    assert first.daemon.pid != early.identity.pid
    assert f"abandon {early.identity.pid}" in effects.acts
    assert effects.kinds()[:3] == ["spawned_early", "spawn_failed", "spawned"]


@pytest.mark.anyio
async def test_a_daemon_recovery_adopted_wins_over_the_early_child() -> None:
    effects = FakeEffects()
    upstream = effects.add_daemon("3.2.4", our_child=False)
    effects.record_upstream(upstream)
    early = effects.add_early(PYTHON, "3.2.4", _early_context())
    _, first, _ = await _take_over(effects, ENSURE.model_dump())
    assert (first.action, first.daemon.pid) == ("adopted", upstream.identity.pid)
    assert f"abandon {early.identity.pid}" in effects.acts


@pytest.mark.anyio
async def test_a_handed_request_the_lifecycle_refuses_stops_the_early_child() -> None:
    effects = FakeEffects()
    early = effects.add_early(PYTHON, "3.2.4", _early_context())
    _, first, _ = await _take_over(effects, {"python": "relative/python"})
    assert "early_spawn_unused" in effects.kinds()
    assert f"abandon {early.identity.pid}" in effects.acts
    assert first.action == "spawned"  # the starter's own request is served as ever


# --------------------------------------------------------------------------------------------
# the start-up sweep after a take-over (ADR 0020)


async def _sweep_beside_a_slow_take_over(
    effects: FakeEffects,
    *,
    after_step: bool,
    while_taking_over: Callable[[], None] = lambda: None,
) -> None:
    """The start-up sweep started beside the take-over of an early spawn whose daemon becomes
    healthy only once every task is blocked; ``while_taking_over`` runs at that moment (the
    take-over holds the lifecycle lock). ``effects.orphans_to_sweep`` is the caller's."""
    effects.add_early(PYTHON, "3.2.4", _early_context())
    starting = anyio.Event()
    healthy = effects.wait_healthy

    async def still_starting(child: Any, timeout: float) -> Any:
        await starting.wait()
        return await healthy(child, timeout)

    effects.wait_healthy = still_starting  # type: ignore[method-assign]
    lifecycle = make_lifecycle(effects, FakeClock())
    async with anyio.create_task_group() as group:
        lifecycle.attach(group)
        await recover(lifecycle)
        await group.start(take_over_early_spawn, lifecycle, ENSURE.model_dump())
        group.start_soon(functools.partial(sweep_orphans_forever, lifecycle, after_step=after_step))
        await wait_all_tasks_blocked()
        while_taking_over()
        starting.set()
        await wait_all_tasks_blocked()
        group.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("after_step", [True, False])
async def test_the_start_up_sweep_after_a_take_over_looks_again_once_the_take_over_ended(
    after_step: bool,
) -> None:
    # A predecessor's unrecorded daemon still starting when the sweep looks would be missed
    # until the next sweep: after a look at once that finds nothing, the sweep looks again
    # when the take-over has let the lock go (by then that daemon holds the contested port and
    # listens, or has exited). Without ``after_step`` no look comes after the take-over.
    effects = FakeEffects()
    looks: list[bool] = []  # per look: had the take-over ended?

    async def look(table: object) -> bool:
        looks.append("end early" in effects.acts)
        if len(looks) > 2:
            await anyio.sleep_forever()  # later sweeps: the fake clock never waits
        return False

    effects.orphans_to_sweep = look  # type: ignore[method-assign]
    await _sweep_beside_a_slow_take_over(effects, after_step=after_step)
    assert looks[:2] == ([False, True] if after_step else [False, False])


@pytest.mark.anyio
async def test_what_the_start_up_sweep_found_beside_the_take_over_is_not_looked_for_again() -> None:
    # The look beside the take-over found orphans: once the take-over lets the lock go, the
    # sweep takes the locks and observes (the fake's "sweep") without another look first.
    effects = FakeEffects()
    looks: list[int] = []  # per look: how many sweeps had been made by then

    async def look(table: object) -> bool:
        looks.append(effects.acts.count("sweep"))
        if len(looks) > 1:
            await anyio.sleep_forever()  # the next period's look: the fake clock never waits
        return True

    def taking_over() -> None:
        assert looks == [0]
        assert "sweep" not in effects.acts  # the take-over holds the lock

    effects.orphans_to_sweep = look  # type: ignore[method-assign]
    await _sweep_beside_a_slow_take_over(effects, after_step=True, while_taking_over=taking_over)
    assert effects.acts.count("sweep") == 1
    assert effects.acts.index("end early") < effects.acts.index("sweep")
    # One look before that sweep; the second is the next period's, after it.
    assert looks == [0, 1]


@pytest.mark.parametrize(
    ("listening", "own", "nothing"),
    [
        ({}, set(), True),  # a clean root
        ({9440: 1000}, {9440}, True),  # only the current daemon: every warm root
        ({9440: 1000, 9441: 1000}, {9440, 9441}, True),  # current and retiring
        ({9440: 1000, 9425: 1000}, {9440}, False),  # a predecessor's daemon beside it
        ({9425: 0}, set(), False),  # anything else: the doctor's look decides
        (None, set(), False),  # the kernel's table unreadable: says nothing
        (None, {9440}, False),
    ],
)
def test_only_a_listener_that_is_not_ours_makes_the_sweep_look(
    listening: dict[int, int] | None, own: set[int], nothing: bool
) -> None:
    assert nothing_to_sweep(listening, own) is nothing


# --------------------------------------------------------------------------------------------
# a start that fails before the lifecycle took the child stops it


@pytest.mark.real_ports
def test_a_child_nobody_took_over_is_stopped_and_reaped(tmp_path: Path) -> None:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    identity = read_identity(process.pid)
    assert identity is not None
    lock_fd = os.open(tmp_path / "sync-daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    spawned = SpawnedDaemon(process, identity, 9449, "0" * 32, PYTHON, PYTHON, 0)
    start = EarlyStart(
        user_umask=0o022,
        fd_limits=raise_fd_limit(),
        prepared=[],
        lock=SupervisorLock(tmp_path / "supervisor.lock"),
        verdict=EarlyVerdict(True, "nothing alive is recorded for the root"),
        child=EarlyChild(spawned, "3.2.4", {}, str(tmp_path), lock_fd),
    )
    start.discard(grace=5)
    assert process.returncode == -signal.SIGTERM  # nothing answered the token shutdown
    assert start.child is None
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(lock_fd)  # R/sync-daemon.lock released
    start.discard()  # a second time does nothing


# --------------------------------------------------------------------------------------------
# the client hands over an ensure, and nothing else


class _AbsentThenAnswering:
    """A transport that finds no supervisor once, then an answer."""

    def __init__(self) -> None:
        self.requests = 0

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        self.requests += 1
        if self.requests == 1:
            raise SupervisorUnavailable("nothing accepts connections")
        return Reply(200, None, b"{}")

    def follow(self, socket_path: Path) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("method", "path", "handed"),
    [("POST", "/v1/sync/ensure", True), ("GET", "/v1/health", False)],
)
def test_a_started_supervisor_is_handed_the_ensure_body_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, method: str, path: str, handed: bool
) -> None:
    starts: list[bytes | None] = []
    monkeypatch.setattr(
        autostart_module,
        "start_supervisor",
        lambda root, first_request=None: starts.append(first_request),
    )
    body = json.dumps(REQUEST).encode() if method == "POST" else None
    transport = _AbsentThenAnswering()
    autostart_module.request_or_start(
        transport,  # type: ignore[arg-type]
        tmp_path / "root",
        method,
        path,
        body,
        may_start=True,
    )
    assert starts == [body if handed else None]
    assert transport.requests == 2  # the request itself is still sent: the hand-over is a hint

"""Lifecycle on real spec-kitty daemons: upgrades, retirement, restarts, re-adoption, hand-over,
and coexistence with unmodified spec-kitty CLIs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    SPAWN_PORTS,
    PortRange,
    Sandbox,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    post_shutdown,
    read_identity,
    run_blocking,
    run_upstream_ensure,
    signal_if_same,
    spec_kitty_python,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _supervisor(sandbox: Sandbox, **settings: str) -> SupervisorUnderTest:
    env = {f"SPEC_KITTY_SUPERVISOR_{k.upper()}": v for k, v in settings.items()}
    return SupervisorUnderTest(sandbox, settings=env)


def _ensure(sup: SupervisorUnderTest, version: str, *extra: str) -> dict[str, Any]:
    answer: dict[str, Any] = sup.cli_json(
        "ensure", "--python", str(spec_kitty_python(version)), *extra
    )
    return answer


def _events(sup: SupervisorUnderTest) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = sup.cli_json("events", "--limit", "1000")["events"]
    return events


def _current(sup: SupervisorUnderTest) -> dict[str, Any] | None:
    status = sup.cli_json("status")
    current = [d for d in status["daemons"] if d["role"] == "current"]
    return current[0] if current else None


def test_upgrade_is_make_before_break_and_alternating_clients_never_thrash(
    sandbox: Sandbox,
) -> None:
    with _supervisor(sandbox) as sup:
        old = _ensure(sup, "3.2.4")["daemon"]
        upgraded = _ensure(sup, "3.2.7")
        assert upgraded["action"] == "upgraded"
        new = upgraded["daemon"]
        assert new["package_version"] == "3.2.7"
        assert new["state"] == "healthy"  # healthy before the switch was answered
        eventually(lambda: read_identity(old["pid"]) is None, what="the 3.2.4 daemon to exit")
        events = _events(sup)
        spawned = next(e for e in events if e["kind"] == "spawned" and e["pid"] == new["pid"])
        retired = next(e for e in events if e["kind"] == "retired" and e["pid"] == old["pid"])
        assert spawned["seq"] < retired["seq"]
        assert "http_shutdown" in retired["reason"]
        for _ in range(10):
            assert _ensure(sup, "3.2.4")["action"] == "kept_newer"
            assert _ensure(sup, "3.2.7")["action"] == "reused"
        assert daemon_pids(sup.root) == [new["pid"]]
        assert sum(1 for e in _events(sup) if e["kind"] == "spawned") == 2


def test_latest_wins_policy_replaces_with_the_older_version(sandbox: Sandbox) -> None:
    with _supervisor(sandbox, version_policy="latest_wins") as sup:
        _ensure(sup, "3.2.7")
        answer = _ensure(sup, "3.2.4")
        assert answer["action"] == "replaced"
        assert answer["daemon"]["package_version"] == "3.2.4"


def test_idle_daemon_retires_and_the_next_ensure_spawns_a_fresh_one(sandbox: Sandbox) -> None:
    with _supervisor(sandbox, idle_retirement_seconds="2") as sup:
        first = _ensure(sup, "3.2.4")["daemon"]
        eventually(lambda: read_identity(first["pid"]) is None, what="idle retirement")
        assert not (sup.root / "sync-daemon").exists()
        retired = [e for e in _events(sup) if e["kind"] == "retired"]
        assert "idle" in retired[-1]["reason"]
        again = _ensure(sup, "3.2.4")
        assert again["action"] == "spawned"
        assert again["daemon"]["pid"] != first["pid"]


def test_a_daemon_stopped_through_its_own_shutdown_has_retired_not_crashed(
    sandbox: Sandbox,
) -> None:
    with _supervisor(sandbox) as sup:
        daemon = _ensure(sup, "3.2.4", "--show-token")["daemon"]
        # What a newer spec-kitty CLI does to the legacy daemon: shutdown, then forget it.
        assert run_blocking(post_shutdown, daemon["port"], daemon["token"], 2.0)
        (sup.root / "sync-daemon").unlink()
        eventually(lambda: read_identity(daemon["pid"]) is None, what="the daemon to exit")
        eventually(lambda: sup.cli_json("status")["daemons"] == [], what="the table to clear")
        # The supervisor records its decision about the exit: retired, not restarted.
        eventually(
            lambda: any(e["kind"] == "retired" and e["pid"] == daemon["pid"] for e in _events(sup)),
            what="the exit to be recorded as a retirement",
        )
        status = sup.cli_json("status")
        assert status["daemons"] == []
        assert status["root_state"] == "ok"
        kinds = [e["kind"] for e in _events(sup)]
        assert "died" not in kinds
        assert "restarted" not in kinds
        assert daemon_pids(sup.root) == []


def _other_interpreter(folder: Path) -> str:
    """The 3.2.4 interpreter under another path: the supervisor sees a different ``python``."""
    wrapper = folder / "python-by-another-path"
    real = spec_kitty_python("3.2.4")
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _kill_current_once_healthy(sup: SupervisorUnderTest, killed: set[int]) -> bool:
    """SIGKILL the current daemon once it is healthy and not one already killed.

    The death is driven by the test, not by a wall-clock lifetime, so a loaded machine that is
    slow to bring a restart up only makes the test wait longer. The pid's identity is read, then
    the signal goes through a pidfd opened before the identity is re-checked: a successor that
    reused the pid is never hit. True once the root is quarantined (nothing left to kill).
    """
    status = sup.cli_json("status")
    if status["root_state"] == "quarantined":
        return True
    for daemon in status["daemons"]:
        if daemon["role"] == "current" and daemon["state"] == "healthy":
            if daemon["pid"] in killed:
                return False
            identity = read_identity(daemon["pid"])
            if identity is not None and signal_if_same(identity, signal.SIGKILL):
                killed.add(daemon["pid"])
    return False


@pytest.mark.parametrize("way_out", ["restart", "another_interpreter"])
def test_a_daemon_that_keeps_dying_quarantines_the_root(sandbox: Sandbox, way_out: str) -> None:
    with _supervisor(
        sandbox,
        quarantine_deaths="3",
        restart_backoff_seconds="0.5",
        heartbeat_seconds="0.5",
    ) as sup:
        python = _other_interpreter(sandbox.base)
        first = sup.cli_json("ensure", "--python", python, "--package-version", "3.2.4")
        assert first["action"] == "spawned"
        killed: set[int] = set()
        eventually(lambda: _kill_current_once_healthy(sup, killed), what="quarantine")
        # Three deaths: the first daemon and its two restarts, each killed once it was healthy.
        assert len(killed) == 3
        assert first["daemon"]["pid"] in killed
        events = _events(sup)
        deaths = [e for e in events if e["kind"] == "died"]
        assert {e["pid"] for e in deaths} == killed
        restarts = [e for e in events if e["kind"] == "restarted"]
        assert len(restarts) == 2
        assert any(e["kind"] == "quarantined" for e in events)
        # Backoff grows between restarts (its exact numbers and jitter are the fake-clock unit
        # tests': test_backoff_doubles_per_death_within_twenty_percent_and_is_capped).
        delays = [float(re.search(r"after ([0-9.]+) s backoff", e["reason"])[1]) for e in restarts]  # type: ignore[index]
        assert delays[0] < delays[1]
        # No spawn after the quarantine, shown without a pause: a heartbeat that began after the
        # quarantine was recorded has completed (its count moved on twice), and the table still
        # has no daemon and no event after "quarantined" is a spawn or a restart.
        beats = sup.cli_json("status")["supervisor"]["heartbeats"]
        eventually(
            lambda: sup.cli_json("status")["supervisor"]["heartbeats"] >= beats + 2,
            what="two more heartbeats",
        )
        assert sup.cli_json("status")["daemons"] == []
        kinds = [e["kind"] for e in _events(sup)]
        after = kinds[kinds.index("quarantined") :]
        assert "spawned" not in after
        assert "restarted" not in after
        assert daemon_pids(sup.root) == []
        refused = sup.cli("ensure", "--python", python, "--package-version", "3.2.4")
        assert refused.returncode == 1
        assert "quarantined" in refused.stderr
        assert sup.cli_json("status")["root_state_reason"].startswith("3 deaths")
        if way_out == "restart":
            assert sup.cli_json("restart")["root_state"] == "ok"
        # An ensure with another interpreter lifts it by itself, and spawns.
        assert _ensure(sup, "3.2.4")["action"] == "spawned"
        assert sup.cli_json("status")["root_state"] == "ok"
        events = _events(sup)
        lifted = [e for e in events if e["kind"] == "quarantine_lifted"]
        assert ("restart" if way_out == "restart" else "another interpreter") in lifted[0]["reason"]
        # Nothing was spawned while the root was quarantined (read from the ledger's order,
        # not from a pause): the quarantine held through every command above.
        kinds = [e["kind"] for e in events]
        quarantined = kinds.index("quarantined")
        assert "spawned" not in kinds[quarantined : kinds.index("quarantine_lifted")]


def test_a_wedged_daemon_is_restarted_after_the_watchdog_window(sandbox: Sandbox) -> None:
    with _supervisor(sandbox, watchdog_seconds="3") as sup:
        wedged = _ensure(sup, "3.2.4")["daemon"]
        os.kill(wedged["pid"], signal.SIGSTOP)
        try:

            def replaced() -> bool:
                current = _current(sup)
                return current is not None and current["pid"] != wedged["pid"]

            eventually(replaced, what="the watchdog restart")
            eventually(lambda: read_identity(wedged["pid"]) is None, what="the wedged one to stop")
        finally:
            if read_identity(wedged["pid"]) is not None:
                os.kill(wedged["pid"], signal.SIGCONT)
        current = _current(sup)
        assert current is not None
        assert current["state"] == "healthy"
        kinds = [e["kind"] for e in _events(sup)]
        assert "watchdog" in kinds
        retired = [e for e in _events(sup) if e["kind"] == "retired" and e["pid"] == wedged["pid"]]
        assert "terminate" in retired[0]["reason"] or "kill" in retired[0]["reason"]
        assert daemon_pids(sup.root) == [current["pid"]]


def _two_heartbeats_missed(sup: SupervisorUnderTest, pid: int) -> None:
    """Wait until ``pid`` has missed two heartbeats in a row (it is stopped by the caller)."""

    def unresponsive() -> bool:
        return any(
            d["pid"] == pid and d["state"] == "unresponsive"
            for d in sup.cli_json("status")["daemons"]
        )

    eventually(unresponsive, what="the stopped daemon to be seen unresponsive")
    # The tick that marked it may still be running when status shows it: two more completed
    # ticks include at least one more miss after it.
    beats = sup.cli_json("status")["supervisor"]["heartbeats"]
    eventually(
        lambda: sup.cli_json("status")["supervisor"]["heartbeats"] >= beats + 2,
        what="two more heartbeats",
    )


def test_an_ensure_replaces_a_stopped_daemon_long_before_the_watchdog(sandbox: Sandbox) -> None:
    # The watchdog's window stays at its 60 s default: only the ensure can replace it in time.
    with _supervisor(sandbox, heartbeat_seconds="0.5") as sup:
        stopped = _ensure(sup, "3.2.4")["daemon"]
        identity = read_identity(stopped["pid"])
        assert identity is not None
        assert signal_if_same(identity, signal.SIGSTOP)
        try:
            _two_heartbeats_missed(sup, stopped["pid"])
            answer = _ensure(sup, "3.2.4")
            assert answer["action"] == "replaced"
            fresh = answer["daemon"]
            assert fresh["pid"] != stopped["pid"]
            assert fresh["state"] == "healthy"
            eventually(
                lambda: read_identity(stopped["pid"]) is None, what="the stopped one to retire"
            )
        finally:
            signal_if_same(identity, signal.SIGCONT)
        events = _events(sup)
        watchdog = [e for e in events if e["kind"] == "watchdog"]
        assert watchdog[0]["pid"] == stopped["pid"]
        assert "probe of an ensure" in watchdog[0]["reason"]
        spawned = next(e for e in events if e["kind"] == "spawned" and e["pid"] == fresh["pid"])
        retired = next(e for e in events if e["kind"] == "retired" and e["pid"] == stopped["pid"])
        assert spawned["seq"] < retired["seq"]  # make-before-break
        assert _current(sup)["pid"] == fresh["pid"]  # type: ignore[index]
        assert daemon_pids(sup.root) == [fresh["pid"]]


def test_a_daemon_busy_for_a_moment_is_not_replaced_by_an_ensure(sandbox: Sandbox) -> None:
    # A generous health timeout: the resumed daemon must get the time to answer the probe.
    with _supervisor(sandbox, heartbeat_seconds="0.5", health_timeout_seconds="5") as sup:
        busy = _ensure(sup, "3.2.4")["daemon"]
        identity = read_identity(busy["pid"])
        assert identity is not None
        assert signal_if_same(identity, signal.SIGSTOP)
        try:
            _two_heartbeats_missed(sup, busy["pid"])
        finally:
            assert signal_if_same(identity, signal.SIGCONT)
        answer = _ensure(sup, "3.2.4")
        assert answer["action"] == "reused"
        assert answer["daemon"]["pid"] == busy["pid"]
        kinds = [e["kind"] for e in _events(sup)]
        assert kinds.count("spawned") == 1
        assert "watchdog" not in kinds
        assert daemon_pids(sup.root) == [busy["pid"]]


@pytest.mark.parametrize("version", ["3.2.2", "3.2.4"])
def test_kill_9_of_the_supervisor_then_ensure_keeps_the_same_daemon(
    sandbox: Sandbox, version: str
) -> None:
    with _supervisor(sandbox) as sup:
        daemon = _ensure(sup, version)["daemon"]
        (pid,) = sup.pids()
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: sup.pids() == [], what="the supervisor to die")
        again = _ensure(sup, version)
        assert again["action"] == "adopted"
        assert again["daemon"]["pid"] == daemon["pid"]
        assert again["daemon"]["origin"] == "adopted"
        assert daemon_pids(sup.root) == [daemon["pid"]]


def test_a_journaled_pid_now_owned_by_another_process_is_never_signalled(
    sandbox: Sandbox,
) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        folder = sandbox.root / "supervisor"
        folder.mkdir(mode=0o700, exist_ok=True)
        record = {
            "pid": stranger.pid,
            "process_start": "some-other-boot:1",  # the journaled daemon's start, not sleep's
            "uid": os.getuid(),
            "port": SPAWN_PORTS.lo,
            "token": "0" * 32,
            "package_version": "3.2.4",
            "python": str(spec_kitty_python("3.2.4")),
            "resolved_python": str(spec_kitty_python("3.2.4")),
            "origin": "spawned",
            "state": "healthy",
            "role": "current",
            "started_at": "2026-11-27T00:00:00+00:00",
        }
        (folder / "state.json").write_text(
            json.dumps({"schema_version": 1, "supervisor_pid": 1, "daemons": [record]})
        )
        with _supervisor(sandbox) as sup:
            sup.start()
            assert sup.cli_json("status")["daemons"] == []
            dropped = [e for e in _events(sup) if e["kind"] == "journal_dropped"]
            assert dropped[0]["pid"] == stranger.pid
            assert "PID reuse" in dropped[0]["reason"]
            assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_hand_over_keeps_the_daemon_pid(sandbox: Sandbox) -> None:
    with _supervisor(sandbox) as sup:
        daemon = _ensure(sup, "3.2.4")["daemon"]
        (old_supervisor,) = sup.pids()
        new_supervisor = sup.start("--takeover")
        assert new_supervisor != old_supervisor
        eventually(lambda: read_identity(old_supervisor) is None, what="the old one to leave")
        status = sup.cli_json("status")
        assert status["supervisor"]["pid"] == new_supervisor
        assert [d["pid"] for d in status["daemons"]] == [daemon["pid"]]
        assert status["daemons"][0]["origin"] == "adopted"
        assert _ensure(sup, "3.2.4")["action"] == "adopted"
        assert _ensure(sup, "3.2.4")["action"] == "reused"
        assert daemon_pids(sup.root) == [daemon["pid"]]


def test_a_same_version_upstream_cli_reuses_the_supervised_daemon(sandbox: Sandbox) -> None:
    with _supervisor(sandbox) as sup:
        daemon = _ensure(sup, "3.2.4")["daemon"]
        upstream = run_upstream_ensure(sandbox, "3.2.4")
        assert upstream.pid == daemon["pid"]
        assert daemon_pids(sup.root) == [daemon["pid"]]


def test_a_newer_upstream_cli_replaces_the_daemon_and_the_supervisor_adopts_it(
    sandbox: Sandbox,
) -> None:
    with _supervisor(sandbox) as sup:
        ours = _ensure(sup, "3.2.4")["daemon"]
        upstream = run_upstream_ensure(sandbox, "3.2.7")
        assert upstream.pid is not None
        assert upstream.pid != ours["pid"]

        def adopted() -> dict[str, Any] | None:
            current = _current(sup)
            return current if current is not None and current["pid"] == upstream.pid else None

        current = eventually(adopted, what="the supervisor to adopt the upstream daemon")
        eventually(
            lambda: daemon_pids(sup.root) == [upstream.pid], what="our replaced daemon to be gone"
        )
        assert current["origin"] == "adopted"
        assert current["package_version"] == "3.2.7"
        # No spawn/kill thrash: the supervisor spawned only its first daemon.
        assert sum(1 for e in _events(sup) if e["kind"] == "spawned") == 1


def test_a_removed_socket_file_is_restored(sandbox: Sandbox) -> None:
    with _supervisor(sandbox) as sup:
        pid = sup.start()
        path = sup.root / "supervisor" / "supervisor.sock"
        path.unlink()
        eventually(path.exists, what="the socket to be restored")
        status = sup.cli_json("status")
        assert status["supervisor"]["pid"] == pid
        assert any(e["kind"] == "socket_restored" for e in _events(sup))


def test_a_removed_lock_file_makes_the_supervisor_leave_its_daemons_and_exit(
    sandbox: Sandbox,
) -> None:
    with _supervisor(sandbox) as sup:
        daemon = _ensure(sup, "3.2.4")["daemon"]
        (pid,) = sup.pids()
        (sup.root / "supervisor" / "supervisor.lock").unlink()
        eventually(lambda: read_identity(pid) is None, what="the fenced supervisor to exit")
        assert daemon_pids(sup.root) == [daemon["pid"]]
        # Logged, not written to the ledger: once the lock is not ours, neither is events.jsonl.
        assert sup.log_events("fenced")
        ledger = (sup.root / "supervisor" / "events.jsonl").read_text()
        assert '"kind":"fenced"' not in ledger
        assert _ensure(sup, "3.2.4")["daemon"]["pid"] == daemon["pid"]

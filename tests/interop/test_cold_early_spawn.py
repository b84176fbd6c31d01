"""The fully cold path on real 3.2.4 daemons: the supervisor spawns its starter's daemon before
its heavy imports (ADR 0013), and only when nothing alive is recorded for the root."""

from __future__ import annotations

import subprocess
import sys
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
    read_identity,
    run_upstream_ensure,
    spec_kitty_python,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _cold_ensure(sup: SupervisorUnderTest) -> dict[str, Any]:
    """``ensure`` with no supervisor running: the CLI's client auto-starts one."""
    assert sup.pids() == []
    answer: dict[str, Any] = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))
    return answer


def _events(sup: SupervisorUnderTest, kind: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = sup.cli_json("events", "--limit", "1000")["events"]
    return [e for e in events if e["kind"] == kind]


def _stop_leaving_daemons(sup: SupervisorUnderTest) -> None:
    (pid,) = sup.pids()
    assert sup.cli("stop").returncode == 0
    eventually(lambda: read_identity(pid) is None, what="the supervisor to exit")


def test_a_cold_ensure_is_answered_spawned_by_the_daemon_spawned_before_the_imports(
    sup: SupervisorUnderTest,
) -> None:
    answer = _cold_ensure(sup)
    daemon = answer["daemon"]
    assert answer["action"] == "spawned"
    (early,) = sup.log_events("early_spawn")
    assert (early["spawned"], early["pid"]) == (True, daemon["pid"])
    (taken,) = _events(sup, "spawned_early")
    assert (taken["pid"], taken["port"]) == (daemon["pid"], daemon["port"])
    assert [e["pid"] for e in _events(sup, "spawned")] == [daemon["pid"]]
    assert _events(sup, "spawn_failed") == []
    assert _events(sup, "early_spawn_stopped") == []
    # Journaled and recorded as any spawn, and reused afterwards.
    status = sup.cli_json("status")
    assert [(d["pid"], d["state"], d["origin"]) for d in status["daemons"]] == [
        (daemon["pid"], "healthy", "spawned")
    ]
    lines = (sup.root / "sync-daemon").read_text().splitlines()
    assert lines[3] == str(daemon["pid"])
    again = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))
    assert (again["action"], again["daemon"]["pid"]) == ("reused", daemon["pid"])
    assert daemon_pids(sup.root) == [daemon["pid"]]


def test_a_journal_naming_a_live_daemon_prevents_the_early_spawn(
    sup: SupervisorUnderTest,
) -> None:
    first = _cold_ensure(sup)["daemon"]
    _stop_leaving_daemons(sup)
    assert read_identity(first["pid"]) is not None
    answer = _cold_ensure(sup)
    assert (answer["action"], answer["daemon"]["pid"]) == ("adopted", first["pid"])
    decisions = sup.log_events("early_spawn")
    assert [d["spawned"] for d in decisions] == [True, False]
    assert decisions[1]["reason"] == "the journal names a live process: recovery decides"
    assert len(_events(sup, "spawned_early")) == 1  # the first supervisor's only
    assert daemon_pids(sup.root) == [first["pid"]]


def test_a_state_file_naming_a_live_upstream_daemon_prevents_the_early_spawn(
    sandbox: Sandbox, sup: SupervisorUnderTest
) -> None:
    upstream = run_upstream_ensure(sandbox, "3.2.4")
    assert upstream.pid is not None
    answer = _cold_ensure(sup)
    assert (answer["action"], answer["daemon"]["pid"]) == ("adopted", upstream.pid)
    (decision,) = sup.log_events("early_spawn")
    assert decision["spawned"] is False
    assert decision["reason"] == "R/sync-daemon names a live process: recovery decides"
    assert _events(sup, "spawned_early") == []
    assert daemon_pids(sup.root) == [upstream.pid]


def test_a_settings_file_means_the_normal_start_and_the_log_says_why(
    sup: SupervisorUnderTest,
) -> None:
    (sup.root / "supervisor").mkdir(parents=True, mode=0o700)
    (sup.root / "supervisor" / "config.toml").write_text("stop_grace_seconds = 3\n")
    answer = _cold_ensure(sup)
    assert answer["action"] == "spawned"
    (decision,) = sup.log_events("early_spawn")
    assert (decision["spawned"], decision["pid"]) == (False, None)
    assert decision["reason"] == "R/supervisor/config.toml is read by the settings loader only"
    assert _events(sup, "spawned_early") == []
    assert [e["pid"] for e in _events(sup, "spawned")] == [answer["daemon"]["pid"]]


# A client of the one call (no pydantic in it), whose started supervisor inherits its PYTHONPATH.
_ONE_CALL_CLIENT = """
import sys
from spec_kitty_supervisor_client import ensure_sync_daemon
from spec_kitty_supervisor_client._errors import SupervisorStartFailed
try:
    ensure_sync_daemon(sys.argv[1], root=sys.argv[2])
except SupervisorStartFailed as exc:
    print("REFUSED", exc)
    sys.exit(3)
"""


def test_a_supervisor_dying_on_its_imports_after_the_early_spawn_leaves_no_daemon_and_says_why(
    sup: SupervisorUnderTest, tmp_path: Path
) -> None:
    """A broken install (pydantic fails to import) breaks the start after the first stage has
    spawned the starter's daemon: the daemon is stopped with the process, and the starter is
    told what the supervisor wrote, not "did not answer"."""
    broken = tmp_path / "broken"
    (broken / "pydantic").mkdir(parents=True)
    (broken / "pydantic" / "__init__.py").write_text(
        'raise ImportError("pydantic is broken for this test")\n'
    )
    python = str(spec_kitty_python("3.2.4"))
    completed = subprocess.run(
        [sys.executable, "-c", _ONE_CALL_CLIENT, python, str(sup.root)],
        env=sup.env({"PYTHONPATH": str(broken)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    sup.remember()
    assert completed.returncode == 3, completed.stdout + completed.stderr
    assert "pydantic is broken for this test" in completed.stdout
    # The first stage did spawn (its daemon's log was opened), and nothing of it is left.
    assert (sup.root / "sync-daemon.log").exists()
    eventually(lambda: daemon_pids(sup.root) == [], what="no daemon of the root left")
    eventually(lambda: sup.pids() == [], what="no supervisor of the root left")
    # Nothing was recorded for it, and the root serves again once the install is whole.
    answer = _cold_ensure(sup)
    assert answer["action"] == "spawned"
    assert daemon_pids(sup.root) == [answer["daemon"]["pid"]]

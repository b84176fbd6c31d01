"""Split brain: ``R/supervisor`` removed while a supervisor runs, and a second one started.

The first supervisor must change nothing in the root from the moment its lock file is no longer
the one it holds: not the second's ``state.json``, not its ledger, not the daemons. Its periodic
self-check runs only every heartbeat (set long here), so what stops it is the check before each
act (``supervisor/_lifecycle/_fencing.py``).
"""

from __future__ import annotations

import json
import shutil
import signal
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
    signal_if_same,
    spec_kitty_python,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _events(sup: SupervisorUnderTest) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = sup.cli_json("events", "--limit", "1000")["events"]
    return events


def test_a_supervisor_whose_root_folder_was_removed_never_writes_into_the_next_ones(
    sandbox: Sandbox,
) -> None:
    # A heartbeat far longer than the test: only the check before each act can fence it.
    settings = {"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "600"}
    with SupervisorUnderTest(sandbox, settings=settings) as sup:
        first = sup.start()
        first_identity = read_identity(first)
        assert first_identity is not None
        python = str(spec_kitty_python("3.2.4"))
        daemon = sup.cli_json("ensure", "--python", python)["daemon"]
        shutil.rmtree(sup.root / "supervisor")
        second = sup.start()
        assert second != first
        state = sup.root / "supervisor" / "state.json"
        eventually(state.exists, what="the second supervisor's journal")
        # The daemon the first one spawned (and the second adopted from R/sync-daemon) dies:
        # the first one sees it at once, as its parent. Unfenced, it would journal the death
        # into the second's state.json and ledger, and restart a daemon of its own.
        identity = read_identity(daemon["pid"])
        assert identity is not None
        assert signal_if_same(identity, signal.SIGKILL)
        eventually(lambda: read_identity(first) is None, what="the fenced supervisor to exit")
        # The second one carries on alone: one current daemon, its own, journaled by it.
        status = sup.cli_json("status")
        assert status["supervisor"]["pid"] == second

        def settled() -> bool:
            current = [d for d in sup.cli_json("status")["daemons"] if d["role"] == "current"]
            return len(current) == 1 and daemon_pids(sup.root) == [current[0]["pid"]]

        eventually(settled, what="one daemon, the second supervisor's")
        assert json.loads(state.read_text())["supervisor_pid"] == second
        # Exactly one supervisor recorded the death: the second. The first wrote nothing.
        died = [e for e in _events(sup) if e["kind"] == "died" and e["pid"] == daemon["pid"]]
        assert len(died) <= 1
        restarted = [e for e in _events(sup) if e["kind"] == "restarted"]
        assert len(restarted) <= 1
        assert sup.pids() == [second]

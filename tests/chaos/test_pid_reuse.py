"""PID reuse: the files a dead supervisor left name live processes that are not daemons.

Each trial: a supervisor and its daemon are killed (-9), and while nobody owns the root their
pids are "reused": the journal and ``R/sync-daemon`` now name live stand-ins that record every
signal they receive:

- the current row names a stand-in that looks as much like the dead daemon as it can (its
  ``-c`` script mentions ``run_sync_daemon`` with the dead daemon's port and token, its argv
  carries the root and exec markers), with the dead daemon's process start: a reused pid;
- a retiring row names a stand-in with its own, true process start but no daemon in it (a
  journal that lies about what a pid is): a retiring row is one the successor goes on stopping;
- ``R/sync-daemon`` names a third stand-in (upstream CLIs SIGKILL that pid unchecked).

A client then asks, which starts a successor. The promise: no stand-in receives any signal
(nor dies, nor is stopped), and the root settles with one new daemon.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    SupervisorUnderTest,
    daemon_script,
    eventually,
    is_alive,
    read_identity,
    signal_if_same,
    spec_kitty_python,
    write_state_file,
)
from tests.chaos._facts import settle_one_owner
from tests.chaos._standin import StandIn
from tests.chaos._tally import Tally, TrialFailed, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

VERSION = "3.2.4"


def _ensure(sup: SupervisorUnderTest) -> dict[str, Any]:
    result = sup.cli("ensure", "--python", str(spec_kitty_python(VERSION)), "--json")
    if result.returncode != 0:
        raise TrialFailed(f"ensure exited {result.returncode}: {result.stderr[-400:]}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _kill(pid: int, what: str) -> None:
    identity = read_identity(pid)
    if identity is None or not signal_if_same(identity, signal.SIGKILL):
        raise TrialFailed(f"{what} {pid} was gone before the kill")
    eventually(lambda: not is_alive(identity), what=f"{what} {pid} to die")


def _one_trial(made: Tally, fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox()
    with SupervisorUnderTest(sandbox) as sup:
        supervisor = sup.start()
        dead = _ensure(sup)["daemon"]
        _kill(supervisor, "supervisor")
        _kill(dead["pid"], "daemon")
        journal_path = sup.root / "supervisor" / "state.json"
        journal = json.loads(journal_path.read_text())
        row = next(r for r in journal["daemons"] if r["pid"] == dead["pid"])
        with (
            StandIn.start(
                directory=sandbox.base,
                disguise=daemon_script(row["port"], row["token"]),
                extra_argv=(
                    f"--spec-kitty-daemon-root={sup.root}",
                    f"--spec-kitty-daemon-exec={row['resolved_python']}",
                ),
            ) as reused,
            StandIn.start(directory=sandbox.base) as lied_about,
            StandIn.start(directory=sandbox.base) as recorded,
        ):
            lie = read_identity(lied_about.pid)
            assert lie is not None
            journal["daemons"] = [
                {**row, "pid": reused.pid},  # the dead daemon's start: the pid was reused
                {**row, "pid": lied_about.pid, "process_start": lie.start, "role": "retiring"},
            ]
            journal_path.write_text(json.dumps(journal))
            write_state_file(sup.root, row["port"], row["token"], recorded.pid)
            witnesses = {"reused pid": reused, "lying row": lied_about, "R/sync-daemon": recorded}

            answer = _ensure(sup)
            facts = settle_one_owner(
                made, sup.root, "after the reuse", ignore={w.pid for w in witnesses.values()}
            )
            if answer["daemon"]["pid"] in {w.pid for w in witnesses.values()}:
                made.lost(1, f"the ensure answered with a stand-in: {answer['daemon']}")
            current = facts.recorded.pid if facts.recorded is not None else None
            made.note(f"successor answered {answer['action']} pid {current}")
            for name, witness in witnesses.items():
                touched = witness.touched()
                made.foreign(len(touched), f"the {name} stand-in {witness.pid} got {touched}")


def test_pids_reused_by_unrelated_processes_are_never_signalled(
    tally: Callable[[str], Tally],
) -> None:
    made = tally("PID reuse: journal and R/sync-daemon name live strangers")
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet:
        for _ in range(rounds()):
            with made.trial():
                _one_trial(made, fleet)

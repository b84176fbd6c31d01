"""Cold-start races: fifty spec-kitty processes ask a fresh root for its daemon at once.

Each round is a fresh root with no supervisor. Fifty client processes (the one call a
spec-kitty CLI makes, ``ensure_sync_daemon``) are started, wait at a barrier until all of them
are ready, and are then released together. The promise: exactly one supervisor and exactly one
daemon exist afterwards, every caller got an answer, and every answer names that one daemon.
Counted from the processes: the supervisors and daemons alive for the root, and the callers'
own exit codes and answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from sks_harness import SPAWN_PORTS, DaemonFleet, SupervisorUnderTest, spec_kitty_python
from tests.chaos._facts import settle_one_owner
from tests.chaos._tally import Tally, TrialFailed, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

CALLERS = 50
#: One release per round, in turn: the race is the same, the daemons' start-up differs.
VERSIONS = ("3.2.4", "3.2.7", "3.2.5", "3.2.6")

# Waits on stdin for the release, so that all callers ask within the same moment.
_CALLER = (
    "import json, sys\n"
    "from spec_kitty_supervisor_client import ensure_sync_daemon\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "sys.stdin.readline()\n"
    "a = ensure_sync_daemon(python=sys.argv[1], version=sys.argv[2], root=sys.argv[3])\n"
    "print(json.dumps({'action': a.action, 'pid': a.daemon.pid, 'port': a.daemon.port}))\n"
)


def _race(sup: SupervisorUnderTest, version: str) -> list[subprocess.CompletedProcess[str]]:
    python = str(spec_kitty_python(version))
    callers = [
        subprocess.Popen(
            [sys.executable, "-c", _CALLER, python, version, str(sup.root)],
            env=sup.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=sup.sandbox.home,
        )
        for _ in range(CALLERS)
    ]
    finished = []
    try:
        for caller in callers:
            assert caller.stdout is not None
            ready = caller.stdout.readline()
            if ready != "ready\n":
                raise TrialFailed(f"a caller did not reach the barrier: {ready!r}")
        for caller in callers:  # the release: one line to each, as fast as a loop writes
            assert caller.stdin is not None
            caller.stdin.write("go\n")
            caller.stdin.flush()
        for caller in callers:
            out, err = caller.communicate(timeout=180)
            finished.append(subprocess.CompletedProcess(caller.args, caller.returncode, out, err))
    finally:
        for caller in callers:
            if caller.poll() is None:
                caller.kill()
                caller.wait()
    return finished


def _one_round(tally: Tally, fleet: DaemonFleet, version: str) -> None:
    with SupervisorUnderTest(fleet.sandbox()) as sup:
        results = _race(sup, version)
        sup.remember()
        answers = []
        unanswered = []
        for result in results:
            try:
                answers.append(json.loads(result.stdout))
            except ValueError:
                unanswered.append(f"exit {result.returncode}: {result.stderr.strip()[-300:]}")
        answered_pids = {answer["pid"] for answer in answers}
        facts = settle_one_owner(tally, sup.root, f"{version} race")
        live = {daemon.pid for daemon in facts.daemons}
        if len(answered_pids) > 1:
            tally.duplicate(
                len(answered_pids) - 1, f"{version}: callers were given daemons {answered_pids}"
            )
        if answered_pids - live:
            tally.lost(
                1, f"{version}: answers named {answered_pids - live}, not alive ({live} are)"
            )
        spawned = sum(1 for answer in answers if answer["action"] == "spawned")
        tally.note(
            f"{version}: {len(answers)} answered ({spawned} spawned), "
            f"supervisors seen {len(sup.seen)}"
        )
        if unanswered:
            raise TrialFailed(f"{len(unanswered)} of {CALLERS} callers unanswered: {unanswered[0]}")


def test_fifty_concurrent_first_ensures_make_one_supervisor_and_one_daemon(
    tally: Callable[[str], Tally],
) -> None:
    made = tally("cold start: 50 concurrent first ensures")
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet:
        for index in range(rounds()):
            version = VERSIONS[index % len(VERSIONS)]
            with made.trial(version):
                _one_round(made, fleet, version)

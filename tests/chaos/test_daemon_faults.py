"""kill -9 and SIGSTOP of the current daemon, again and again under one supervisor.

- SIGKILL: the supervisor notices the death (a pidfd), restarts after its backoff, and the
  root settles with one new daemon; the killed pid is gone, nothing else was started.
- SIGSTOP, nobody asking: a hung daemon answers no heartbeat; the watchdog replaces it
  make-before-break and stops the hung one (SIGTERM with SIGCONT, then SIGKILL).
- SIGSTOP, a client asking: after two missed heartbeats an ``ensure`` no longer hands the hung
  daemon out; it replaces it and answers with the new one (the watchdog is set far away).

The deaths are deliberate, so quarantine is set out of reach and the backoff short: the
promise under test is what is left behind, not the quarantine (tests/interop has that).
A hung daemon the supervisor failed to stop counts as an orphan, and is then continued and
killed by the test so that the next trial starts clean.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator

import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    ProcessIdentity,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    is_alive,
    read_identity,
    read_state_file,
    signal_if_same,
    spec_kitty_python,
)
from tests.chaos._facts import settle_one_owner
from tests.chaos._tally import Tally, TrialFailed, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

VERSION = "3.2.4"
#: Trials per round (CI runs tests/chaos/ in a few minutes; make chaos sets more rounds).
PER_ROUND = 1
DELIBERATE_DEATHS = {
    "SPEC_KITTY_SUPERVISOR_QUARANTINE_DEATHS": "1000",
    "SPEC_KITTY_SUPERVISOR_RESTART_BACKOFF_MAX_SECONDS": "2",
}


@pytest.fixture
def fleet() -> Iterator[DaemonFleet]:
    with DaemonFleet(port_range=SPAWN_PORTS) as daemons:
        yield daemons


def _ensure_pid(sup: SupervisorUnderTest) -> int:
    result = sup.cli("ensure", "--python", str(spec_kitty_python(VERSION)), "--json")
    if result.returncode != 0:
        raise TrialFailed(f"ensure exited {result.returncode}: {result.stderr[-400:]}")
    pid: int = json.loads(result.stdout)["daemon"]["pid"]
    return pid


def _current(sup: SupervisorUnderTest) -> ProcessIdentity:
    """The root's one daemon, by the processes (and ``R/sync-daemon`` agreeing)."""
    pids = daemon_pids(sup.root)
    record = read_state_file(sup.root)
    if len(pids) != 1 or record is None or record.pid != pids[0]:
        raise TrialFailed(f"not settled before the fault: daemons {pids}, recorded {record}")
    identity = read_identity(pids[0])
    if identity is None:
        raise TrialFailed(f"daemon {pids[0]} vanished before the fault")
    return identity


def _replaced(made: Tally, sup: SupervisorUnderTest, victim: ProcessIdentity, label: str) -> None:
    """Settled with a daemon other than ``victim``, and ``victim`` gone (else: an orphan)."""
    try:
        eventually(
            lambda: (record := read_state_file(sup.root)) is not None and record.pid != victim.pid,
            what=f"{label}: R/sync-daemon to name a daemon other than {victim.pid}",
            timeout=60,
        )
        eventually(lambda: not is_alive(victim), what=f"{label}: {victim.pid} to be gone")
    except AssertionError as exc:
        made.note(str(exc).splitlines()[0])
    settle_one_owner(made, sup.root, label, timeout=60)
    if is_alive(victim):
        # Counted by settle_one_owner as a daemon nobody owns; cleared for the next trial.
        signal_if_same(victim, signal.SIGCONT)
        signal_if_same(victim, signal.SIGKILL)
        eventually(lambda: not is_alive(victim), what=f"the left-over {victim.pid} to die")
    answered = _ensure_pid(sup)
    if answered == victim.pid:
        made.lost(1, f"{label}: an ensure still answers with the faulted daemon {victim.pid}")


def _run(
    made: Tally, fleet: DaemonFleet, settings: dict[str, str], fault: Callable[..., None]
) -> None:
    with SupervisorUnderTest(fleet.sandbox(), settings={**DELIBERATE_DEATHS, **settings}) as sup:
        sup.start()
        _ensure_pid(sup)
        for index in range(rounds() * PER_ROUND):
            with made.trial(str(index)):
                fault(made, sup, f"trial {index + 1}")


def test_the_current_daemon_killed_again_and_again_is_replaced_each_time(
    tally: Callable[[str], Tally], fleet: DaemonFleet
) -> None:
    def kill(made: Tally, sup: SupervisorUnderTest, label: str) -> None:
        victim = _current(sup)
        assert signal_if_same(victim, signal.SIGKILL)
        _replaced(made, sup, victim, label)

    _run(tally("daemon SIGKILL"), fleet, {}, kill)


def test_a_hung_daemon_nobody_asks_for_is_replaced_by_the_watchdog(
    tally: Callable[[str], Tally], fleet: DaemonFleet
) -> None:
    def hang(made: Tally, sup: SupervisorUnderTest, label: str) -> None:
        victim = _current(sup)
        assert signal_if_same(victim, signal.SIGSTOP)
        _replaced(made, sup, victim, label)

    settings = {"SPEC_KITTY_SUPERVISOR_WATCHDOG_SECONDS": "3"}
    _run(tally("daemon SIGSTOP: the watchdog"), fleet, settings, hang)


def test_a_hung_daemon_is_not_handed_to_a_client_for_long(
    tally: Callable[[str], Tally], fleet: DaemonFleet
) -> None:
    def hang_and_ask(made: Tally, sup: SupervisorUnderTest, label: str) -> None:
        victim = _current(sup)
        assert signal_if_same(victim, signal.SIGSTOP)
        # Handed out while it may only be busy (fewer than two missed heartbeats), then not.
        eventually(
            lambda: _ensure_pid(sup) != victim.pid,
            what=f"{label}: an ensure to stop answering with the hung daemon {victim.pid}",
            timeout=60,
            interval=0.5,
        )
        _replaced(made, sup, victim, label)

    settings = {"SPEC_KITTY_SUPERVISOR_WATCHDOG_SECONDS": "600"}
    _run(tally("daemon SIGSTOP: an ensure while hung"), fleet, settings, hang_and_ask)

"""Signals to the supervisor: TERM, INT and HUP, once and twice in a row.

What docs/lifecycle.md ("Signals") and docs/service.md promise: each of them ends the
supervisor gracefully with exit code 0, the ledger says which signal it was, and its daemons
are left running (a service restart must not restart them); the next supervisor re-adopts
them with the same pids. A second signal while it is already exiting changes nothing of that.

One root and one daemon for the whole class: each trial signals the running supervisor, checks
what it left, and starts the next one, which must re-adopt the same daemon.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator

import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    SupervisorUnderTest,
    is_alive,
    signal_if_same,
    spec_kitty_python,
)
from tests.chaos._facts import observe, settle_one_owner
from tests.chaos._tally import Tally, TrialFailed, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


@pytest.fixture
def fleet() -> Iterator[DaemonFleet]:
    with DaemonFleet(port_range=SPAWN_PORTS) as daemons:
        yield daemons


def _ledger_signals(sup: SupervisorUnderTest) -> list[str]:
    try:
        lines = (sup.root / "supervisor" / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("kind") == "signal":
            found.append(str(event.get("reason")))
    return found


def _signal_trial(
    made: Tally, sup: SupervisorUnderTest, supervisor: int, signum: signal.Signals, times: int
) -> int:
    """Signal ``supervisor`` (started by ``sup``); return the pid of the next one."""
    label = f"{signum.name} x{times}"
    before = settle_one_owner(made, sup.root, f"{label}: before")
    if before.recorded is None or before.daemon(before.recorded.pid) is None:
        raise TrialFailed(f"{label}: no daemon before the signal ({before.describe()})")
    daemon = before.daemon(before.recorded.pid)
    assert daemon is not None
    identity = sup.seen[supervisor]
    seen_signals = len(_ledger_signals(sup))
    for number in range(1, times + 1):
        # Back to back: the second arrives while the first is being handled.
        if not signal_if_same(identity, signum):
            made.note(f"{label}: the supervisor was gone before signal number {number}")
    code = sup.wait_exit(supervisor, timeout=60)
    if code != 0:
        made.fail(f"{label}: the supervisor exited with {code}, not 0")
    recorded = _ledger_signals(sup)[seen_signals:]
    if f"received {signum.name}" not in recorded:
        made.lost(1, f"{label}: the ledger has no signal event for it ({recorded})")
    # Left as documented: the daemon runs, the journal and R/sync-daemon still name it.
    left = observe(sup.root)
    if not is_alive(daemon):
        made.fail(f"{label}: the daemon {daemon.pid} did not survive the supervisor's exit")
    if left.recorded is None or left.recorded.pid != daemon.pid:
        made.lost(1, f"{label}: R/sync-daemon no longer names {daemon.pid}: {left.describe()}")
    if not any(row.get("pid") == daemon.pid for row in left.journal or []):
        made.lost(1, f"{label}: the journal no longer names {daemon.pid}: {left.describe()}")
    if left.supervisors:
        made.duplicate(len(left.supervisors), f"{label}: supervisors still alive after exit")
    # The next supervisor re-adopts the very same process.
    following = sup.start()
    after = settle_one_owner(made, sup.root, f"{label}: after")
    if after.recorded is None or after.recorded.pid != daemon.pid:
        made.lost(1, f"{label}: the next supervisor did not re-adopt {daemon.pid}")
    return following


@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signalled_supervisor_exits_cleanly_and_leaves_its_daemon(
    tally: Callable[[str], Tally], fleet: DaemonFleet, signum: signal.Signals, times: int
) -> None:
    made = tally(f"supervisor {signum.name} {'twice in a row' if times == 2 else 'once'}")
    with SupervisorUnderTest(fleet.sandbox()) as sup:
        supervisor = sup.start()
        sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))
        # Six classes of one signal each: one round apiece in CI, make chaos sets more.
        for _ in range(rounds(1)):
            with made.trial():
                supervisor = _signal_trial(made, sup, supervisor, signum, times)

"""kill -9 of an auto-started supervisor between its early spawn and the lifecycle's take-over.

A fully cold ``ensure`` (no supervisor, no daemon) auto-starts a supervisor whose first stage
spawns the starter's daemon before its heavy imports (docs/adr/0013). Until the lifecycle has
taken that child over, found it healthy and journaled it, the daemon is recorded nowhere of
ours: not in ``R/supervisor/state.json``, not in ``R/sync-daemon``. Each trial SIGKILLs the
supervisor in that window, found from the kernel (the supervisor is the starter's child, the
daemon the supervisor's), and records where the kill landed, read from the ledger and the
journal afterwards: before ``spawned_early``, between it and ``spawned``, or after (journaled;
such a trial is not in the window, and most trials must be).

Then the root must settle as ADR 0013 says it does: the next supervisor's start-up sweep stops
the unrecorded child as this root's orphan (it proves to be ours by its root marker and its
own health answer, DESIGN.md rule 2), or the child lost its port to the successor's daemon
and exited; one daemon remains, recorded in the journal and in ``R/sync-daemon``, and nothing
else listens in the spawn range (but the stand-in below). ``R/sync-daemon.lock`` and the
root's lock are not left held by the dead supervisor (read from ``/proc/locks``, never by
taking them).

Two ways on after the kill, in turn:

- *paused*: a stand-in that claims this root listens in the spawn range and must never
  receive a signal. The starter is stopped (SIGSTOP, once it no longer holds the auto-start
  lock) before the kill, so the root is left exactly as the dead supervisor left it.
  ``doctor --json`` then runs without a supervisor and must name the child a ``safe_auto``
  orphan of this root (after a late kill that let it be journaled, it may be the recorded
  daemon, ``never_touch``) and the stand-in ``never_touch``; then a new ``ensure`` starts a
  successor; then the starter resumes, and its retry is answered by the successor.
- *running on*: nothing else in the range. The starter's own retry starts the successor at
  once, while the child is still starting (the race of ADR 0020: the successor's start-up
  sweep must not look before the child can be seen); then a new ``ensure`` from another
  process.

Either way the starter's first ``ensure`` must be answered, by the successor, with the daemon
that remains, within its timeout: its auto-start looks for a supervisor up to three times
(``_autostart.START_ATTEMPTS``), since the supervisor it started is killed while serving its
request and that supervisor's dying socket still accepts for a moment. A failure counts, even
one with a clear error; so do a traceback and a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    DaemonFleet,
    ProcessIdentity,
    Sandbox,
    SupervisorUnderTest,
    eventually,
    is_alive,
    parse_daemon_argv,
    probe_health,
    read_identity,
    run_blocking,
    signal_if_same,
    spec_kitty_python,
)
from tests.chaos._facts import read_journal, settle_one_owner
from tests.chaos._standin import StandIn
from tests.chaos._tally import Tally, TrialFailed, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

#: When the kill comes: as soon as the child exists, or once the lifecycle ledgered that it
#: took the child over (it is then waiting for the child's health).
CHILD_SPAWNED = "child spawned"
TAKE_OVER_LEDGERED = "take-over ledgered"
#: Trial ``n`` runs ``SCHEDULE[n % 8]``: (release, moment, starter paused). The first four
#: (CI's rounds) cover both releases, both moments and both ways on; the running-on trials
#: are mostly 3.2.7 killed as soon as its child exists: its daemon binds its port later than
#: 3.2.4's, which is what met ADR 0020's race (about one such trial in two before the fix).
SCHEDULE = (
    ("3.2.4", CHILD_SPAWNED, True),
    ("3.2.7", CHILD_SPAWNED, False),
    ("3.2.7", TAKE_OVER_LEDGERED, True),
    ("3.2.7", CHILD_SPAWNED, False),
    ("3.2.7", CHILD_SPAWNED, True),
    ("3.2.4", CHILD_SPAWNED, False),
    ("3.2.4", TAKE_OVER_LEDGERED, True),
    ("3.2.7", TAKE_OVER_LEDGERED, False),
)
#: The phases a kill can land in; the first two are inside the window.
BEFORE_TAKE_OVER = "before spawned_early"
WAITING_HEALTH = "between spawned_early and spawned"
JOURNALED = "after spawned (journaled)"
#: How long the starter may take to answer, or to fail, all retries included.
STARTER_TIMEOUT = 180


@dataclass(frozen=True)
class Found:
    """The auto-started supervisor and the daemon its first stage spawned."""

    supervisor: ProcessIdentity
    child: ProcessIdentity
    port: int


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``, from the kernel's per-thread child lists."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    if not found and not Path(f"/proc/{pid}/task/{pid}/children").exists():
        # A kernel without CONFIG_PROC_CHILDREN: psutil scans every process instead.
        try:
            found = [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _early_child(starter: subprocess.Popen[str], root: Path) -> Found | None:
    """The supervisor the starter started and its daemon child for ``root``, once both exist."""
    for pid in _children(starter.pid):
        argv = _cmdline(pid)
        if "run" not in argv or str(root) not in argv:
            continue
        for child in _children(pid):
            shape = parse_daemon_argv(_cmdline(child))
            if shape is None or shape.root != str(root):
                continue
            supervisor, daemon = read_identity(pid), read_identity(child)
            if supervisor is not None and daemon is not None:
                return Found(supervisor, daemon, shape.port)
    return None


def _lock_holders(path: Path) -> list[int]:
    """Pids shown holding a lock on ``path`` in ``/proc/locks`` (looked at, never taken)."""
    try:
        info = path.stat()
    except OSError:
        return []
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    holders = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:2162716 0 EOF" (a blocked waiter has "->").
        if "->" in fields:
            continue
        if len(fields) >= 6 and fields[5] == device:
            holders.append(int(fields[4]))
    return holders


def _ledger(root: Path) -> list[dict[str, Any]]:
    try:
        lines = (root / "supervisor" / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _ledgered(root: Path, kind: str, pid: int) -> bool:
    return any(e.get("kind") == kind and e.get("pid") == pid for e in _ledger(root))


def _phase(root: Path, child: int) -> str:
    """Where the kill landed, from what the dead supervisor left in its journal and ledger."""
    rows = read_journal(root)[0] or []
    if any(row.get("pid") == child for row in rows) or _ledgered(root, "spawned", child):
        return JOURNALED
    if _ledgered(root, "spawned_early", child):
        return WAITING_HEALTH
    return BEFORE_TAKE_OVER


def _starter(sup: SupervisorUnderTest, version: str) -> subprocess.Popen[str]:
    """``ensure`` as a CLI asks it with no supervisor running: it auto-starts one."""
    return subprocess.Popen(
        [
            *SUPERVISOR,
            "ensure",
            "--python",
            str(spec_kitty_python(version)),
            "--json",
            "--root",
            str(sup.root),
        ],
        env=sup.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=sup.sandbox.home,
    )


def _outcome(starter: subprocess.Popen[str]) -> tuple[int | None, str]:
    """The starter's answered pid (None when it failed) and a line saying what it said."""
    try:
        out, err = starter.communicate(timeout=STARTER_TIMEOUT)
    except subprocess.TimeoutExpired:
        starter.kill()
        starter.communicate()
        raise TrialFailed(f"the starter hung beyond {STARTER_TIMEOUT} s") from None
    if starter.returncode == 0:
        answer = json.loads(out)
        return answer["daemon"]["pid"], f"answered {answer['action']} pid {answer['daemon']['pid']}"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if not last or "Traceback" in err:
        raise TrialFailed(f"the starter failed without a clear error (exit {starter.returncode})")
    return None, f"failed clearly (exit {starter.returncode}): {last}"


def _kill9(identity: ProcessIdentity) -> None:
    if not signal_if_same(identity, signal.SIGKILL):
        raise TrialFailed(f"supervisor {identity.pid} was gone before the kill")
    eventually(lambda: not is_alive(identity), what=f"supervisor {identity.pid} to die")


def _check_locks_let_go(made: Tally, root: Path, label: str) -> None:
    """The root's lock and ``R/sync-daemon.lock`` are free once the dead supervisor is gone.

    Its main thread is a zombie (dead to ``is_alive``) a little before its last thread has
    exited and closed the descriptors, so this waits; a lock that a surviving process
    inherited stays held for good.
    """
    for lock in (root / "supervisor" / "supervisor.lock", root / "sync-daemon.lock"):
        try:
            eventually(lambda lock=lock: not _lock_holders(lock), what=f"{lock.name} to be let go")
        except AssertionError:
            made.lost(1, f"{label}: {lock.name} still held by {_lock_holders(lock)} after the kill")


def _listening_or_gone(child: Found) -> bool:
    return not is_alive(child.child) or run_blocking(probe_health, child.port, 2.0) is not None


def _doctor(made: Tally, sup: SupervisorUnderTest, found: Found, stand_in: int, label: str) -> str:
    """``doctor --json`` with no supervisor: what it says of the child and of the stand-in."""
    result = sup.cli("doctor", "--json")
    if result.returncode not in (0, 1):
        raise TrialFailed(f"{label}: doctor exited {result.returncode}: {result.stderr[-400:]}")
    report = json.loads(result.stdout)
    if report["supervisor"] is not None:
        raise TrialFailed(f"{label}: doctor found a supervisor running: {report['supervisor']}")
    by_pid = {entry.get("pid"): entry for entry in report["listeners"]}
    seen = by_pid.get(found.child.pid)
    # Unrecorded, it is this root's orphan, provably ours: safe_auto. Journaled (a kill that
    # came late), it is the recorded daemon once R/sync-daemon names it ("never_touch": the
    # live recorded daemon), and an orphan of the dead supervisor's table just before.
    if _phase(sup.root, found.child.pid) == JOURNALED:
        expected = {"never_touch", "safe_auto"}
    else:
        expected = {"safe_auto"}
    said = "not listed" if seen is None else f"{seen['cleanup_class']} ({seen['why']})"
    if is_alive(found.child) and (seen is None or seen["cleanup_class"] not in expected):
        made.fail(f"{label}: doctor classified the leftover child {said}, not {sorted(expected)}")
    if seen is not None and seen["cleanup_class"] == "safe_auto":
        orphans = {entry.get("pid") for entry in report["orphans"]}
        if found.child.pid not in orphans:
            made.fail(f"{label}: doctor's orphans[] leave out the safe_auto child")
        if result.returncode != 1:
            made.fail(f"{label}: doctor exited {result.returncode} with an orphan to clean")
    other = by_pid.get(stand_in)
    if other is None or other["cleanup_class"] != "never_touch":
        made.fail(f"{label}: doctor classified the stand-in {other}, not never_touch")
    return said


def _fate(made: Tally, found: Found, current: int | None, label: str) -> str:
    """What became of the child: adopted as the current daemon, or stopped (it may still be
    exiting when the root looks settled: its argv is gone from /proc before its pid)."""
    if current == found.child.pid:
        return "adopted"
    try:
        eventually(lambda: not is_alive(found.child), what=f"the child {found.child.pid} to exit")
    except AssertionError:
        made.orphans(1, f"{label}: the child {found.child.pid} runs on beside {current}")
        return f"alive beside {current}"
    return f"stopped, {current} current"


def _listeners_in_range() -> dict[int, int | None]:
    """Every loopback listener in the spawn range: port to pid."""
    found: dict[int, int | None] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in SPAWN_PORTS:
            found[conn.laddr.port] = conn.pid
    return found


def _stand_in(fleet: DaemonFleet, root: Path, version: str) -> StandIn:
    """A liar on a port of the spawn range, claiming this root in its argv and its health.

    Only in the paused trials: a listener in the range sends every sweep's look down the
    doctor's slower path, and that hid the race the running-on trials are there to meet (the
    successor's start-up sweep looking before the predecessor's child listens, ADR 0020).
    """
    port = fleet.free_ports(1)[0]
    lie = json.dumps(
        {
            "status": "ok",
            "token": "0" * 32,
            "daemon_family": "sync",
            "singleton_scope_id": str(root),
            "protocol_version": 1,
            "package_version": version,
            "owner": {"pid": 1, "port": port, "package_version": version},
        }
    )
    return StandIn.start(listen=port, answer=lie, extra_argv=[f"--spec-kitty-daemon-root={root}"])


def _trial(made: Tally, number: int, phases: list[str]) -> None:
    # A fleet per trial: every daemon of the trial's root is stopped (by pid) before the next
    # trial looks at the spawn range. The stand-in takes a port of the supervisor's own spawn
    # range, so every spawn goes round it.
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet:
        _trial_in(made, fleet, number, phases)


def _trial_in(made: Tally, fleet: DaemonFleet, number: int, phases: list[str]) -> None:
    version, moment, paused = SCHEDULE[number % len(SCHEDULE)]
    label = f"{version}, killed at {moment}, starter {'paused' if paused else 'running on'}"
    sandbox: Sandbox = fleet.sandbox()
    root = sandbox.root
    with (
        _stand_in(fleet, root, version) if paused else contextlib.nullcontext() as stand_in,
        SupervisorUnderTest(sandbox) as sup,
    ):
        starter = _starter(sup, version)
        try:
            found = eventually(
                lambda: _early_child(starter, root),
                what="the auto-started supervisor's early child",
                timeout=60,
                interval=0.002,
            )
            sup.seen[found.supervisor.pid] = found.supervisor
            if moment == TAKE_OVER_LEDGERED:
                eventually(
                    lambda: (
                        _ledgered(root, "spawned_early", found.child.pid)
                        or not is_alive(found.supervisor)
                    ),
                    what="the take-over's ledger event",
                    timeout=60,
                    interval=0.002,
                )
            if paused:
                # Stopped while it holds R/supervisor/autostart.lock, it would hold up every
                # other client's start: it lets go once the socket accepts (the first stage
                # serves before it spawns).
                autostart = root / "supervisor" / "autostart.lock"
                eventually(
                    lambda: starter.pid not in _lock_holders(autostart),
                    what="the starter to let go of the auto-start lock",
                    interval=0.002,
                )
                starter.send_signal(signal.SIGSTOP)
            _kill9(found.supervisor)
            phase = _phase(root, found.child.pid)
            phases.append(phase)
            detail = f"{label}: landed {phase}"
            if paused:
                _check_locks_let_go(made, root, label)
                eventually(
                    lambda: _listening_or_gone(found),
                    what=f"the leftover child {found.child.pid} to listen",
                    timeout=60,
                )
                assert stand_in is not None
                detail += f"; doctor: child {_doctor(made, sup, found, stand_in.pid, label)}"
                answer = sup.cli_json("ensure", "--python", str(spec_kitty_python(version)))
                starter.send_signal(signal.SIGCONT)
                answered, said = _outcome(starter)
            else:
                answered, said = _outcome(starter)
                answer = sup.cli_json("ensure", "--python", str(spec_kitty_python(version)))
        finally:
            if starter.poll() is None:  # a trial that failed before it was waited for
                starter.send_signal(signal.SIGCONT)
                starter.kill()
                starter.communicate()
        strangers = set() if stand_in is None else {stand_in.pid}
        facts = settle_one_owner(made, root, label, ignore=strangers)
        current = facts.recorded.pid if facts.recorded is not None else None
        fate = _fate(made, found, current, label)
        print(f"{detail}; starter {said}; ensure answered {answer['action']}; child {fate}")
        made.note(f"{detail}; starter {said}; ensure answered {answer['action']}; child {fate}")
        if answer["daemon"]["pid"] != current:
            made.lost(
                1, f"{label}: the new ensure answered {answer['daemon']['pid']}, not {current}"
            )
        if answered is None:
            made.fail(f"{label}: the starter was not answered: {said}")
        elif answered != current:
            made.lost(1, f"{label}: the starter was answered {answered}, not {current}")
        strays = {
            p: pid for p, pid in _listeners_in_range().items() if pid not in {current, *strangers}
        }
        made.orphans(len(strays), f"{label}: unowned listeners in the spawn range {strays}")
        if stand_in is not None and (touched := stand_in.touched()):
            made.foreign(len(touched), f"{label}: the stand-in was touched: {touched}")


def test_a_supervisor_killed_before_its_early_child_is_journaled_leaves_one_daemon(
    tally: Callable[[str], Tally],
) -> None:
    made = tally("supervisor SIGKILL between the early spawn and the take-over")
    phases: list[str] = []
    trials = rounds(default=4)
    for number in range(trials):
        with made.trial():
            _trial(made, number, phases)
    tallied = {
        phase: phases.count(phase) for phase in (BEFORE_TAKE_OVER, WAITING_HEALTH, JOURNALED)
    }
    made.note(f"where the kills landed: {tallied}")
    print(f"\nearly-spawn kills landed: {tallied} over {trials} trials")
    in_window = tallied[BEFORE_TAKE_OVER] + tallied[WAITING_HEALTH]
    if 2 * in_window <= trials:
        made.fail(f"only {in_window} of {trials} kills landed in the window: {tallied}")

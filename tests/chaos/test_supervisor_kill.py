"""kill -9 of the supervisor at random moments, then a successor: nothing lost, nothing doubled.

Each trial is a fresh root with a supervisor doing one thing (idle, spawning, upgrading,
retiring the superseded daemon, sweeping orphans, handing over to a newer supervisor, a
successor re-adopting its predecessor's daemon at start-up). The
supervisor is SIGKILLed at a moment chosen at random among the observable stages of that work
(a daemon process appeared, the journal named it, ``R/sync-daemon`` named it, a ledger event,
or plain random jitter). Then a client asks, as any spec-kitty CLI would, which starts a
successor, and the root must settle: one supervisor, one daemon, ``R/sync-daemon`` and the
journal naming it; a daemon the dead supervisor had recorded is re-adopted (same pid), not
replaced; a daemon of another HOME in the range is never touched.

``CHAOS_SEED`` fixes the moments (the seed of each run is in the tally's notes).
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    SUPERVISOR,
    DaemonFleet,
    ProcessIdentity,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    is_alive,
    make_orphans,
    probe_health,
    read_identity,
    read_state_file,
    run_blocking,
    signal_if_same,
    spec_kitty_python,
)
from tests.chaos._facts import read_journal, settle_one_owner
from tests.chaos._tally import Tally, TrialFailed, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

OLD, NEW = "3.2.4", "3.2.7"


class SeededRandom(random.Random):
    """A random source that remembers its seed, so a run's moments can be replayed."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seed_value = seed


@pytest.fixture
def rng() -> SeededRandom:
    return SeededRandom(
        int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    )


def _seeded(made: Tally, rng: SeededRandom) -> None:
    made.note(f"moments drawn with CHAOS_SEED={rng.seed_value}")


def kill9(sup: SupervisorUnderTest, pid: int) -> None:
    """SIGKILL the supervisor ``pid`` by identity and wait until it is gone (reaped if ours)."""
    identity = sup.seen.get(pid) or read_identity(pid)
    if identity is None or not signal_if_same(identity, signal.SIGKILL):
        raise TrialFailed(f"supervisor {pid} was gone before the kill")
    # A zombie is dead to is_alive; the harness reaps its own children when it exits.
    eventually(lambda: not is_alive(identity), what=f"supervisor {pid} to die of SIGKILL")


def _ensure_in_background(sup: SupervisorUnderTest, version: str) -> subprocess.Popen[str]:
    python = str(spec_kitty_python(version))
    return subprocess.Popen(
        [*SUPERVISOR, "ensure", "--python", python, "--json", "--root", str(sup.root)],
        env=sup.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=sup.sandbox.home,
    )


def _ensure(sup: SupervisorUnderTest, version: str) -> dict[str, Any]:
    result = sup.cli("ensure", "--python", str(spec_kitty_python(version)), "--json")
    if result.returncode != 0:
        raise TrialFailed(f"ensure {version} exited {result.returncode}: {result.stderr[-400:]}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _caller_outcome(caller: subprocess.Popen[str]) -> str:
    out, err = caller.communicate(timeout=180)
    if caller.returncode == 0:
        answer = json.loads(out)
        return f"answered {answer['action']} pid {answer['daemon']['pid']}"
    return f"exit {caller.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"


def _journal_roles(root: Path) -> dict[int, str]:
    rows = read_journal(root)[0] or []
    return {int(row["pid"]): str(row.get("role")) for row in rows if "pid" in row}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _ledger_events(root: Path) -> list[str]:
    try:
        lines = (root / "supervisor" / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            found.append(str(json.loads(line).get("kind")))
        except (ValueError, AttributeError):
            continue
    return found


def _wait_for_stage(
    rng: random.Random, stages: dict[str, Callable[[], object]], *, jitter: bool = True
) -> str:
    """Wait for a stage chosen at random (or random jitter), and return its name."""
    name = rng.choice([*stages, "jitter"] if jitter else [*stages])
    if name == "jitter":
        # The moment itself is the fault here, not a wait for something to happen.
        time.sleep(rng.uniform(0, 0.5))
    else:
        eventually(stages[name], what=f"stage {name}", interval=0.005)
    return name


def _settle_after(
    made: Tally,
    sup: SupervisorUnderTest,
    label: str,
    *,
    version: str,
    keep: ProcessIdentity | None = None,
) -> None:
    """A client asks (starting a successor); the root must settle; ``keep`` must be re-adopted."""
    answer = _ensure(sup, version)
    facts = settle_one_owner(made, sup.root, label)
    current = facts.recorded.pid if facts.recorded is not None else None
    if answer["daemon"]["pid"] != current:
        made.lost(1, f"{label}: the ensure answered pid {answer['daemon']['pid']}, not {current}")
    if keep is not None and is_alive(keep) and current != keep.pid:
        made.lost(1, f"{label}: daemon {keep.pid} survived but was not re-adopted ({current} is)")
    if keep is not None and not is_alive(keep) and keep.pid in daemon_pids(sup.root):
        made.lost(1, f"{label}: daemon {keep.pid} was replaced by a reused pid")


def _kill_at_random(
    made: Tally,
    rng: random.Random,
    fleet: DaemonFleet,
    moment: str,
) -> None:
    """One trial of ``moment``; see the module docstring."""
    with SupervisorUnderTest(fleet.sandbox()) as sup:
        first = sup.start()
        root = sup.root
        keep: ProcessIdentity | None = None
        version = NEW
        if moment == "idle":
            daemon = _ensure(sup, OLD)["daemon"]
            keep, version = read_identity(daemon["pid"]), OLD
            stage = "idle"
            kill9(sup, first)
        elif moment == "spawning":
            caller = _ensure_in_background(sup, NEW)
            stage = _wait_for_stage(
                rng,
                {
                    "daemon process started": lambda: daemon_pids(root),
                    "journaled": lambda: _journal_roles(root),
                    "R/sync-daemon written": lambda: read_state_file(root),
                },
            )
            kill9(sup, first)
            made.note(f"spawning/{stage}: the caller {_caller_outcome(caller)}")
        elif moment in ("upgrading", "retiring the superseded daemon"):
            old = _ensure(sup, OLD)["daemon"]["pid"]
            old_identity = read_identity(old)
            if moment == "retiring the superseded daemon":
                # Stopped, it answers no shutdown request: its retirement lasts the stop grace,
                # a window the kill can land in (and the successor must finish it).
                assert old_identity is not None
                signal_if_same(old_identity, signal.SIGSTOP)
            caller = _ensure_in_background(sup, NEW)
            if moment == "upgrading":
                stages: dict[str, Callable[[], object]] = {
                    "new daemon started": lambda: len(daemon_pids(root)) > 1,
                    "new daemon journaled": lambda: len(_journal_roles(root)) > 1,
                    "R/sync-daemon names the new one": lambda: (
                        (record := read_state_file(root)) is not None and record.pid != old
                    ),
                }
            else:
                stages = {
                    "old daemon journaled retiring": lambda: (
                        _journal_roles(root).get(old) == "retiring"
                    )
                }
            # The stopped old daemon stays stopped: finishing its retirement is the successor's
            # job (SIGTERM with SIGCONT); one left over counts as an orphan.
            stage = _wait_for_stage(rng, stages, jitter=moment == "upgrading")
            kill9(sup, first)
            made.note(f"{moment}/{stage}: the caller {_caller_outcome(caller)}")
        elif moment == "handing over":
            keep = read_identity(_ensure(sup, OLD)["daemon"]["pid"])
            version = OLD
            second = sup.start("--takeover", wait=False)
            victim, stage = rng.choice(
                [
                    (first, "old supervisor recorded the handover"),
                    (second, "old supervisor gone, new one taking the root"),
                    (first, "jitter"),
                ]
            )
            if stage.startswith("old supervisor recorded"):
                eventually(lambda: "handover" in _ledger_events(root), what=stage, interval=0.005)
            elif stage.startswith("old supervisor gone"):
                identity = sup.seen[first]
                eventually(lambda: not is_alive(identity), what=stage, interval=0.005)
            else:
                time.sleep(rng.uniform(0, 0.5))
            if victim == first and not is_alive(sup.seen[first]):
                stage += " (it had exited already: the new one was killed)"
                victim = second
            kill9(sup, victim)
        elif moment == "re-adopting at start-up":
            keep = read_identity(_ensure(sup, OLD)["daemon"]["pid"])
            version = OLD
            kill9(sup, first)
            second = sup.start(wait=False)
            stage = _wait_for_stage(
                rng,
                {
                    "the successor holds the lock": lambda: (
                        _read(root / "supervisor" / "supervisor.lock").strip() == str(second)
                    ),
                    "the successor rewrote the journal": lambda: (
                        f'"supervisor_pid": {second}' in _read(root / "supervisor" / "state.json")
                    ),
                },
            )
            kill9(sup, second)
        else:
            raise ValueError(moment)
        made.note(f"{moment}: killed at {stage}")
        _settle_after(made, sup, f"{moment}/{stage}", version=version, keep=keep)


MOMENTS = [
    "idle",
    "spawning",
    "upgrading",
    "retiring the superseded daemon",
    "handing over",
    "re-adopting at start-up",
]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_supervisor_killed_at_a_random_moment_is_succeeded_cleanly(
    tally: Callable[[str], Tally], rng: SeededRandom, fleet: DaemonFleet, moment: str
) -> None:
    made = tally(f"supervisor SIGKILL: {moment}")
    _seeded(made, rng)
    for _ in range(rounds()):
        with made.trial():
            _kill_at_random(made, rng, fleet, moment)


def _kill_while_sweeping(made: Tally, rng: random.Random, fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox()
    foreign = fleet.spawn(fleet.sandbox(), OLD, sync=True)
    # The releases whose sync service runs offline (so that none retires by itself).
    orphans = run_blocking(functools.partial(make_orphans, sandbox, count=4, fleet=fleet))
    with SupervisorUnderTest(sandbox) as sup:
        first = sup.start(wait=False)
        stage = _wait_for_stage(
            rng,
            {
                "first orphan swept": lambda: sum(o.exited() for o in orphans) >= 1,
                "half swept": lambda: sum(o.exited() for o in orphans) >= 2,
            },
        )
        swept_before = sum(o.exited() for o in orphans)
        kill9(sup, first)
        made.note(f"sweeping: killed at {stage} ({swept_before} of 4 gone)")
        _settle_after(made, sup, f"sweeping/{stage}", version=NEW)
    if not is_alive(foreign.identity):
        made.foreign(1, f"another HOME's daemon {foreign.pid} was stopped")
    elif run_blocking(probe_health, foreign.port, 5.0) is None:
        made.foreign(1, f"another HOME's daemon {foreign.pid} no longer answers")


def test_a_supervisor_killed_while_sweeping_orphans_leaves_none_and_no_foreign_harm(
    tally: Callable[[str], Tally], rng: SeededRandom, fleet: DaemonFleet
) -> None:
    made = tally("supervisor SIGKILL: sweeping orphans")
    _seeded(made, rng)
    for _ in range(rounds()):
        with made.trial():
            _kill_while_sweeping(made, rng, fleet)

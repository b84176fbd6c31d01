"""What is true of one daemon root, read from the kernel and the files, and judged into a tally.

Processes are found by what they are (a supervisor's argv naming the root, a daemon's root
marker; ``sks_harness.supervisor_pids`` / ``daemon_pids``) and named by identity (pid and
process start), so a pid reused while the suite looked is never mistaken for the process it
saw. The supervisor's status answer is never consulted: only the processes and the files a
next supervisor or an upstream CLI would read (``R/supervisor/state.json``, ``R/sync-daemon``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sks_harness import (
    DEFAULT_TIMEOUT,
    ProcessIdentity,
    StateRecord,
    daemon_pids,
    eventually,
    read_identity,
    read_state_file,
    supervisor_pids,
)

from ._tally import Tally

__all__ = ["RootFacts", "observe", "read_journal", "settle_one_owner"]


def _identities(pids: list[int], ignore: Collection[int] = ()) -> list[ProcessIdentity]:
    found = [read_identity(pid) for pid in pids if pid not in ignore]
    return [identity for identity in found if identity is not None]


@dataclass
class RootFacts:
    """One look at a root: its live supervisors and daemons, ``R/sync-daemon``, the journal."""

    root: Path
    supervisors: list[ProcessIdentity]
    daemons: list[ProcessIdentity]
    recorded: StateRecord | None
    journal: list[dict[str, Any]] | None
    journal_problem: str | None = None
    problems: list[str] = field(default_factory=list)

    def daemon(self, pid: int) -> ProcessIdentity | None:
        return next((d for d in self.daemons if d.pid == pid), None)

    def describe(self) -> str:
        rows = (
            [(r.get("pid"), r.get("role"), r.get("state")) for r in self.journal]
            if self.journal is not None
            else self.journal_problem
        )
        return (
            f"supervisors {[s.pid for s in self.supervisors]}, "
            f"daemons {[d.pid for d in self.daemons]}, "
            f"R/sync-daemon pid {self.recorded.pid if self.recorded else None}, journal {rows}"
        )


def read_journal(root: Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The journal's rows (``[]`` when there is no journal), or None and what is wrong."""
    path = root / "supervisor" / "state.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return [], None
    except (OSError, ValueError) as exc:
        return None, f"state.json unreadable: {exc!r}"
    rows = document.get("daemons") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return None, f"state.json has no list of daemons: {str(document)[:200]}"
    return rows, None


def observe(root: Path, *, ignore: Collection[int] = ()) -> RootFacts:
    """Look once; :func:`settle_one_owner` looks again until the look is consistent.

    ``ignore`` names pids that only look like daemons of the root (stand-ins in disguise).
    """
    journal, problem = read_journal(root)
    return RootFacts(
        root=root,
        supervisors=_identities(supervisor_pids(root)),
        daemons=_identities(daemon_pids(root), ignore),
        recorded=read_state_file(root),
        journal=journal,
        journal_problem=problem,
    )


def _judge_one_owner(facts: RootFacts, *, supervisor_expected: bool) -> RootFacts:
    """Fill ``facts.problems`` with every way the root differs from its promised settled state:
    one supervisor (or none), one daemon, ``R/sync-daemon`` naming it, the journal naming it
    (pid and process start) as its only row."""
    problems = facts.problems
    problems.clear()
    if supervisor_expected and len(facts.supervisors) != 1:
        problems.append(f"{len(facts.supervisors)} supervisors")
    if not supervisor_expected and facts.supervisors:
        problems.append(f"{len(facts.supervisors)} supervisors where none should run")
    if len(facts.daemons) != 1:
        problems.append(f"{len(facts.daemons)} daemons")
    recorded = facts.recorded
    current = facts.daemon(recorded.pid) if recorded is not None else None
    if current is None:
        problems.append("R/sync-daemon names no live daemon of the root")
    if facts.journal is None:
        problems.append(facts.journal_problem or "journal unreadable")
    elif current is not None:
        rows = [r for r in facts.journal if r.get("pid") == current.pid]
        if not rows or rows[0].get("process_start") != current.start:
            problems.append(f"the journal has no row for the current daemon {current.pid}")
        if len(facts.journal) != 1:
            problems.append(f"the journal has {len(facts.journal)} rows")
    return facts


def settle_one_owner(
    tally: Tally,
    root: Path,
    label: str,
    *,
    supervisor_expected: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    ignore: Collection[int] = (),
) -> RootFacts:
    """Wait until the root is settled as promised, then count what is still wrong.

    Settled: exactly one supervisor (none with ``supervisor_expected=False``), exactly one
    daemon process of the root, ``R/sync-daemon`` naming it, and the journal naming it (pid
    and process start) as its only row. When that never comes within ``timeout``, the last
    look is counted: daemons beyond the recorded one are ``orphans_left``, supervisors beyond
    one are ``duplicates``, files that do not describe the live daemon are
    ``lost_or_corrupted_state``; a missing daemon or supervisor is a failure.
    """
    last: list[RootFacts] = []

    def settled() -> bool:
        facts = _judge_one_owner(
            observe(root, ignore=ignore), supervisor_expected=supervisor_expected
        )
        last[:] = [facts]
        return not facts.problems

    with contextlib.suppress(AssertionError):
        eventually(settled, what=f"{root} to settle with one owner", timeout=timeout)
    facts = last[0]
    if not facts.problems:
        return facts
    where = f"{label}: {', '.join(facts.problems)} ({facts.describe()})"
    if len(facts.supervisors) > 1:
        tally.duplicate(len(facts.supervisors) - 1, where)
    recorded_pid = facts.recorded.pid if facts.recorded is not None else None
    unowned = [d for d in facts.daemons if d.pid != recorded_pid]
    if facts.daemon(recorded_pid or -1) is None and unowned:
        unowned = unowned[1:]  # the one nobody recorded is lost state (below), not an orphan
    tally.orphans(len(unowned), where)
    state_problems = [
        p for p in facts.problems if "journal" in p or "R/sync-daemon" in p or "state.json" in p
    ]
    tally.lost(len(state_problems), where)
    if not facts.daemons or (supervisor_expected and not facts.supervisors):
        tally.fail(where)
    return facts

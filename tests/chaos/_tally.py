"""The chaos suite's bookkeeping: one tally per fault class, counted from what processes did.

A fault class (``"supervisor SIGKILL while spawning"``) repeats its fault ``rounds()`` times.
Each repetition is a :meth:`Tally.trial`; inside it the test injects the fault, lets the
supervisor recover, then looks at the processes and files themselves (never at what the
supervisor says about itself) and counts what broke a promise:

- ``failures``: a trial that raised (a caller not answered, a 500, a recovery that never came);
- ``orphans_left``: a daemon process of the root alive after recovery that nobody owns;
- ``duplicates``: two supervisors of one root alive at once, or two daemons where one belongs;
- ``foreign_signals``: a signal received by a process that is not the supervisor's (a stand-in
  that records what it receives, see ``_standin.py``), or a foreign process that died;
- ``lost_or_corrupted_state``: a journal, ``R/sync-daemon`` or ledger that no longer describes
  the live processes, or that cannot be read.

A tally with any of those non-zero fails its test with the details (the conftest's
``pytest_runtest_call`` wrapper calls :meth:`Tally.check`). Every tally of the session is
written as JSON to ``$CHAOS_REPORT`` when that is set; ``python -m scripts.reliability_report``
turns the file into docs/reliability.md's table.

``CHAOS_ROUNDS`` (default :data:`DEFAULT_ROUNDS`, small so that CI runs tests/chaos/ well
within 10 minutes on a busy 2-core machine) sets how many rounds each class runs; ``make
chaos`` sets more.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["COUNTERS", "DEFAULT_ROUNDS", "Tally", "TrialFailed", "rounds", "write_report"]

#: Rounds per fault class when ``CHAOS_ROUNDS`` is not set (CI).
DEFAULT_ROUNDS = 2
#: The counters that break a promise when non-zero (``trials`` only counts).
COUNTERS = (
    "failures",
    "orphans_left",
    "duplicates",
    "foreign_signals",
    "lost_or_corrupted_state",
)
#: Details kept per tally; a class that breaks every trial need not print every one.
_MAX_DETAILS = 40


def rounds(default: int = DEFAULT_ROUNDS) -> int:
    """Rounds for one fault class: ``CHAOS_ROUNDS`` when set, else ``default``.

    A class whose single round is costly may pass a smaller ``default``; ``CHAOS_ROUNDS``
    always wins, so ``make chaos`` scales every class alike.
    """
    configured = os.environ.get("CHAOS_ROUNDS", "").strip()
    if not configured:
        return default
    value = int(configured)
    if value < 1:
        raise ValueError(f"CHAOS_ROUNDS must be a positive integer, not {configured!r}")
    return value


class TrialFailed(AssertionError):
    """Raised inside a trial to count it as a failure with a message, without a traceback."""


@dataclass
class Tally:
    """What one fault class did over its trials; counters, details and free-form notes."""

    fault: str
    test: str = ""
    trials: int = 0
    failures: int = 0
    orphans_left: int = 0
    duplicates: int = 0
    foreign_signals: int = 0
    lost_or_corrupted_state: int = 0
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    #: Set by the conftest once the test ran: passed, failed, xfailed, ...
    outcome: str | None = None

    # -- counting ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def trial(self, label: str = "") -> Iterator[None]:
        """One repetition of the fault. An exception inside counts one failure and is kept.

        ``Exception`` only: a KeyboardInterrupt or pytest's own exits still stop the test.
        The trial after a failed one still runs, so a tally tells how often, not only whether.
        """
        self.trials += 1
        try:
            yield
        except TrialFailed as exc:
            self._count("failures", 1, f"trial {self.trials} {label}: {exc}".strip())
        except Exception as exc:
            what = "".join(traceback.format_exception_only(exc)).strip()
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            self._count("failures", 1, f"trial {self.trials} {label}: {what}{where}")

    def orphans(self, count: int, detail: str) -> None:
        """``count`` daemon processes were left alive with no owner (0 records nothing)."""
        self._count("orphans_left", count, detail)

    def duplicate(self, count: int, detail: str) -> None:
        """``count`` processes too many were alive at once where exactly one belongs."""
        self._count("duplicates", count, detail)

    def foreign(self, count: int, detail: str) -> None:
        """``count`` signals reached (or deaths struck) processes that are not ours."""
        self._count("foreign_signals", count, detail)

    def lost(self, count: int, detail: str) -> None:
        """``count`` pieces of state were lost or no longer describe the live processes."""
        self._count("lost_or_corrupted_state", count, detail)

    def fail(self, detail: str) -> None:
        """A failure noticed outside an exception (a 500 answered, a caller without answer)."""
        self._count("failures", 1, detail)

    def note(self, text: str) -> None:
        """Free-form context for the report (what was observed, not a verdict)."""
        self.notes.append(text)

    def _count(self, counter: str, count: int, detail: str) -> None:
        if count < 0:
            raise ValueError(f"{counter} cannot grow by {count}")
        if count == 0:
            return
        setattr(self, counter, getattr(self, counter) + count)
        if len(self.details) < _MAX_DETAILS:
            self.details.append(f"[{counter} +{count}] {detail}")
        elif len(self.details) == _MAX_DETAILS:
            self.details.append("... (more details left out)")

    # -- verdict -------------------------------------------------------------------------------
    def broken(self) -> dict[str, int]:
        """The promise-breaking counters that are not zero."""
        return {name: getattr(self, name) for name in COUNTERS if getattr(self, name)}

    def check(self) -> None:
        """Raise AssertionError naming every broken counter and its details; also on 0 trials."""
        if self.trials == 0:
            raise AssertionError(f"{self.fault}: no trial ran, so nothing was proven")
        broken = self.broken()
        if broken:
            counters = ", ".join(f"{name}={value}" for name, value in broken.items())
            raise AssertionError(
                f"{self.fault}: {counters} in {self.trials} trials\n" + "\n".join(self.details)
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_report(path: Path, tallies: list[Tally], meta: dict[str, Any]) -> None:
    """Every tally of the session and the run's context, as one JSON document."""
    document = {"meta": meta, "tallies": [tally.to_json() for tally in tallies]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)

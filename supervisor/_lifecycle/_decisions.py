"""The lifecycle's verdicts: pure functions over facts, a clock reading and the rules.

Each step of the lifecycle observes, asks one of these what to do, writes the intent, acts
and records the outcome. Keeping the verdicts here, apart from every effect, is what lets the
rules (restart or quarantine, watchdog or idle retirement, retired or died) be read in one
place and tested with plain values.

Pure: standard library and other pure modules only, no I/O (a wall: tests/unit/test_walls.py).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .._policy import (
    deaths_within,
    idle_retirement_due,
    restart_delay,
    should_quarantine,
    watchdog_expired,
)

__all__ = [
    "CurrentVerdict",
    "ExitVerdict",
    "Quarantine",
    "Restart",
    "Rules",
    "after_death",
    "classify_exit",
    "decide_current",
    "describe_exit",
    "nothing_to_sweep",
    "quarantine_lifts_for",
]


@dataclass(frozen=True)
class Rules:
    """The settings the verdicts read (``Settings`` without the I/O tunables)."""

    restart_backoff_seconds: float = 1.0
    restart_backoff_max_seconds: float = 30.0
    quarantine_deaths: int = 5
    quarantine_window_seconds: float = 300.0
    watchdog_seconds: float = 60.0
    idle_retirement_seconds: float = 900.0


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown (adopted daemon)"
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


ExitVerdict = Literal["retired", "died"]


def classify_exit(returncode: int | None, owner_record_names_it: bool) -> ExitVerdict:
    """A daemon that exits 0 by itself has retired (its own idle rule, or "superseded").

    An adopted daemon is not our child, so its status is unknown: a clean exit removes the
    owner record that names it, so an owner record still naming it means it died (ADR 0002).
    """
    if returncode == 0 or (returncode is None and not owner_record_names_it):
        return "retired"
    return "died"


@dataclass(frozen=True)
class Restart:
    delay: float
    deaths: int


@dataclass(frozen=True)
class Quarantine:
    reason: str


def after_death(
    death_times: Sequence[float],
    now: float,
    rules: Rules,
    cause: str,
    rng: random.Random | None = None,
) -> Restart | Quarantine:
    """Restart after a backoff, or quarantine the root after too many deaths in the window.

    ``death_times`` already holds this death.
    """
    window = rules.quarantine_window_seconds
    deaths = deaths_within(death_times, now, window)
    if should_quarantine(death_times, now, window, rules.quarantine_deaths):
        return Quarantine(f"{deaths} deaths in {window:.0f} s; last: {cause}")
    delay = restart_delay(
        deaths, rules.restart_backoff_seconds, rules.restart_backoff_max_seconds, rng
    )
    return Restart(delay=delay, deaths=deaths)


@dataclass(frozen=True)
class CurrentVerdict:
    action: Literal["keep", "restart_wedged", "retire_idle"]
    reason: str = ""


def decide_current(
    unresponsive_since: float | None, last_ensure_at: float | None, now: float, rules: Rules
) -> CurrentVerdict:
    """What a heartbeat does with the current daemon: the watchdog first, then idleness."""
    if watchdog_expired(unresponsive_since, now, rules.watchdog_seconds):
        return CurrentVerdict(
            "restart_wedged", f"no health answer for {rules.watchdog_seconds:.0f} s; restarting"
        )
    if idle_retirement_due(last_ensure_at, now, rules.idle_retirement_seconds):
        return CurrentVerdict(
            "retire_idle", f"idle: no ensure for {rules.idle_retirement_seconds:.0f} s"
        )
    return CurrentVerdict("keep")


def quarantine_lifts_for(quarantined_python: str | None, requested_python: str) -> bool:
    """An ensure with another interpreter than the one that kept dying lifts the quarantine."""
    return quarantined_python is not None and requested_python != quarantined_python


#: Heartbeats in a row a daemon may miss before an ``ensure`` that asks for it doubts it. One
#: miss is what a single-threaded daemon busy for a moment looks like; two are not.
DOUBT_AFTER_MISSED_HEARTBEATS = 2


def ensure_verdict_for_current(
    missed_heartbeats: int, answers_now: bool | None
) -> Literal["serve", "probe", "replace"]:
    """What an ``ensure`` that would be served by the current daemon does with it.

    ``answers_now`` is None before the ensure's own probe, then whether that probe got the
    daemon's health with its token. A daemon nobody asks for is left to the watchdog.
    """
    if missed_heartbeats < DOUBT_AFTER_MISSED_HEARTBEATS:
        return "serve"
    if answers_now is None:
        return "probe"
    return "serve" if answers_now else "replace"


def nothing_to_sweep(listening: Mapping[int, int] | None, own_ports: Collection[int]) -> bool:
    """Whether the kernel's listen table alone says a sweep has nothing to stop: nothing
    listens in the range but the supervisor's own daemons (``own_ports``, the table's).

    ``listening`` is port → uid (``_listen_table.linux_listen_uids``); None (the table could
    not be read) says nothing, and the doctor's look decides. The supervisor's own daemons
    are never swept, so a root whose only listener is its current daemon (every warm root,
    and every start after an early spawn's take-over, docs/adr/0020) needs no doctor.
    """
    return listening is not None and set(listening) <= set(own_ports)

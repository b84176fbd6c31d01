"""Lifecycle policy: pure decisions over facts and a clock, with no process or file in sight.

The reconcile loop asks these functions what to do and then does it; keeping them pure is what
lets every rule be tested exhaustively without sleeping or spawning.

Pure: standard library only, no I/O (a wall: tests/unit/test_walls.py).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: As ``spec_kitty_supervisor_client.VersionPolicy``, spelled here so that this module needs
#: only the standard library.
VersionPolicy = Literal["keep_newer", "latest_wins"]

__all__ = [
    "EnsureDecision",
    "VersionPolicy",
    "compare_versions",
    "decide_ensure",
    "idle_retirement_due",
    "restart_delay",
    "should_quarantine",
    "supervisor_idle_exit_due",
    "watchdog_expired",
]

_VERSION_PART = re.compile(r"(\d+)|([A-Za-z]+)")


@functools.lru_cache(maxsize=256)  # every warm ensure compares the same two versions
def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    # Numbers compare numerically; a pre-release tag ("rc", "a") sorts before the release.
    parts: list[tuple[int, int | str]] = []
    for number, word in _VERSION_PART.findall(version):
        parts.append((1, int(number)) if number else (0, word.lower()))
    # A final release outranks its own pre-releases: "~" sorts after every tag letter.
    parts.append((0, "~"))
    return tuple(parts)


def compare_versions(left: str, right: str) -> int:
    """-1, 0 or 1 as ``left`` is older than, equal to or newer than ``right``."""
    a, b = _version_key(left), _version_key(right)
    return (a > b) - (a < b)


EnsureVerdict = Literal["reuse", "spawn", "upgrade", "keep_newer", "replace"]


@dataclass(frozen=True)
class EnsureDecision:
    verdict: EnsureVerdict
    reason: str


def decide_ensure(
    current_version: str | None,
    current_python: str | None,
    requested_version: str,
    requested_python: str,
    policy: VersionPolicy,
) -> EnsureDecision:
    """What an ``ensure`` does, given the current daemon (None when there is none).

    Same version, any interpreter: reuse. The package version is the whole protocol contract
    between a CLI and its daemon (upstream CLIs reuse on version alone), and restarting the
    daemon because another venv of the same release asked would be a spawn/kill cycle for
    nothing.
    """
    if current_version is None:
        return EnsureDecision("spawn", "no current daemon")
    order = compare_versions(requested_version, current_version)
    if order == 0:
        if current_python == requested_python:
            return EnsureDecision("reuse", "same version and interpreter")
        return EnsureDecision(
            "reuse", f"same version {current_version} from another interpreter ({current_python})"
        )
    if order > 0:
        return EnsureDecision(
            "upgrade", f"requested {requested_version} is newer than {current_version}"
        )
    if policy == "latest_wins":
        return EnsureDecision(
            "replace",
            f"requested {requested_version} is older than {current_version}; "
            "version_policy=latest_wins replaces it",
        )
    return EnsureDecision(
        "keep_newer",
        f"requested {requested_version} is older than {current_version}; keeping the newer daemon",
    )


def restart_delay(
    deaths_in_window: int,
    base_seconds: float,
    max_seconds: float,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with ±20 % jitter: base, 2·base, 4·base, ... capped at ``max_seconds``.

    Jitter keeps several roots whose daemons died together (a suspend, an OOM sweep) from
    restarting in lock-step.
    """
    if deaths_in_window <= 0:
        return 0.0
    delay = min(max_seconds, base_seconds * 2.0 ** (deaths_in_window - 1))
    spread: float = (rng or random).uniform(-0.2, 0.2)
    return max(0.0, min(max_seconds, delay * (1 + spread)))


def deaths_within(death_times: Sequence[float], now: float, window_seconds: float) -> int:
    return sum(1 for t in death_times if now - t <= window_seconds)


def should_quarantine(
    death_times: Sequence[float], now: float, window_seconds: float, max_deaths: int
) -> bool:
    """More than ``max_deaths`` deaths inside the window: stop restarting."""
    return deaths_within(death_times, now, window_seconds) >= max_deaths


def idle_retirement_due(last_ensure_at: float | None, now: float, idle_seconds: float) -> bool:
    return last_ensure_at is not None and now - last_ensure_at >= idle_seconds


def watchdog_expired(unresponsive_since: float | None, now: float, watchdog_seconds: float) -> bool:
    return unresponsive_since is not None and now - unresponsive_since >= watchdog_seconds


def supervisor_idle_exit_due(
    *,
    auto_started: bool,
    daemons: int,
    open_connections: int,
    last_activity: float,
    now: float,
    idle_exit_seconds: float,
) -> bool:
    """An auto-started supervisor with nothing to own and nobody asking goes away by itself."""
    return (
        auto_started
        and daemons == 0
        and open_connections == 0
        and now - last_activity >= idle_exit_seconds
    )

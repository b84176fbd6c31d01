from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spec_kitty_supervisor._policy import (
    compare_versions,
    decide_ensure,
    idle_retirement_due,
    restart_delay,
    should_quarantine,
    supervisor_idle_exit_due,
    watchdog_expired,
)


@pytest.mark.parametrize(
    ("left", "right", "order"),
    [
        ("3.2.4", "3.2.4", 0),
        ("3.2.7", "3.2.4", 1),
        ("3.2.10", "3.2.9", 1),
        ("3.2.4", "3.10.0", -1),
        ("3.3.0rc1", "3.3.0", -1),
        ("3.3.0", "3.3.0rc1", 1),
    ],
)
def test_versions_compare_numerically(left: str, right: str, order: int) -> None:
    assert compare_versions(left, right) == order


def test_no_current_daemon_spawns() -> None:
    assert decide_ensure(None, None, "3.2.4", "/v/bin/python", "keep_newer").verdict == "spawn"


def test_same_version_same_interpreter_reuses() -> None:
    decision = decide_ensure("3.2.4", "/v/bin/python", "3.2.4", "/v/bin/python", "keep_newer")
    assert decision.verdict == "reuse"


def test_same_version_other_interpreter_reuses_and_says_so() -> None:
    decision = decide_ensure("3.2.4", "/a/bin/python", "3.2.4", "/b/bin/python", "keep_newer")
    assert decision.verdict == "reuse"
    assert "/a/bin/python" in decision.reason


def test_newer_client_upgrades() -> None:
    assert decide_ensure("3.2.4", "/a", "3.2.7", "/b", "keep_newer").verdict == "upgrade"


def test_older_client_keeps_the_newer_daemon_by_default() -> None:
    assert decide_ensure("3.2.7", "/b", "3.2.4", "/a", "keep_newer").verdict == "keep_newer"


def test_older_client_replaces_under_latest_wins() -> None:
    assert decide_ensure("3.2.7", "/b", "3.2.4", "/a", "latest_wins").verdict == "replace"


def test_alternating_clients_never_thrash_under_keep_newer() -> None:
    current = "3.2.4"
    spawns = 0
    for requested in ["3.2.7", "3.2.4"] * 10:
        verdict = decide_ensure(current, "/p", requested, "/p", "keep_newer").verdict
        if verdict in ("spawn", "upgrade", "replace"):
            spawns += 1
            current = requested
    assert spawns == 1
    assert current == "3.2.7"


def test_restart_delay_grows_exponentially_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [restart_delay(n, 1.0, 30.0, rng) for n in range(1, 9)]
    assert 0.8 <= delays[0] <= 1.2
    assert 1.6 <= delays[1] <= 2.4
    assert 3.2 <= delays[2] <= 4.8
    assert all(d <= 30.0 for d in delays)
    assert delays[-1] >= 24.0


@given(st.integers(min_value=-3, max_value=60), st.floats(0, 10), st.floats(0, 120))
def test_restart_delay_is_never_negative_nor_above_the_cap(n: int, base: float, cap: float) -> None:
    delay = restart_delay(n, base, cap, random.Random(n))
    assert 0.0 <= delay <= max(cap, 0.0)


def test_quarantine_counts_only_deaths_inside_the_window() -> None:
    deaths = [0.0, 100.0, 200.0, 250.0, 290.0]
    assert should_quarantine(deaths, now=300.0, window_seconds=300.0, max_deaths=5)
    assert not should_quarantine(deaths, now=301.0, window_seconds=300.0, max_deaths=5)


def test_idle_retirement_and_watchdog_deadlines() -> None:
    assert not idle_retirement_due(None, 10_000.0, 900.0)
    assert not idle_retirement_due(100.0, 999.0, 900.0)
    assert idle_retirement_due(100.0, 1000.0, 900.0)
    assert not watchdog_expired(None, 1e9, 60.0)
    assert watchdog_expired(10.0, 70.0, 60.0)


def test_only_an_auto_started_idle_supervisor_exits() -> None:
    base = dict(
        daemons=0, open_connections=0, last_activity=0.0, now=2000.0, idle_exit_seconds=1800
    )
    assert supervisor_idle_exit_due(auto_started=True, **base)  # type: ignore[arg-type]
    assert not supervisor_idle_exit_due(auto_started=False, **base)  # type: ignore[arg-type]
    assert not supervisor_idle_exit_due(
        auto_started=True,
        daemons=1,
        open_connections=0,
        last_activity=0.0,
        now=2000.0,
        idle_exit_seconds=1800,
    )
    assert not supervisor_idle_exit_due(
        auto_started=True,
        daemons=0,
        open_connections=1,
        last_activity=0.0,
        now=2000.0,
        idle_exit_seconds=1800,
    )

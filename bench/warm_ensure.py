"""Warm ensure: asking for the root's daemon when a healthy one already runs.

Upstream: ``ensure_sync_daemon_running()`` of 3.2.4, in-process in its own venv, against the
daemon it spawned itself (lock, state file, health probe over HTTP, every call).
Ours: ``SupervisorClient(root).ensure(python, "3.2.4")`` on one kept-alive connection to a
running supervisor that owns a healthy daemon (answered from its heartbeat-fresh table).
Both sides time each call inside one process, imports excluded; the first call of each
process is dropped (connection set-up, lazy imports), and the rounds alternate sides.
Under load upstream's own health check sometimes gives up on its daemon and starts another
during a round: that round is not a warm path, so it is kept in the JSON
(``upstream_rounds_that_replaced_their_daemon_s``), left out of the figures, and run again.
"""

from __future__ import annotations

import os
import time

from sks_harness import read_state_file, run_upstream_ensure, spec_kitty_python

from ._common import (
    CLIENT_VERSION,
    BenchContext,
    BenchError,
    Row,
    percentile,
    run_ours_ensure,
    speedup_row,
)

NAME = "warm_ensure"
#: Issue 16's bar (the first round's was 3x).
MIN_P50_RATIO = 5.0
MAX_P99_MS = 1.0
#: Rounds in which upstream replaced its own daemon (run again, reported apart) before the
#: benchmark gives up.
MAX_REPLACED_ROUNDS = 3
#: Let the new daemon start its sync service before timing calls against it.
SETTLE_SECONDS = 2.0


def run(context: BenchContext) -> list[Row]:
    iterations = 2000 if context.full else 500
    rounds = 5 if context.full else 3
    python = spec_kitty_python(CLIENT_VERSION)

    load_at_start = list(os.getloadavg())
    upstream_sandbox = context.sandbox()
    first = run_upstream_ensure(upstream_sandbox, CLIENT_VERSION)
    if not first.started or first.state is None:
        raise BenchError(f"upstream did not start a daemon: {first.skipped_reason}")
    ours_sandbox = context.sandbox()
    upstream: list[float] = []
    ours: list[float] = []
    replaced: list[list[float]] = []
    with context.supervisors(ours_sandbox) as sut:
        sut.start()
        spawned = run_ours_ensure(sut, python, CLIENT_VERSION, 1)
        if spawned.actions != ("spawned",):
            raise BenchError(f"our first ensure did {spawned.actions}, not a spawn")
        time.sleep(SETTLE_SECONDS)
        warm_pid = first.state.pid
        for _ in range(rounds):
            while True:
                warm = run_upstream_ensure(upstream_sandbox, CLIENT_VERSION, repeat=iterations + 1)
                state = read_state_file(upstream_sandbox.root)
                if state is not None and state.pid == warm_pid and warm.pid == warm_pid:
                    break
                # Upstream's own health check gave up on its daemon (it happens under load)
                # and started another: those calls include a cold spawn, not the warm path.
                # Kept in the JSON and counted, not in the figures; the round is run again.
                replaced.append(list(warm.timings_s))
                if len(replaced) > MAX_REPLACED_ROUNDS or state is None:
                    raise BenchError("upstream's warm ensure keeps replacing its daemon")
                warm_pid = state.pid
            upstream.extend(warm.timings_s[1:])
            answer = run_ours_ensure(sut, python, CLIENT_VERSION, iterations + 1)
            if set(answer.actions) != {"reused"} or answer.pid != spawned.pid:
                raise BenchError(f"our warm ensure did {set(answer.actions)}: not a warm path")
            ours.extend(answer.timings_s[1:])

    upstream_p90 = percentile(upstream, 0.9) * 1e3
    ours_p90 = percentile(ours, 0.9) * 1e3
    details = {
        "samples_per_side": len(ours),
        "rounds": rounds,
        "version": CLIENT_VERSION,
        "upstream_p90_ms": upstream_p90,
        "ours_p90_ms": ours_p90,
        "upstream_p99_ms": percentile(upstream, 0.99) * 1e3,
        "ours_p99_ms": percentile(ours, 0.99) * 1e3,
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": list(os.getloadavg()),
        "upstream_samples_s": upstream,
        "upstream_rounds_that_replaced_their_daemon_s": replaced,
        "ours_samples_s": ours,
    }
    p50 = speedup_row(
        NAME,
        "warm ensure p50",
        unit="ms",
        upstream=percentile(upstream, 0.5) * 1e3,
        ours=percentile(ours, 0.5) * 1e3,
        minimum_ratio=MIN_P50_RATIO,
        target=f"≥{MIN_P50_RATIO:g}x faster",
        **details,
    )
    p90 = speedup_row(
        NAME,
        "warm ensure p90",
        unit="ms",
        upstream=upstream_p90,
        ours=ours_p90,
        minimum_ratio=0.0,
        target="(info)",
    )
    p90.passed = None
    ours_p99 = details["ours_p99_ms"]
    p99 = Row(
        benchmark=NAME,
        metric="warm ensure p99",
        unit="ms",
        upstream=details["upstream_p99_ms"],
        ours=ours_p99,
        ratio=details["upstream_p99_ms"] / ours_p99,
        target=f"ours < {MAX_P99_MS:g} ms",
        passed=ours_p99 < MAX_P99_MS,
    )
    return [p50, p90, p99]

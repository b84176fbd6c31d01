"""Idle footprint: what a supervisor that owns one healthy daemon costs while nobody asks.

A supervisor with the default settings (5 s heartbeat) owns one 3.2.4 daemon that an
``ensure`` made it spawn; after a few settling seconds it is watched for ``--idle-seconds``
(default 20): RSS (and USS) sampled every second, CPU as (user + system time) over wall
time, of one core. Only the supervisor's own process is counted: the daemon is upstream's.
There is no upstream figure (upstream has no supervisor).
"""

from __future__ import annotations

import os
import time

import psutil

from sks_harness import spec_kitty_python

from ._common import CLIENT_VERSION, BenchContext, BenchError, Row, run_ours_ensure

NAME = "footprint"
SETTLE_SECONDS = 5.0
#: Issue 16's bar (the first round's was 60 MB and 0.5 %).
MAX_RSS_MB = 45.0
MAX_CPU_PERCENT = 0.2
_MB = 1024 * 1024
_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def run(context: BenchContext) -> list[Row]:
    sandbox = context.sandbox()
    with context.supervisors(sandbox) as sut:
        pid = sut.start()
        answer = run_ours_ensure(sut, spec_kitty_python(CLIENT_VERSION), CLIENT_VERSION, 1)
        if answer.actions != ("spawned",):
            raise BenchError(f"ensure did {answer.actions}, not a spawn")
        time.sleep(SETTLE_SECONDS)
        process = psutil.Process(pid)
        rss: list[float] = []
        uss: list[float] = []
        threads = process.num_threads()
        before = process.cpu_times()
        began = time.monotonic()
        while time.monotonic() - began < context.idle_seconds:
            memory = process.memory_full_info()
            rss.append(memory.rss / _MB)
            uss.append(memory.uss / _MB)
            time.sleep(1.0)
        after = process.cpu_times()
        wall = time.monotonic() - began
        memory = process.memory_full_info()
        rss.append(memory.rss / _MB)
        uss.append(memory.uss / _MB)
        if sut.pids() != [pid]:
            raise BenchError(f"the supervisor changed while idle: {sut.pids()} (was {pid})")
    cpu_seconds = (after.user - before.user) + (after.system - before.system)
    cpu_percent = 100.0 * cpu_seconds / wall
    peak_rss = max(rss)
    return [
        Row(
            benchmark=NAME,
            metric="idle supervisor RSS (peak)",
            unit="MB",
            upstream=None,
            ours=peak_rss,
            target=f"≤{MAX_RSS_MB:g} MB",
            passed=peak_rss <= MAX_RSS_MB,
            details={
                "rss_mb_samples": rss,
                "uss_mb_peak": max(uss),
                "threads": threads,
                "idle_seconds": wall,
            },
        ),
        Row(
            benchmark=NAME,
            metric="idle supervisor CPU",
            unit="%",
            upstream=None,
            ours=cpu_percent,
            target=f"≤{MAX_CPU_PERCENT:g} %",
            passed=cpu_percent <= MAX_CPU_PERCENT,
            details={
                "cpu_seconds": cpu_seconds,
                "idle_seconds": wall,
                "heartbeat_s": 5,
                # cpu_times() counts clock ticks: the figure's resolution is one tick.
                "resolution_percent": 100.0 * _TICK / wall,
            },
        ),
    ]

"""Under load: 100 concurrent clients of one supervisor (ours only; upstream has no server).

Each client is a thread with its own ``SupervisorClient`` (one kept-alive connection), spread
over a few worker processes so that one interpreter's GIL is not what is measured. Paced: each
client calls ``status`` then ``ensure`` ten times a second for 20 s, on a fixed schedule (a
late call is not skipped, so a stall shows in the latencies). Flat out: the same clients call
``ensure`` back to back for 10 s, and the throughput is the answers per second. Every answer of
``ensure`` must be ``reused`` of the same daemon; anything else, or an exception, is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import psutil

from sks_harness import spec_kitty_python

from ._common import (
    CLIENT_VERSION,
    SAAS_SYNC,
    BenchContext,
    BenchError,
    Row,
    median,
    percentile,
    run_ours_ensure,
)

NAME = "under_load"
CLIENTS = 100
WORKERS = 4
RATE_PER_SECOND = 10.0
PACED_SECONDS = 20.0
FLAT_OUT_SECONDS = 10.0
MAX_P99_MS = 5.0
SETTLE_SECONDS = 2.0
_MARK = "@@sks-load@@"

# argv: root, python, clients, seconds, rate (0 = flat out), start (time.time() to begin at)
_WORKER = f"""
import json, sys, threading, time
from spec_kitty_supervisor_client import SupervisorClient
root, python = sys.argv[1], sys.argv[2]
clients = int(sys.argv[3])
seconds, rate, start = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
results = []

def client():
    latencies, failures, pids, done = [], [], set(), 0
    with SupervisorClient(root, autostart=False, timeout=30) as c:
        c.health()  # the connection is made before the clock starts
        while time.time() < start:
            time.sleep(0.001)
        began = time.perf_counter()
        k = 0
        while True:
            due = began + k / rate if rate else time.perf_counter()
            if due - began >= seconds:
                break
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            for call in ("status", "ensure") if rate else ("ensure",):
                t = time.perf_counter()
                try:
                    answer = c.status() if call == "status" else c.ensure(python)
                    latencies.append(time.perf_counter() - t)
                    if call == "ensure":
                        pids.add(answer.daemon.pid)
                        if answer.action != "reused":
                            failures.append("action " + answer.action)
                    done += 1
                except Exception as exc:
                    failures.append(type(exc).__name__ + ": " + str(exc)[:200])
            k += 1
        elapsed = time.perf_counter() - began
    results.append({{"latencies": latencies, "failures": failures, "pids": sorted(pids),
                     "done": done, "elapsed": elapsed}})

threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print({_MARK!r} + json.dumps(results), flush=True)
"""


def _drive(
    env: dict[str, str], root: str, python: str, seconds: float, rate: float
) -> list[dict[str, Any]]:
    start = time.time() + 2.0  # every worker's clients connected by then
    per_worker = [CLIENTS // WORKERS + (1 if i < CLIENTS % WORKERS else 0) for i in range(WORKERS)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                root,
                python,
                str(n),
                str(seconds),
                str(rate),
                str(start),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in per_worker
    ]
    results: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=seconds + 120)
        lines = [line for line in out.splitlines() if line.startswith(_MARK)]
        if worker.returncode != 0 or not lines:
            raise BenchError(f"a load worker failed ({worker.returncode}): {err[-2000:]}")
        results.extend(json.loads(lines[-1][len(_MARK) :]))
    return results


def _cpu_share(process: psutil.Process, before: Any, since: float) -> float:
    """The process's CPU (user + system) since ``before``, as a share of one core."""
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / (time.monotonic() - since)


def run(context: BenchContext) -> list[Row]:
    python = str(spec_kitty_python(CLIENT_VERSION))
    load_at_start = list(os.getloadavg())
    with context.supervisors(context.sandbox()) as sut:
        supervisor = psutil.Process(sut.start())
        spawned = run_ours_ensure(sut, spec_kitty_python(CLIENT_VERSION), CLIENT_VERSION, 1)
        if spawned.actions != ("spawned",):
            raise BenchError(f"our first ensure did {spawned.actions}, not a spawn")
        time.sleep(SETTLE_SECONDS)
        env = sut.env(SAAS_SYNC)
        # The supervisor's own CPU over each phase: one core busy means it is the bottleneck.
        cpu = supervisor.cpu_times()
        began = time.monotonic()
        paced = _drive(env, str(sut.root), python, PACED_SECONDS, RATE_PER_SECOND)
        paced_cpu = _cpu_share(supervisor, cpu, began)
        cpu = supervisor.cpu_times()
        began = time.monotonic()
        flat = _drive(env, str(sut.root), python, FLAT_OUT_SECONDS, 0.0)
        flat_cpu = _cpu_share(supervisor, cpu, began)
    load = {"loadavg_at_start": load_at_start, "loadavg_at_end": list(os.getloadavg())}
    latencies_ms = [t * 1e3 for r in paced for t in r["latencies"]]
    failures = [f for r in paced + flat for f in r["failures"]]
    pids = {pid for r in paced + flat for pid in r["pids"]}
    if pids - {spawned.pid}:
        failures.append(f"ensure answered other daemons: {sorted(pids - {spawned.pid})}")
    p99 = percentile(latencies_ms, 0.99)
    flat_done = sum(r["done"] for r in flat)
    flat_elapsed = median([r["elapsed"] for r in flat])
    details = {
        "clients": CLIENTS,
        "workers": WORKERS,
        "rate_per_client": RATE_PER_SECOND,
        "seconds": PACED_SECONDS,
        "answers": len(latencies_ms),
        "p50_ms": median(latencies_ms),
        "p90_ms": percentile(latencies_ms, 0.9),
        "max_ms": max(latencies_ms),
        "failures": failures[:50],
        "failure_count": len(failures),
        "supervisor_cpu_share_of_one_core": paced_cpu,
        "samples_ms": latencies_ms,
        **load,
    }
    return [
        Row(
            benchmark=NAME,
            metric=f"{CLIENTS} clients, status+ensure {RATE_PER_SECOND:g}/s each, p99",
            unit="ms",
            upstream=None,
            ours=p99,
            target=f"< {MAX_P99_MS:g} ms, no failure",
            passed=p99 < MAX_P99_MS and not failures,
            details=details,
        ),
        Row(
            benchmark=NAME,
            metric=f"  failures (of {len(latencies_ms) + flat_done} calls)",
            unit="",
            upstream=None,
            ours=float(len(failures)),
            target="0",
            passed=not failures,
        ),
        Row(
            benchmark=NAME,
            metric=f"{CLIENTS} clients flat out: ensure throughput",
            unit="/s",
            upstream=None,
            ours=flat_done / flat_elapsed,
            target="(reported)",
            passed=None,
            details={
                "answers": flat_done,
                "elapsed_s": flat_elapsed,
                "supervisor_cpu_share_of_one_core": flat_cpu,
            },
        ),
    ]

"""The under-load row's paced schedule only, against the real supervisor and the canned server,
alternated, for comparing generators (docs/performance.md, "Under load, session 7").

``python -m bench.load_ab [--reps N] [--seconds S] NAME=WORKER_PATH:WORKERS ...`` starts one
supervisor and one daemon (as ``under_load`` does), records the supervisor's answers for the
canned server, runs a 3 s warm-up against the supervisor, then for each repetition and each
variant in turn drives the spread schedule (100 clients, ``status`` then ``ensure`` ten times
a second) against the canned server and then against the supervisor, printing one JSON line a
run (the warm-up's too): the load average, the UTC time, the percentiles from due, the
generator's CPU per answer and, against the supervisor, the supervisor's CPU (user + system)
per answer: far less disturbed by the neighbours than the latencies (docs/performance.md,
"Under load, session 8"). ``WORKER_PATH`` is a copy of ``bench/_load_worker.py`` (an older
one from ``git show``, say), ``WORKERS`` the processes it runs as. Run it in a private network
namespace.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

import psutil

from sks_harness import DaemonFleet
from spec_kitty_supervisor_client._wire import resolve_daemon_root, socket_path_for_root

from . import under_load
from ._common import BenchContext

WARM_UP_SECONDS = 3.0


def parse_variant(spec: str) -> tuple[str, Path, int]:
    """``NAME=PATH:WORKERS`` as (name, path, workers); a clear error for anything else."""
    name, equals, rest = spec.partition("=")
    path, colon, workers = rest.rpartition(":")
    if not (name and equals and path and colon and workers.isdigit() and int(workers) > 0):
        raise argparse.ArgumentTypeError(f"not NAME=WORKER_PATH:WORKERS: {spec!r}")
    return name, Path(path), int(workers)


def _one(
    kind: str,
    variant: tuple[str, Path, int],
    socket_path: Path,
    requests: dict[str, bytes],
    seconds: float,
    *,
    server: psutil.Process | None = None,
) -> dict[str, Any]:
    name, worker_path, workers = variant
    load = os.getloadavg()[0]
    utc = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    cpu_before = server.cpu_times() if server is not None else None
    results = under_load._drive(
        socket_path,
        requests,
        seconds,
        under_load.RATE_PER_SECOND,
        spread=True,
        workers=workers,
        worker_path=worker_path,
    )
    details = under_load._latency_details(results)
    server_cpu_us = None
    if server is not None and cpu_before is not None:
        # Over the whole drive (its clients' connects included: a hundred, against tens of
        # thousands of answers).
        cpu_after = server.cpu_times()
        used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        server_cpu_us = 1e6 * used / max(1, details["answers"])
    return {
        "kind": kind,
        "variant": name,
        "workers": workers,
        "utc": utc,
        "load": load,
        "load_end": os.getloadavg()[0],
        "p50_ms": details["p50_ms"],
        "p90_ms": details["p90_ms"],
        "p99_ms": details["p99_ms"],
        "max_ms": details["max_ms"],
        "round_lateness_p99_ms": details["round_lateness_p99_ms"],
        "generator_cpu_us_per_answer": details["generator_cpu_ms_per_answer"] * 1e3,
        "supervisor_cpu_us_per_answer": server_cpu_us,
        "answers": details["answers"],
        "slow_calls": len(details["slow_calls"]),
        "failures": sum(len(r["failures"]) for r in results),
        "pids": sorted({pid for r in results for pid in r["pids"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load_ab", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=under_load.PACED_SECONDS)
    parser.add_argument("variants", nargs="+", type=parse_variant)
    args = parser.parse_args()
    with DaemonFleet() as fleet:
        context = BenchContext(full=False, idle_seconds=0.0, fleet=fleet)
        with under_load.serving(context) as served:
            real, requests = served.socket_path, served.requests
            supervisor = psutil.Process(served.supervisor_pid)
            answers = under_load._recorded_answers(real, served.python)
            canned_sandbox = context.sandbox()
            canned = socket_path_for_root(resolve_daemon_root(canned_sandbox.root))
            with under_load._canned_server(canned_sandbox.root, answers):
                # The first seconds after a start are slower (first use of every path).
                warm_up = _one(
                    "warm-up", args.variants[0], real, requests, WARM_UP_SECONDS, server=supervisor
                )
                print(json.dumps(warm_up), flush=True)
                for _ in range(args.reps):
                    for variant in args.variants:
                        for kind, socket_path, server in (
                            ("canned", canned, None),
                            ("real", real, supervisor),
                        ):
                            record = _one(
                                kind, variant, socket_path, requests, args.seconds, server=server
                            )
                            if record["pids"] != [served.daemon_pid]:
                                record["failures"] += 1
                            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

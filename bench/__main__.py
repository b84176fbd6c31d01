"""``python -m bench [--only NAME ...] [--full] [--json PATH]``: run, print a table, save JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sks_harness import KNOWN_VERSIONS, DaemonFleet, MissingVenvError
from sks_harness import spec_kitty_venv as _venv

from . import (
    cold_orphans,
    cold_start,
    doctor,
    footprint,
    idle_connections,
    integration,
    one_call,
    reset,
    supervisor_start,
    under_load,
    warm_ensure,
)
from ._common import BenchContext, Row, busy_family_ports
from ._pace import describe, during, read_gauges

Benchmark = Callable[[BenchContext], list[Row]]

BENCHMARKS: dict[str, Benchmark] = {
    warm_ensure.NAME: warm_ensure.run,
    one_call.NAME: one_call.run,
    supervisor_start.NAME: supervisor_start.run,
    cold_start.NAME: cold_start.run,
    cold_orphans.NAME: cold_orphans.run,
    doctor.NAME: doctor.run,
    reset.NAME: reset.run,
    footprint.NAME: footprint.run,
    integration.NAME: integration.run,
    idle_connections.NAME: idle_connections.run,
    under_load.NAME: under_load.run,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="The supervisor side by side with the real upstream spec-kitty-cli.",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="more samples, and reset with 18 orphans (upstream alone then needs ~2 min)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=20.0,
        help="how long the footprint benchmark watches the idle supervisor (default 20)",
    )
    return parser


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:g} {unit}".strip()


def _verdict(row: Row) -> str:
    if row.passed is None:
        return ""
    return "PASS" if row.passed else "FAIL"


def render_table(rows: Sequence[Row]) -> str:
    header = ("metric", "upstream", "ours", "ratio", "target", "result")
    lines = [
        (
            row.metric,
            _format(row.upstream, row.unit),
            _format(row.ours, row.unit),
            "—" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target,
            _verdict(row),
        )
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    out = []
    for index, cells in enumerate([header, *lines]):
        out.append(
            "  ".join(
                cell.ljust(width) if column in (0, 4, 5) else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": list(load) if load else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    try:
        for version in KNOWN_VERSIONS:
            _venv(version)
    except MissingVenvError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    meta = _machine()
    busy = busy_family_ports()
    meta["busy_family_ports_at_start"] = busy
    print(
        f"bench: {', '.join(chosen)}{' (full)' if args.full else ''}; "
        f"{meta['cpus']} CPUs, load {meta['loadavg']}",
        flush=True,
    )
    if busy:
        print(
            f"bench: warning: something already listens on {busy} in 9400-9450; "
            "figures may be disturbed (and ports scarcer)",
            flush=True,
        )
    rows: list[Row] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    machine_during: dict[str, dict[str, float | None]] = {}
    run_began = time.monotonic()
    for name in chosen:
        print(f"bench: running {name} ...", flush=True)
        gauges_before = read_gauges()
        began = time.monotonic()
        try:
            with DaemonFleet() as fleet:
                context = BenchContext(full=args.full, idle_seconds=args.idle_seconds, fleet=fleet)
                produced = BENCHMARKS[name](context)
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            produced = []
        timings[name] = time.monotonic() - began
        machine_during[name] = during(gauges_before, read_gauges())
        rows.extend(produced)
        print(
            f"bench: {name} done in {timings[name]:.0f} s ({describe(machine_during[name])})",
            flush=True,
        )
        for row in produced:
            print(render_table([row]).splitlines()[-1], flush=True)
    meta["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["total_seconds"] = time.monotonic() - run_began
    meta["machine_during"] = machine_during
    print()
    print(render_table(rows))
    for name, error in failures.items():
        print(f"{name}: ERROR {error}")
    print(
        f"bench: {len(chosen)} benchmarks in {meta['total_seconds'] / 60:.1f} min "
        f"({', '.join(f'{name} {seconds:.0f} s' for name, seconds in timings.items())}); "
        f"load {meta['loadavg']} at the start, {meta['loadavg_at_end']} at the end"
    )
    print(
        "bench: the machine during each (steal: the host's time taken from this VM; pace: a "
        "fixed workload before → after): "
        + "; ".join(f"{name} {describe(gauges)}" for name, gauges in machine_during.items())
    )
    if args.json is not None:
        document = {
            "meta": meta,
            "full": args.full,
            "benchmark_seconds": timings,
            "rows": [row.to_json() for row in rows],
            "errors": failures,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"bench: results written to {args.json}")
    missed = [row for row in rows if row.passed is False]
    return 1 if failures or missed else 0


if __name__ == "__main__":
    sys.exit(main())

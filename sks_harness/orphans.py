"""Create the "18 orphan sync daemons of mixed versions" mess in a sandbox HOME.

    python -m sks_harness.orphans --home H --count 18 --versions 3.2.2,3.2.3,3.2.4 \\
        --ports 9400-9425 [--json]

Each orphan is a real spec-kitty daemon from ``$SPEC_KITTY_VENVS/spec-kitty-<version>``,
started outside any supervisor in the production argv shape, versions round-robin, on free
ports of the range, all for the root ``H/.spec-kitty`` (or ``--root``); ``R/sync-daemon``
then names the last one, as the last upstream spawner would have left it. The script waits
until every orphan is healthy (in parallel), prints pid/port/version (``--json``: also the
token and the process start, so that a test can adopt them by proven identity) and exits,
leaving the daemons running: they are orphans. If any fails, it stops those it started.

Used by ``make demo``, the tests and the benchmarks: a thin command line over the harness's
:func:`sks_harness.make_orphans`. Run it from the repository root as a module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import anyio

from . import (
    DEFAULT_ORPHAN_VERSIONS,
    ORPHAN_PORTS,
    HarnessError,
    PortRange,
    RealDaemon,
    Sandbox,
    make_orphans,
    parse_port_range,
    read_state_file,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start real orphan spec-kitty sync daemons in a sandbox HOME and leave them."
    )
    parser.add_argument("--home", type=Path, required=True, help="sandbox HOME (created)")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="daemon root (SPEC_KITTY_HOME) apart from HOME/.spec-kitty; 3.2.2 cannot use one",
    )
    parser.add_argument("--count", type=int, default=18, help="how many orphans (default 18)")
    parser.add_argument(
        "--versions",
        default=",".join(DEFAULT_ORPHAN_VERSIONS),
        help="comma-separated spec-kitty-cli versions, used round-robin",
    )
    parser.add_argument(
        "--ports",
        type=parse_port_range,
        default=ORPHAN_PORTS,
        help=f"half-open LO-HI range to pick free ports from (default {ORPHAN_PORTS})",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="health wait, seconds")
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help="start them without SPEC_KITTY_ENABLE_SAAS_SYNC: they then retire by themselves "
        "(within 30 s when R/sync-daemon names another live daemon)",
    )
    parser.add_argument("--no-state-file", action="store_true", help="do not write R/sync-daemon")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _report(sandbox: Sandbox, orphans: list[RealDaemon], elapsed: float) -> dict[str, object]:
    state = read_state_file(sandbox.root)
    return {
        "home": str(sandbox.home),
        "root": str(sandbox.root),
        "count": len(orphans),
        "elapsed_s": round(elapsed, 3),
        "state_file": state.to_json() if state is not None else None,
        "orphans": [orphan.to_json() for orphan in orphans],
    }


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    if not versions:
        parser.error("--versions names no version")
    if args.count < 1:
        parser.error("--count must be at least 1")
    home = args.home.expanduser().resolve()
    if home == Path(os.path.expanduser("~")).resolve():
        parser.error(f"--home {home} is your real HOME: give a throwaway folder")
    ports: PortRange = args.ports

    # The daemons are handed off on purpose: they must outlive this process, unreaped.
    warnings.filterwarnings("ignore", r"subprocess \d+ is still running", ResourceWarning)
    try:
        sandbox = Sandbox.at(home, root=args.root)
        began = time.monotonic()
        orphans = anyio.run(
            lambda: make_orphans(
                sandbox,
                count=args.count,
                versions=versions,
                ports=ports,
                sync=not args.no_sync,
                state_file=not args.no_state_file,
                timeout=args.timeout,
            )
        )
        elapsed = time.monotonic() - began
    except (HarnessError, ValueError) as exc:
        print(f"make_orphans: {exc}", file=sys.stderr)
        return 1

    report = _report(sandbox, orphans, elapsed)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    state = read_state_file(sandbox.root)
    recorded = f"; R/sync-daemon names pid {state.pid} port {state.port}" if state else ""
    print(
        f"{len(orphans)} orphan sync daemons for root {sandbox.root} (HOME {sandbox.home}), "
        f"healthy in {elapsed:.2f} s{recorded}"
    )
    for orphan in orphans:
        print(f"  pid {orphan.pid:>7}  port {orphan.port}  spec-kitty {orphan.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

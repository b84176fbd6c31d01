"""Every release on its real daemon: spawn, reuse, adopt after a crash, orphan swept, stop path.

Run from the repository root as a module, after installing the releases' venvs
(``make matrix`` does both)::

    python -m scripts.matrix 3.1.10 3.2.0 3.2.7     # default: every installed 3.1.0-3.2.7

Per release, in a throwaway HOME whose root is ``$HOME/.spec-kitty`` (the only root 3.1.x and
3.2.0-3.2.2 can serve), with a real supervisor run as the CLI runs it:

- spawn: ``ensure`` with the release's interpreter spawns a daemon that has its version;
- reuse: a second ``ensure`` answers ``reused`` with the same pid;
- adopt: the supervisor is killed with SIGKILL; the next ``ensure`` answers ``adopted``, same pid;
- orphan: a daemon of the release spawned the way its own CLI spawns it (3.1: no marker) is
  classified (class / identity source) and ``doctor --reset`` sweeps it;
- stop: ``retire`` stops the supervised daemon; the path it took (token shutdown first).

Prints one line per release and exits 1 if any cell failed. It never starts or stops anything
outside its sandboxes; daemons are stopped by pid by the harness.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    MissingVenvError,
    SupervisorUnderTest,
    eventually,
    read_identity,
    run_blocking,
    signal_if_same,
    spawn_orphan,
    spec_kitty_python,
    wait_healthy,
)

#: Every release from 3.1.0 to 3.2.7 on PyPI (3.1.3 was never published).
RELEASES: tuple[str, ...] = (
    *(f"3.1.{n}" for n in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)),
    *(f"3.2.{n}" for n in range(6)),
    "3.2.6",
    "3.2.6.1",
    "3.2.6.2",
    "3.2.7",
)
COLUMNS = ("spawn", "reuse", "adopt", "orphan", "swept", "stop")


@dataclass
class Row:
    release: str
    cells: dict[str, str] = field(default_factory=dict)
    failed: bool = False

    def check(self, column: str, ok: bool, shown: str) -> None:
        self.cells[column] = shown if ok else f"FAIL({shown})"
        self.failed = self.failed or not ok


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"error": result.stderr.strip().splitlines()[-1:]}


def _step(row: Row, column: str, action: Callable[[], tuple[bool, str]]) -> bool:
    try:
        ok, shown = action()
    except Exception as exc:  # a cell that crashes is a failed cell, the next release still runs
        ok, shown = False, f"{type(exc).__name__}: {exc}"[:60]
    row.check(column, ok, shown)
    return ok


def measure(release: str) -> Row:
    row = Row(release)
    python = str(spec_kitty_python(release))
    with DaemonFleet(port_range=SPAWN_PORTS) as fleet:
        sandbox = fleet.sandbox()
        with SupervisorUnderTest(sandbox) as sup:
            daemon: dict[str, Any] = {}

            def spawn() -> tuple[bool, str]:
                answer = _json(sup.cli("ensure", "--python", python, "--json"))
                daemon.update(answer.get("daemon") or {})
                version = daemon.get("package_version")
                return answer.get("action") == "spawned" and version == release, str(version)

            def reuse() -> tuple[bool, str]:
                answer = _json(sup.cli("ensure", "--python", python, "--json"))
                same = answer.get("daemon", {}).get("pid") == daemon.get("pid")
                return answer.get("action") == "reused" and same, str(answer.get("action"))

            def adopt() -> tuple[bool, str]:
                (pid,) = sup.pids()
                identity = read_identity(pid)
                assert identity is not None
                signal_if_same(identity, signal.SIGKILL)
                eventually(lambda: sup.pids() == [], what="the supervisor to die")
                answer = _json(sup.cli("ensure", "--python", python, "--json"))
                same = answer.get("daemon", {}).get("pid") == daemon.get("pid")
                return answer.get("action") == "adopted" and same, str(answer.get("action"))

            orphan_pid: list[int] = []

            def orphan() -> tuple[bool, str]:
                taken = [d.port for d in fleet.alive()] + [int(daemon.get("port", 0))]
                (port,) = SPAWN_PORTS.free(1, exclude=taken)
                spawned = fleet.add(spawn_orphan(sandbox, release, port))
                run_blocking(wait_healthy, spawned, 30.0)
                orphan_pid.append(spawned.pid)
                report = _json(sup.cli("doctor", "--json"))
                found = [o for o in report.get("orphans", []) if o["pid"] == spawned.pid]
                if not found:
                    return False, "not found"
                record = found[0]
                shown = f"{record['cleanup_class']}/{record['identity_source']}"
                return record["cleanup_class"] == "safe_auto", shown

            def swept() -> tuple[bool, str]:
                result = _json(sup.cli("doctor", "--reset", "--json"))
                gone = [e for e in result.get("reset_result", {}).get("swept", [])]
                entry = next((e for e in gone if e["pid"] in orphan_pid), None)
                if entry is None:
                    return False, "not swept"
                return True, str(entry.get("cleanup_path"))

            def stop() -> tuple[bool, str]:
                answer = _json(sup.cli("retire", "--pid", str(daemon["pid"]), "--json"))
                path = answer.get("stop_path")
                return path is not None, str(path)

            if _step(row, "spawn", spawn) and _step(row, "reuse", reuse):
                _step(row, "adopt", adopt)
                if _step(row, "orphan", orphan):
                    _step(row, "swept", swept)
                _step(row, "stop", stop)
    return row


def main(argv: list[str]) -> int:
    releases = argv or list(RELEASES)
    rows: list[Row] = []
    print(f"{'release':<9} " + " ".join(f"{c:<26}" for c in COLUMNS))
    for release in releases:
        try:
            spec_kitty_python(release)
        except MissingVenvError as exc:
            print(f"{release:<9} not installed: {exc}")
            rows.append(Row(release, failed=True))
            continue
        began = time.monotonic()
        row = measure(release)
        rows.append(row)
        cells = " ".join(f"{row.cells.get(c, '-'):<26}" for c in COLUMNS)
        print(f"{release:<9} {cells} ({time.monotonic() - began:.0f} s)", flush=True)
    failed = [row.release for row in rows if row.failed]
    print(f"{len(rows) - len(failed)} of {len(rows)} releases passed every cell")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

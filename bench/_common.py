"""What every benchmark shares: result rows, statistics, timed processes and sandboxes."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sks_harness import DaemonFleet, HarnessError, PortRange, Sandbox, SupervisorUnderTest
from spec_kitty_supervisor_client import SupervisorClient, SupervisorUnavailable

__all__ = [
    "CLIENT_VERSION",
    "ORPHAN_RANGE",
    "SAAS_SYNC",
    "SPAWN_RANGE",
    "BenchContext",
    "BenchError",
    "OursEnsure",
    "Row",
    "busy_family_ports",
    "median",
    "percentile",
    "run_ours_ensure",
    "supervisor_cli",
    "supervisor_env",
    "timed_run",
    "wait_answering",
]

#: The release the ensure benchmarks drive on both sides.
CLIENT_VERSION = "3.2.4"
#: Ports where benchmarks place orphans themselves.
ORPHAN_RANGE = PortRange(9400, 9425)
#: Ports the supervisors under benchmark spawn their daemons on.
SPAWN_RANGE = PortRange(9425, 9450)
SAAS_SYNC = {"SPEC_KITTY_ENABLE_SAAS_SYNC": "1"}
_MARK = "@@sks-bench@@"


class BenchError(RuntimeError):
    """A benchmark could not measure what it meant to (the message says why)."""


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of the table: a metric measured on both sides, or on ours only.

    ``ratio`` is always upstream ÷ ours for times (how many times faster we are); targets
    are expressed on that ratio, or on ``ours`` alone when there is no upstream figure.
    """

    benchmark: str
    metric: str
    unit: str
    upstream: float | None
    ours: float | None
    target: str
    passed: bool | None
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "unit": self.unit,
            "upstream": self.upstream,
            "ours": self.ours,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "details": self.details,
        }


def speedup_row(
    benchmark: str,
    metric: str,
    *,
    unit: str,
    upstream: float,
    ours: float,
    minimum_ratio: float,
    target: str,
    **details: Any,
) -> Row:
    """A row whose target is ``upstream / ours >= minimum_ratio``."""
    ratio = upstream / ours if ours > 0 else math.inf
    return Row(
        benchmark=benchmark,
        metric=metric,
        unit=unit,
        upstream=upstream,
        ours=ours,
        ratio=ratio,
        target=target,
        passed=ratio >= minimum_ratio,
        details=dict(details),
    )


# --------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (``fraction`` in [0, 1])."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


# --------------------------------------------------------------------------------------------
# Processes


def timed_run(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 300.0
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command to its end; its wall time (start to exit) and what it printed."""
    began = time.perf_counter()
    completed = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env),
        cwd=cwd,
        check=False,
    )
    return time.perf_counter() - began, completed


def supervisor_cli() -> list[str]:
    """Our command as a user runs it: the console script next to this interpreter."""
    script = Path(sys.executable).with_name("spec-kitty-supervisor")
    if script.exists():
        return [str(script)]
    found = shutil.which("spec-kitty-supervisor")
    return [found] if found else [sys.executable, "-m", "spec_kitty_supervisor"]


def supervisor_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings every supervisor of a benchmark gets: its spawn range and the defaults."""
    settings = {
        "SPEC_KITTY_SUPERVISOR_PORT_RANGE": str(SPAWN_RANGE),
        # SupervisorUnderTest speeds the heartbeat up for tests; benchmarks keep the default.
        "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "5",
    }
    settings.update(extra or {})
    return settings


def wait_answering(root: Path, timeout: float = 30.0) -> None:
    """Wait until the supervisor of ``root`` answers ``GET /v1/health`` (polling every 5 ms).

    An answer, not a connect: the socket accepts connections as soon as it listens, before
    the supervisor serves.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 0.1)
        with SupervisorClient(root, autostart=False, timeout=remaining) as client:
            try:
                client.health()
                return
            except SupervisorUnavailable:
                pass
        if time.monotonic() > deadline:
            raise BenchError(f"no supervisor answered for {root} within {timeout:.0f} s")
        time.sleep(0.005)


# Runs in our venv's python, in the sandbox's environment: times ``ensure`` calls made as
# spec-kitty would make them (imports are not timed, as upstream's in-process timings do not
# time theirs). argv: root, python, version, repeat; ``{name}``, ``{setup}`` and ``{call}`` say
# which call. ``subprocess`` is imported first because every spec-kitty process has it already
# (``import specify_cli`` imports it, 3.1.0 to 3.2.7), as upstream's timed call has; our client
# imports it only to start a supervisor, and a spec-kitty process would not pay that import.
_OURS_SCRIPT = """
import json, subprocess, sys, time
from spec_kitty_supervisor_client import {name}
root, python, version, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
{setup}
timings, actions = [], []
answer = None
for _ in range(repeat):
    began = time.perf_counter()
    answer = {call}
    timings.append(time.perf_counter() - began)
    actions.append(answer.action)
print(MARK + json.dumps({{
    "actions": actions,
    "pid": answer.daemon.pid,
    "port": answer.daemon.port,
    "timings_s": timings,
}}), flush=True)
""".replace("MARK", repr(_MARK))
#: ``SupervisorClient.ensure`` on one kept-alive client, made before the first call.
_OURS_ENSURE_SCRIPT = _OURS_SCRIPT.format(
    name="SupervisorClient",
    setup="client = SupervisorClient(root)",
    call="client.ensure(python, version)",
)
#: The one-call helper as the README shows it (no version): what a spec-kitty process calls,
#: on the standard-library wire.
_OURS_ONE_CALL_SCRIPT = _OURS_SCRIPT.format(
    name="ensure_sync_daemon", setup="", call="ensure_sync_daemon(python, root=root)"
)


@dataclass(frozen=True)
class OursEnsure:
    actions: tuple[str, ...]
    pid: int
    port: int
    timings_s: tuple[float, ...]
    wall_s: float


def run_ours_ensure(
    sut: SupervisorUnderTest,
    python: Path,
    version: str,
    repeat: int,
    timeout: float = 120.0,
    *,
    one_call: bool = False,
) -> OursEnsure:
    """``SupervisorClient(root).ensure(python, version)`` ``repeat`` times in a fresh process;
    with ``one_call``, ``ensure_sync_daemon(python, root=root)`` instead (``version`` unsent).

    The process has the sandbox's environment plus the supervisor settings, so a supervisor
    it auto-starts runs with them too (and is found and stopped by ``sut`` afterwards).
    """
    env = sut.env(SAAS_SYNC)
    argv = [
        sys.executable,
        "-c",
        _OURS_ONE_CALL_SCRIPT if one_call else _OURS_ENSURE_SCRIPT,
        str(sut.root),
        str(python),
        version,
        str(repeat),
    ]
    wall, completed = timed_run(argv, env, sut.sandbox.home, timeout)
    sut.remember()
    report: dict[str, Any] | None = None
    for line in completed.stdout.splitlines():
        if line.startswith(_MARK):
            report = json.loads(line[len(_MARK) :])
    if completed.returncode != 0 or report is None:
        raise BenchError(
            f"our ensure failed with {completed.returncode}:\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
        )
    return OursEnsure(
        actions=tuple(report["actions"]),
        pid=int(report["pid"]),
        port=int(report["port"]),
        timings_s=tuple(float(t) for t in report["timings_s"]),
        wall_s=wall,
    )


def busy_family_ports() -> list[int]:
    """Ports of the sync family that something listens on right now (others' daemons)."""
    busy = []
    for port in range(9400, 9450):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except OSError:
                continue
            busy.append(port)
    return busy


# --------------------------------------------------------------------------------------------
# Context


@dataclass
class BenchContext:
    """Options of one run, and the fleet every benchmark's processes are tracked in."""

    full: bool
    idle_seconds: float
    fleet: DaemonFleet

    def sandbox(self) -> Sandbox:
        """A fresh HOME (root ``HOME/.spec-kitty``, which every release serves), watched."""
        return self.fleet.sandbox()

    @contextlib.contextmanager
    def supervisors(
        self, sandbox: Sandbox, extra: Mapping[str, str] | None = None
    ) -> Iterator[SupervisorUnderTest]:
        """Every supervisor of ``sandbox`` started meanwhile is stopped by pid on exit."""
        with SupervisorUnderTest(sandbox, settings=supervisor_env(extra)) as sut:
            yield sut

    def stop_daemons(self) -> None:
        """Stop every daemon of every sandbox so far (between samples), by pid."""
        try:
            self.fleet.stop_all()
        except HarnessError as exc:
            raise BenchError(str(exc)) from exc

"""The integration: one spec-kitty process that needs its daemon, with and without the hook.

Two throwaway copies of the 3.2.4 venv (never the shared one): one plain, one integrated with
this installation. Each sample is a whole process, a console script named ``spec-kitty`` that
imports ``specify_cli.sync.daemon`` and calls ``ensure_sync_daemon_running(intent=
REMOTE_REQUIRED)``, the way spec-kitty's own modules do, against a healthy daemon: upstream's
own (it spawned it in the warm-up), or the supervisor's (a supervisor runs and owns it). The
process prints how long the call itself took. Samples alternate between the two sides in ABBA
order (each side goes first in every other pair), 25 pairs (31 with ``--full``), and the judged
ratio is the median of the pairs' ratios: a machine whose load drifts during the run favours
neither side (with a fixed order and 7 samples, the session-4 quiet run's 0.92x was within the
spread of its samples, while the two processes' instructions differ by 0.14 % and their system
calls and page faults by under 1 %). Both copies are in the same folder (one file system) and
have byte code for all of site-packages (compiled before sampling, the hook module included).
Each process's CPU time (user + system) is reported beside its wall time.

Also the hook's own costs, in the integrated venv: the ``.pth`` line at interpreter start, and
the hook module's import when ``specify_cli.sync.daemon`` is imported (``-X importtime``). The
line imports nothing (``-X importtime -c pass`` lists no module of ours; a test checks it), so
its cost is the time ``site`` takes to compile and execute it: measured exactly that way, in the
venv's interpreter. ``site``'s whole cumulative import time with and without the line is kept
in the details, but differences of a few ms there are noise on a busy machine.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from sks_harness import Sandbox, site_packages, throwaway_venv
from spec_kitty_supervisor._integrate import (
    PTH_FILE,
    apply,
    inspect_interpreter,
    plan,
    supervisor_command_of_this_installation,
)

from ._common import (
    CLIENT_VERSION,
    SAAS_SYNC,
    BenchContext,
    BenchError,
    Row,
    median,
    speedup_row,
    supervisor_env,
    timed_run,
)

NAME = "integration"
#: The integrated process is within noise of upstream's: spec-kitty's own import (~1.5 s)
#: dominates both.
MINIMUM_PROCESS_RATIO = 0.95
#: The call itself: never slower. Both sides first import upstream's sync config (~10 ms) and
#: read its own version from metadata (~4 ms): the hook makes upstream's skip decision exactly
#: as upstream does before it asks the supervisor.
MINIMUM_CALL_RATIO = 1.0
MAX_HOOK_MS = 3.0

DRIVER = """\
import json, time
from specify_cli.sync.daemon import DaemonIntent, ensure_sync_daemon_running
began = time.perf_counter()
outcome = ensure_sync_daemon_running(intent=DaemonIntent.REMOTE_REQUIRED)
print(json.dumps({"started": outcome.started, "pid": outcome.pid,
                  "call_s": time.perf_counter() - began}))
"""
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")


def _driver(venv: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    script = folder / "spec-kitty"
    script.write_text(f"#!{venv / 'bin' / 'python'}\n{DRIVER}")
    script.chmod(0o755)
    return script


def _sample(driver: Path, sandbox: Sandbox) -> tuple[float, float, int, float]:
    """(wall s, the call's s, the daemon's pid, the process's CPU s: user + system)."""
    env = sandbox.env({**SAAS_SYNC, **supervisor_env()})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, completed = timed_run([str(driver)], env, sandbox.home)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if completed.returncode != 0:
        raise BenchError(f"{driver} failed: {completed.stderr.strip()[-500:]}")
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    if not answer["started"]:
        raise BenchError(f"{driver} got no daemon: {answer}")
    return wall, float(answer["call_s"]), int(answer["pid"]), cpu


def _compile(venv: Path) -> None:
    """Byte code for everything in the venv's site-packages (the hook module included), so
    that neither side compiles anything while it is timed."""
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "compileall", "-q", str(site_packages(venv))],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=True,
    )


def pair_ratios(upstream: list[float], ours: list[float]) -> list[float]:
    """``upstream / ours`` of each adjacent pair of samples (taken one after the other)."""
    return [u / o for u, o in zip(upstream, ours, strict=True)]


def _import_times(python: Path, code: str) -> dict[str, tuple[int, int]]:
    """``-X importtime``: module -> (self µs, cumulative µs)."""
    completed = subprocess.run(
        [str(python), "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd="/",
        env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin", "SPEC_KITTY_SUPERVISOR_DISABLE": "1"},
    )
    times = {}
    for match in _IMPORT_LINE.finditer(completed.stderr):
        times[match.group(3)] = (int(match.group(1)), int(match.group(2)))
    return times


_EXEC_LINE = (
    "import sys, time; line = open(sys.argv[1]).read(); began = time.perf_counter_ns(); "
    "exec(line); print(time.perf_counter_ns() - began)"
)


def _hook_costs(venv: Path, samples: int) -> tuple[float, float, dict[str, float]]:
    """The ``.pth`` line's cost and the hook module's import, in ms (medians)."""
    python = venv / "bin" / "python"
    pth = next(venv.glob(f"lib/python3.*/site-packages/{PTH_FILE}"))
    line = pth.read_text()
    with_line, without_line, hook_import, line_ns = [], [], [], []
    for _ in range(samples):
        executed = subprocess.run(
            [str(python), "-S", "-c", _EXEC_LINE, str(pth)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        line_ns.append(int(executed.stdout.strip()))
        with_line.append(_import_times(python, "pass")["site"][1])
        pth.unlink()
        without_line.append(_import_times(python, "pass")["site"][1])
        pth.write_text(line)
        # Disabled, the hook is imported by the finder but acts on nothing: its own import.
        timed = _import_times(python, "import specify_cli.sync.daemon")
        if "spec_kitty_supervisor_hook" in timed:
            hook_import.append(timed["spec_kitty_supervisor_hook"][1])
    if not hook_import:
        raise BenchError("the hook module was not imported with specify_cli.sync.daemon")
    site_ms = {
        "site_cumulative_with_line_ms": median(with_line) / 1000,
        "site_cumulative_without_line_ms": median(without_line) / 1000,
    }
    return median(line_ns) / 1e6, median(hook_import) / 1000, site_ms


def run(context: BenchContext) -> list[Row]:
    # Two 0.9 s processes differ by about 2 ms here; one pair's ratio by up to 40 % on this VM
    # (session 6: 0.88-1.43). 25 pairs keep the median of the ratios near what the processes do.
    samples = 31 if context.full else 25
    base = Path(tempfile.mkdtemp(prefix="sks-bench-integration-", dir="/tmp"))
    try:
        plain = throwaway_venv(CLIENT_VERSION, base, "plain")
        hooked = throwaway_venv(CLIENT_VERSION, base, "hooked")
        command = supervisor_command_of_this_installation()
        apply(plan(inspect_interpreter(str(hooked / "bin" / "python")), command))
        for venv in (plain, hooked):
            _compile(venv)
        plain_driver = _driver(plain, base / "drivers" / "plain")
        hooked_driver = _driver(hooked, base / "drivers" / "hooked")
        upstream_sandbox, ours_sandbox = context.sandbox(), context.sandbox()
        upstream_wall, upstream_call, ours_wall, ours_call = [], [], [], []
        upstream_cpu, ours_cpu = [], []
        with context.supervisors(ours_sandbox) as sut:
            sut.start()
            upstream_pid = _sample(plain_driver, upstream_sandbox)[2]  # warm-up: it spawns
            ours_pid = _sample(hooked_driver, ours_sandbox)[2]  # warm-up: the supervisor spawns
            for index in range(samples):
                # ABBA: each side goes first in every other pair, so a drift of the machine
                # over the run (its load rising or falling) favours neither.
                for side in ("upstream", "ours") if index % 2 == 0 else ("ours", "upstream"):
                    if side == "upstream":
                        wall, call, pid, cpu = _sample(plain_driver, upstream_sandbox)
                        if pid != upstream_pid:
                            raise BenchError("upstream replaced its daemon between samples")
                        upstream_wall.append(wall)
                        upstream_call.append(call)
                        upstream_cpu.append(cpu)
                    else:
                        wall, call, pid, cpu = _sample(hooked_driver, ours_sandbox)
                        if pid != ours_pid:
                            raise BenchError("the integrated process got another daemon")
                        ours_wall.append(wall)
                        ours_call.append(call)
                        ours_cpu.append(cpu)
        context.stop_daemons()
        pth_ms, hook_ms, site_ms = _hook_costs(hooked, samples)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    wall_ratios = pair_ratios(upstream_wall, ours_wall)
    return [
        Row(
            benchmark=NAME,
            metric="spec-kitty process needing its daemon, whole process",
            unit="s",
            upstream=median(upstream_wall),
            ours=median(ours_wall),
            ratio=median(wall_ratios),
            target="≤ upstream +5 % (ratio: median of pairs)",
            passed=median(wall_ratios) >= MINIMUM_PROCESS_RATIO,
            details={
                "samples": samples,
                "order": "ABBA: upstream first in even pairs, ours first in odd pairs",
                "ratio_of_medians": median(upstream_wall) / median(ours_wall),
                "pair_ratios": wall_ratios,
                "pairs_ours_faster": sum(r > 1 for r in wall_ratios),
                "upstream_s": upstream_wall,
                "ours_s": ours_wall,
            },
        ),
        Row(
            benchmark=NAME,
            metric="  the same process's CPU (user + system)",
            unit="s",
            upstream=median(upstream_cpu),
            ours=median(ours_cpu),
            ratio=median(pair_ratios(upstream_cpu, ours_cpu)),
            target="(info)",
            passed=None,
            details={
                "pair_ratios": pair_ratios(upstream_cpu, ours_cpu),
                "upstream_s": upstream_cpu,
                "ours_s": ours_cpu,
            },
        ),
        speedup_row(
            NAME,
            "  its ensure_sync_daemon_running call",
            unit="ms",
            upstream=median(upstream_call) * 1000,
            ours=median(ours_call) * 1000,
            minimum_ratio=MINIMUM_CALL_RATIO,
            target="integrated not slower",
            samples=samples,
            upstream_ms=[value * 1000 for value in upstream_call],
            ours_ms=[value * 1000 for value in ours_call],
        ),
        Row(
            benchmark=NAME,
            metric="hook .pth line at interpreter start",
            unit="ms",
            upstream=None,
            ours=pth_ms,
            target=f"≤{MAX_HOOK_MS:g} ms",
            passed=pth_ms <= MAX_HOOK_MS,
            details={"method": "compile + exec of the line, as site does", **site_ms},
        ),
        Row(
            benchmark=NAME,
            metric="hook module import (with specify_cli.sync.daemon)",
            unit="ms",
            upstream=None,
            ours=hook_ms,
            target=f"≤{MAX_HOOK_MS:g} ms",
            passed=hook_ms <= MAX_HOOK_MS,
            details={"method": "-X importtime cumulative of spec_kitty_supervisor_hook"},
        ),
    ]

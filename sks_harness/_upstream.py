"""Running the upstream ``spec-kitty`` itself, and its ``ensure_sync_daemon_running``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import HarnessError
from ._sandbox import Sandbox
from ._state_file import StateRecord, read_state_file
from ._venvs import SAAS_SYNC_ENV, spec_kitty_cli, spec_kitty_python

__all__ = ["UpstreamEnsure", "run_upstream_cli", "run_upstream_ensure"]


def run_upstream_cli(
    sandbox: Sandbox,
    version: str,
    args: Sequence[str],
    timeout: float = 120.0,
    *,
    saas_sync: bool = False,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run that venv's real ``spec-kitty`` with the sandbox's HOME; never raises on exit codes.

    It writes hundreds of agent files into HOME, which is why it gets only a sandbox's.
    ``saas_sync=True`` lets it spawn daemons (which the fleet watching the sandbox stops).
    """
    env = sandbox.env({"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    if saas_sync:
        env[SAAS_SYNC_ENV] = "1"
    if extra_env:
        env.update(extra_env)
    return subprocess.run(
        [str(spec_kitty_cli(version)), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or sandbox.home,
        check=False,
    )


_ENSURE_MARK = "@@sks-ensure@@"
# Runs inside the venv's python. ensure_sync_daemon_running has the same keyword-only shape in
# 3.2.2, 3.2.3, 3.2.4 and 3.2.7 (``intent`` is mandatory; REMOTE_REQUIRED is the path that
# starts a daemon); it returns DaemonStartOutcome(started, skipped_reason, pid), where
# ``started`` is True on reuse too.
_ENSURE_SCRIPT = f"""
import json, sys, time
from specify_cli.sync.daemon import DaemonIntent, ensure_sync_daemon_running
timings = []
outcome = None
for _ in range(int(sys.argv[1])):
    began = time.perf_counter()
    outcome = ensure_sync_daemon_running(intent=DaemonIntent.REMOTE_REQUIRED)
    timings.append(time.perf_counter() - began)
print({_ENSURE_MARK!r} + json.dumps({{
    "started": outcome.started,
    "skipped_reason": outcome.skipped_reason,
    "pid": outcome.pid,
    "timings_s": timings,
}}), flush=True)
"""


@dataclass(frozen=True)
class UpstreamEnsure:
    """What upstream's ``ensure_sync_daemon_running()`` reported, and the state file after."""

    version: str
    started: bool
    skipped_reason: str | None
    pid: int | None
    state: StateRecord | None
    timings_s: tuple[float, ...]
    completed: subprocess.CompletedProcess[str] = field(repr=False, compare=False)

    @property
    def port(self) -> int | None:
        return self.state.port if self.state is not None else None

    @property
    def url(self) -> str | None:
        return self.state.url if self.state is not None else None


def run_upstream_ensure(
    sandbox: Sandbox,
    version: str,
    timeout: float = 60.0,
    *,
    repeat: int = 1,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> UpstreamEnsure:
    """Call upstream's ``specify_cli.sync.daemon.ensure_sync_daemon_running`` in that venv.

    Runs with the sandbox's environment plus ``SPEC_KITTY_ENABLE_SAAS_SYNC=1`` (without it
    upstream skips with ``rollout_disabled``). ``repeat`` calls it that many times in one
    process and reports each call's duration (the first is a cold start when no daemon
    runs). A daemon it spawns outlives the call: watch the sandbox with a fleet.
    """
    env = sandbox.env({SAAS_SYNC_ENV: "1"})
    if extra_env:
        env.update(extra_env)
    completed = subprocess.run(
        [str(spec_kitty_python(version)), "-c", _ENSURE_SCRIPT, str(repeat)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or sandbox.home,
        check=False,
    )
    report: dict[str, Any] | None = None
    for line in completed.stdout.splitlines():
        if line.startswith(_ENSURE_MARK):
            report = json.loads(line[len(_ENSURE_MARK) :])
    if completed.returncode != 0 or report is None:
        raise HarnessError(
            f"upstream ensure ({version}) failed with {completed.returncode}:\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
        )
    return UpstreamEnsure(
        version=version,
        started=bool(report["started"]),
        skipped_reason=report["skipped_reason"],
        pid=report["pid"],
        state=read_state_file(sandbox.root),
        timings_s=tuple(float(t) for t in report["timings_s"]),
        completed=completed,
    )

"""Running real supervisors in tests: as the CLI runs them, in a sandbox, cleaned up by pid.

A :class:`SupervisorUnderTest` starts ``spec-kitty-supervisor`` subprocesses with the sandbox's
environment and a spawn sub-range, and on exit stops every supervisor it saw by pid (SIGTERM,
then SIGKILL) after checking the pid still is that supervisor. The daemons they spawned are
left to the :class:`DaemonFleet` watching the same sandbox.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from ._eventually import eventually
from ._ports import SPAWN_PORTS
from ._process import ProcessIdentity, is_alive, read_identity, signal_if_same
from ._sandbox import Sandbox

__all__ = ["SUPERVISOR", "SupervisorUnderTest", "daemon_pids", "supervisor_pids"]

SUPERVISOR = [sys.executable, "-m", "spec_kitty_supervisor"]


def supervisor_pids(root: Path) -> list[int]:
    """Every live supervisor process serving ``root`` (by its argv)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        launcher = " ".join(cmdline[:3])
        is_supervisor = (
            "spec_kitty_supervisor" in launcher or "spec-kitty-supervisor" in launcher
        ) and "run" in cmdline
        if is_supervisor and str(root) in cmdline:
            found.append(process.info["pid"])
    return found


def daemon_pids(root: Path) -> list[int]:
    """Every live sync daemon whose root marker names ``root``."""
    marker = f"--spec-kitty-daemon-root={root}"
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if marker in (process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


def _stop_by_pid(identity: ProcessIdentity) -> None:
    """SIGTERM, then SIGKILL, each only while the pid still is that supervisor."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not signal_if_same(identity, signum):
            return
        with contextlib.suppress(AssertionError):
            eventually(
                lambda: not is_alive(identity),
                what=f"supervisor pid {identity.pid} to exit",
                timeout=10,
            )
            return


@dataclass
class SupervisorUnderTest:
    sandbox: Sandbox
    settings: Mapping[str, str] = field(default_factory=dict)
    seen: dict[int, ProcessIdentity] = field(default_factory=dict)
    _popens: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.sandbox.root

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        base = {
            "SPEC_KITTY_SUPERVISOR_PORT_RANGE": str(SPAWN_PORTS),
            "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "1",
            **self.settings,
        }
        return self.sandbox.env({**base, **(extra or {})})

    def cli(
        self, *args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*SUPERVISOR, *args, "--root", str(self.root)],
            env=self.env(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.sandbox.home,
        )
        self.remember()
        return result

    def cli_json(self, *args: str, extra_env: Mapping[str, str] | None = None) -> Any:
        result = self.cli(*args, "--json", extra_env=extra_env)
        assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout)

    def start(
        self,
        *flags: str,
        extra_env: Mapping[str, str] | None = None,
        nofile: tuple[int, int] | None = None,
        wait: bool = True,
    ) -> int:
        """Start ``run`` in the background and wait until its socket answers; return its pid.

        ``nofile`` is the (soft, hard) descriptor limit it starts with, as a client's would be.
        ``wait=False`` returns at once (a fault injected during its start-up needs that).
        """

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        popen = subprocess.Popen(
            [*SUPERVISOR, "run", "--root", str(self.root), *flags],
            env=self.env(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # One setrlimit call in the child, as the supervisor does for its daemons.
            preexec_fn=limit_descriptors if nofile is not None else None,  # noqa: PLW1509
        )
        self._popens.append(popen)
        identity = read_identity(popen.pid)
        if identity is not None:
            self.seen[popen.pid] = identity
        if wait:
            self.wait_ready()
        return popen.pid

    def wait_exit(self, pid: int, timeout: float) -> int:
        """The exit code of a supervisor :meth:`start` started, once it exited by itself."""
        popen = next(p for p in self._popens if p.pid == pid)
        return popen.wait(timeout=timeout)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """Entries of ``R/supervisor/supervisor.log`` (JSON lines) named ``event``."""
        path = self.root / "supervisor" / "supervisor.log"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == event:
                entries.append(entry)
        return entries

    def wait_ready(self, timeout: float = 30) -> None:
        eventually(
            lambda: self.cli("status").returncode == 0,
            what=f"a supervisor answering for {self.root}",
            timeout=timeout,
        )

    def remember(self) -> None:
        for pid in supervisor_pids(self.root):
            identity = read_identity(pid)
            if identity is not None:
                self.seen.setdefault(pid, identity)

    def pids(self) -> list[int]:
        return supervisor_pids(self.root)

    def kill_all(self) -> None:
        """Stop every supervisor this harness saw, by pid and only if it is still that process."""
        self.remember()
        for identity in self.seen.values():
            _stop_by_pid(identity)
        for popen in self._popens:
            if popen.poll() is None:
                # Still running, never seen as this root's supervisor (it exits refusing the
                # root, say, or was caught between its start and the look above): our own
                # unreaped child, so its Popen signals that very process. Reaped either way,
                # never dropped running (a ResourceWarning at whichever test runs next).
                popen.terminate()
                try:
                    popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(timeout=30)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill_all()

"""Starting a supervisor for a root when none answers, without races.

Thirty clients that find no supervisor at once must end with exactly one. They serialise on
``R/supervisor/autostart.lock``: the first starts a supervisor and waits until its socket
answers; the others, once they get the lock, find it answering and start nothing. The
supervisor's own flock is the second line of defence: a redundant one exits at once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._errors import SupervisorStartFailed
from ._paths import ensure_private_dir, socket_path_for_root, supervisor_dir

__all__ = ["replace_exiting_supervisor", "socket_accepts", "start_supervisor", "supervisor_command"]

COMMAND_ENV = "SPEC_KITTY_SUPERVISOR_COMMAND"


def socket_accepts(path: Path) -> bool:
    """A socket that accepts connections means a supervisor is present (and is never unlinked)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fsencode(path))
        except OSError:
            return False
        return True


def supervisor_command() -> list[str]:
    """How to start a supervisor from here: an override, this interpreter, or the console script."""
    override = os.environ.get(COMMAND_ENV, "")
    if override:
        return shlex.split(override)
    if importlib.util.find_spec("spec_kitty_supervisor") is not None:
        return [sys.executable, "-m", "spec_kitty_supervisor"]
    found = shutil.which("spec-kitty-supervisor")
    if found:
        return [found]
    raise SupervisorStartFailed(
        "cannot start a supervisor: spec-kitty-supervisor is not installed here "
        f"(install it, or set {COMMAND_ENV})"
    )


def start_supervisor(daemon_root: Path, timeout: float = 15.0) -> None:
    """Make sure a supervisor answers for ``daemon_root``, starting one if needed."""
    socket_path = socket_path_for_root(daemon_root)
    if socket_accepts(socket_path):
        return
    folder = ensure_private_dir(supervisor_dir(daemon_root))
    deadline = time.monotonic() + timeout
    fd = os.open(folder / "autostart.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SupervisorStartFailed(
                        f"another client has been starting the supervisor of {daemon_root} "
                        f"for over {timeout:.0f} s"
                    ) from None
                time.sleep(0.01)
        if socket_accepts(socket_path):
            return
        _spawn_and_wait(daemon_root, socket_path, deadline)
    finally:
        os.close(fd)


def replace_exiting_supervisor(daemon_root: Path, timeout: float = 15.0) -> None:
    """A supervisor answered ``supervisor_exiting``: wait until it has let go, then start one.

    It stops accepting first, then finishes the requests in flight, unlinks its socket and
    releases the root; a newcomer started before that would find the root still held. The
    wait is bounded: a supervisor that died on its way out leaves a socket file behind.
    """
    socket_path = socket_path_for_root(daemon_root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (socket_accepts(socket_path) or socket_path.exists()):
        time.sleep(0.01)
    start_supervisor(daemon_root)


def _spawn_and_wait(daemon_root: Path, socket_path: Path, deadline: float) -> None:
    command = [*supervisor_command(), "run", "--root", str(daemon_root), "--auto-started"]
    stderr_path = supervisor_dir(daemon_root) / "autostart.stderr"
    for attempt in range(1, 4):
        with open(stderr_path, "wb") as stderr:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise SupervisorStartFailed(f"could not run {command[0]}: {exc}") from None
        while time.monotonic() < deadline:
            if socket_accepts(socket_path):
                _let_go(process)
                return
            if process.poll() is not None:
                break
            time.sleep(0.01)
        else:
            _let_go(process)
            raise SupervisorStartFailed(
                f"the supervisor for {daemon_root} did not answer on {socket_path} in time; "
                f"see {stderr_path}"
            )
        if process.returncode != 0 or attempt == 3:
            message = stderr_path.read_text(errors="replace").strip()
            raise SupervisorStartFailed(
                f"the supervisor for {daemon_root} exited with code {process.returncode}: {message}"
            )
        # Exit 0 without a socket: a supervisor that was shutting down still held the root.
        time.sleep(0.1)


def _let_go(process: subprocess.Popen[bytes]) -> None:
    """The supervisor is its own session and outlives us; this object must not warn about it.

    Its exit status is of no interest here (it reports through its socket and logs), so the
    Popen is marked finished instead of being kept around to be waited for.
    """
    if process.poll() is None:
        process.returncode = 0

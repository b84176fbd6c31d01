"""Starting a supervisor for a root when none answers, without races.

The lock protocol (``R/supervisor/autostart.lock``, one starter, the others find it answering)
is :func:`._wire.start_supervisor`, shared verbatim with the hook in spec-kitty's environment;
this module only says which command starts a supervisor from the client library's side and
reports failures in the library's terms.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

from ._errors import SupervisorStartFailed, UnsafeDirectoryError
from ._wire import StartFailed, UnsafeDirectory, socket_accepts
from ._wire import replace_exiting_supervisor as _replace_exiting_supervisor
from ._wire import start_supervisor as _start_supervisor

__all__ = ["replace_exiting_supervisor", "socket_accepts", "start_supervisor", "supervisor_command"]

COMMAND_ENV = "SPEC_KITTY_SUPERVISOR_COMMAND"


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
    try:
        _start_supervisor(daemon_root, supervisor_command, timeout)
    except StartFailed as exc:
        raise SupervisorStartFailed(str(exc)) from None
    except UnsafeDirectory as exc:
        raise UnsafeDirectoryError(str(exc)) from None


def replace_exiting_supervisor(daemon_root: Path, timeout: float = 15.0) -> None:
    """A supervisor answered ``supervisor_exiting``: wait until it has let go, then start one."""
    try:
        _replace_exiting_supervisor(daemon_root, supervisor_command, timeout)
    except StartFailed as exc:
        raise SupervisorStartFailed(str(exc)) from None
    except UnsafeDirectory as exc:
        raise UnsafeDirectoryError(str(exc)) from None

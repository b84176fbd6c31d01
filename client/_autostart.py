"""Starting a supervisor for a root when none answers, without races.

The lock protocol (``R/supervisor/autostart.lock``, one starter, the others find it answering)
is :func:`._wire.start_supervisor`, shared verbatim with the hook in spec-kitty's environment;
this module only says which command starts a supervisor from the client library's side and
reports failures in the library's terms.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from ._errors import (
    SupervisorExiting,
    SupervisorStartFailed,
    SupervisorUnavailable,
    UnsafeDirectoryError,
)
from ._transport import Reply, SyncTransport, raise_for_reply
from ._wire import (
    StartFailed,
    UnsafeDirectory,
    socket_accepts,
    socket_path_for_root,
    started_supervisor_wrote,
)
from ._wire import replace_exiting_supervisor as _replace_exiting_supervisor
from ._wire import start_supervisor as _start_supervisor

__all__ = [
    "handed_request",
    "replace_exiting_supervisor",
    "request_or_start",
    "socket_accepts",
    "start_supervisor",
    "supervisor_command",
]

COMMAND_ENV = "SPEC_KITTY_SUPERVISOR_COMMAND"

#: How often a request that found no supervisor starts one (or looks again) and asks again.
#: A supervisor killed while it served us still accepts connections for a moment while the
#: kernel closes its sockets (its last thread exits after the main one), so a look may find
#: it "there", and the request then fails once more; the next look finds it gone and starts
#: one. Three: the supervisor this very call started may be the one killed while it served
#: the request (tests/chaos/test_early_spawn_kill.py kills it before its first daemon is
#: journaled), which costs one look, and the dying socket another. Only ``ensure`` and
#: ``health`` may start a supervisor, and both are safe to ask again.
START_ATTEMPTS = 3

ENSURE_PATH = "/v1/sync/ensure"


def supervisor_command() -> list[str]:
    """How to start a supervisor from here: an override, this interpreter, or the console script."""
    # Imported where needed: only starting a supervisor needs them, never the one call's warm
    # path; and shutil (with bz2 and lzma) would delay the usual start by a few milliseconds.
    import importlib.util

    override = os.environ.get(COMMAND_ENV, "")
    if override:
        import shlex

        return shlex.split(override)
    if importlib.util.find_spec("spec_kitty_supervisor") is not None:
        return [sys.executable, "-m", "spec_kitty_supervisor"]
    import shutil

    found = shutil.which("spec-kitty-supervisor")
    if found:
        return [found]
    raise SupervisorStartFailed(
        "cannot start a supervisor: spec-kitty-supervisor is not installed here "
        f"(install it, or set {COMMAND_ENV})"
    )


def start_supervisor(
    daemon_root: Path, timeout: float = 15.0, first_request: bytes | None = None
) -> None:
    """Make sure a supervisor answers for ``daemon_root``, starting one if needed.

    ``first_request``: the ``ensure`` body the caller sends next (see ``_wire.start_supervisor``).
    """
    try:
        _start_supervisor(daemon_root, supervisor_command, timeout, first_request)
    except StartFailed as exc:
        raise SupervisorStartFailed(str(exc)) from None
    except UnsafeDirectory as exc:
        raise UnsafeDirectoryError(str(exc)) from None


def replace_exiting_supervisor(
    daemon_root: Path, timeout: float = 15.0, first_request: bytes | None = None
) -> None:
    """A supervisor answered ``supervisor_exiting``: wait until it has let go, then start one."""
    try:
        _replace_exiting_supervisor(daemon_root, supervisor_command, timeout, first_request)
    except StartFailed as exc:
        raise SupervisorStartFailed(str(exc)) from None
    except UnsafeDirectory as exc:
        raise UnsafeDirectoryError(str(exc)) from None


def handed_request(method: str, path: str, body: bytes | None) -> bytes | None:
    """What a started supervisor is handed of the request that needs it: an ``ensure`` only."""
    return body if (method, path) == ("POST", ENSURE_PATH) else None


def request_or_start(
    transport: SyncTransport,
    daemon_root: Path,
    method: str,
    path: str,
    body: bytes | None,
    *,
    may_start: bool,
    before_start: Callable[[], object] | None = None,
) -> Reply:
    """One request; when no supervisor answers (or it is leaving) and ``may_start``, start one
    and ask again. Returns the successful reply; an error answer is raised as our exception.

    Standard library and this package's light modules only: the one-call
    ``ensure_sync_daemon`` rides on it without importing pydantic.
    """
    try:
        reply = transport.request(method, path, body)
        raise_for_reply(reply)
        return reply
    except SupervisorUnavailable as exc:
        if not may_start:
            raise
        failure = exc
    if before_start is not None:
        before_start()  # refuses what no supervisor could serve, before starting one
    handed = handed_request(method, path, body)
    for attempt in range(1, START_ATTEMPTS + 1):
        if isinstance(failure, SupervisorExiting):
            transport.close()
            replace_exiting_supervisor(daemon_root, first_request=handed)
        else:
            start_supervisor(daemon_root, first_request=handed)
        transport.follow(socket_path_for_root(daemon_root))
        try:
            reply = transport.request(method, path, body)
            raise_for_reply(reply)
            return reply
        except SupervisorUnavailable as exc:
            if attempt == START_ATTEMPTS:
                # A supervisor that died starting (a broken install) said why on its stderr.
                wrote = started_supervisor_wrote(daemon_root)
                if wrote:
                    raise SupervisorStartFailed(
                        f"{exc}; the supervisor started for {daemon_root} wrote: {wrote}"
                    ) from None
                raise
            failure = exc
    raise AssertionError("unreachable: the last attempt returns or raises")

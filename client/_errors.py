"""Every failure the client (and the supervisor's CLI) can report.

```
SupervisorError
├── SupervisorUnavailable      no supervisor answers on the root's socket
│   ├── SupervisorStartFailed  one was started for you, but it never became ready
│   └── SupervisorExiting      it answered ``supervisor_exiting``: retry (starting a new one)
├── SupervisorBusy             a supervisor is there, but its backlog stayed full until the deadline
├── ProtocolMismatch           client and supervisor speak incompatible protocol versions
├── UnsafeDirectoryError       a folder we would trust is another user's or writable by others
├── InvalidDaemonRoot          the daemon root is a file or a dangling link (nothing created)
├── SpecKittyNotFound          no spec-kitty interpreter or spec-kitty-cli version could be found
└── RequestFailed              the supervisor answered with an error (``code``, ``message``)
    ├── SpawnFailed            a sync daemon could not be started (carries its log's tail)
    ├── RootQuarantined        the root's daemon kept dying; restart or another interpreter
    ├── RequestConflict        it conflicts with what runs now (an upstream CLI holds the
    │                          lock, the daemon is being retired): a later retry may succeed
    └── InvalidRequest         the request was malformed or named nothing that exists
```

The class follows the error *code*, never the HTTP status: only ``supervisor_exiting`` means
"this supervisor is going away, retry", so only it is a :class:`SupervisorUnavailable` (which
the client answers by starting a supervisor when it may). A 503 ``root_quarantined``,
``state_not_writable`` or ``root_file_refused`` is a :class:`RequestFailed`: retrying or
starting another supervisor cannot fix it. A code this client does not know (a newer
supervisor's) is a plain :class:`RequestFailed`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidDaemonRoot",
    "InvalidRequest",
    "RequestConflict",
    "ProtocolMismatch",
    "RequestFailed",
    "RootQuarantined",
    "SpawnFailed",
    "SupervisorBusy",
    "SupervisorError",
    "SupervisorExiting",
    "SupervisorStartFailed",
    "SupervisorUnavailable",
    "UnsafeDirectoryError",
]


class SupervisorError(Exception):
    """Base class of every error this package raises."""


class SupervisorUnavailable(SupervisorError, ConnectionError):
    """Raised when nothing accepts connections on the root's control socket."""


class SupervisorStartFailed(SupervisorUnavailable):
    """Raised when an auto-started supervisor did not become ready in time."""


class SupervisorExiting(SupervisorUnavailable):
    """Raised when the supervisor answered that it is shutting down (``supervisor_exiting``)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.code = "supervisor_exiting"
        self.status = status


class SupervisorBusy(SupervisorError, TimeoutError):
    """Raised when the socket's connection backlog stayed full (EAGAIN) until the deadline.

    Not a :class:`SupervisorUnavailable`: a full backlog proves a supervisor listens, so
    starting another one would only find the root locked.
    """


class ProtocolMismatch(SupervisorError):
    """Raised when the client and the supervisor speak incompatible protocol versions."""


class UnsafeDirectoryError(SupervisorError, PermissionError):
    """Raised when a folder we would trust is another user's or writable by group or others."""


class InvalidDaemonRoot(SupervisorError, ValueError):
    """Raised, before anything is created, for a daemon root that is a file or a dangling link."""


class RequestFailed(SupervisorError):
    """Raised when the supervisor answers a request with an error document."""

    def __init__(
        self, code: str, message: str, status: int, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}


class SpawnFailed(RequestFailed):
    """Raised when the supervisor could not start a sync daemon; ``log_tail`` says why."""

    @property
    def log_tail(self) -> str:
        return str(self.details.get("log_tail", ""))


class RootQuarantined(RequestFailed):
    """Raised when the root is quarantined after repeated daemon deaths."""


class RequestConflict(RequestFailed):
    """Raised when the request conflicts with what the supervisor is doing now (a 409)."""


class InvalidRequest(RequestFailed):
    """Raised when the supervisor rejected a request as malformed or impossible."""


_BY_CODE: dict[str, type[RequestFailed]] = {
    "spawn_failed": SpawnFailed,
    "no_free_port": SpawnFailed,
    "root_quarantined": RootQuarantined,
    "already_retiring": RequestConflict,
    "retire_failed": RequestConflict,
    "legacy_lock_busy": RequestConflict,
    "invalid_request": InvalidRequest,
    "invalid_json": InvalidRequest,
    "invalid_python": InvalidRequest,
    "invalid_cwd": InvalidRequest,
    "invalid_env": InvalidRequest,
    "unsupported_root": InvalidRequest,
    "no_sync_daemon": InvalidRequest,
    "version_mismatch": InvalidRequest,
    "no_such_daemon": InvalidRequest,
    "not_found": InvalidRequest,
    "method_not_allowed": InvalidRequest,
    "bad_http": InvalidRequest,
    "body_too_large": InvalidRequest,
}


def error_from_response(
    code: str, message: str, status: int, details: dict[str, Any] | None
) -> SupervisorError:
    """The exception for an error document, chosen by its code (never by its status)."""
    if code == "supervisor_exiting":
        return SupervisorExiting(message, status)
    return _BY_CODE.get(code, RequestFailed)(code, message, status, details)

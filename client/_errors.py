"""Every failure the client (and the supervisor's CLI) can report.

```
SupervisorError
├── SupervisorUnavailable      no supervisor answers on the root's socket
│   └── SupervisorStartFailed  one was started for you, but it never became ready
├── ProtocolMismatch           client and supervisor speak incompatible protocol versions
├── UnsafeDirectoryError       a folder we would trust is another user's or writable by others
├── SpecKittyNotFound          no spec-kitty interpreter or spec-kitty-cli version could be found
└── RequestFailed              the supervisor answered with an error (``code``, ``message``)
    ├── SpawnFailed            a sync daemon could not be started (carries its log's tail)
    ├── RootQuarantined        the root's daemon kept dying; restart or another interpreter
    └── InvalidRequest         the request was malformed or named nothing that exists
```
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidRequest",
    "ProtocolMismatch",
    "RequestFailed",
    "RootQuarantined",
    "SpawnFailed",
    "SupervisorError",
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


class ProtocolMismatch(SupervisorError):
    """Raised when the client and the supervisor speak incompatible protocol versions."""


class UnsafeDirectoryError(SupervisorError, PermissionError):
    """Raised when a folder we would trust is another user's or writable by group or others."""


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


class InvalidRequest(RequestFailed):
    """Raised when the supervisor rejected a request as malformed or impossible."""


_BY_CODE: dict[str, type[RequestFailed]] = {
    "spawn_failed": SpawnFailed,
    "root_quarantined": RootQuarantined,
}


def error_from_response(
    code: str, message: str, status: int, details: dict[str, Any] | None
) -> RequestFailed:
    """Map an error document to the most specific exception class."""
    if code in _BY_CODE:
        return _BY_CODE[code](code, message, status, details)
    if 400 <= status < 500:
        return InvalidRequest(code, message, status, details)
    return RequestFailed(code, message, status, details)

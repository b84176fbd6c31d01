"""Every refusal the supervisor's core gives a request, named by a machine-readable code.

The core (the lifecycle, spawning, retiring) raises :class:`LifecycleError` with a code and a
sentence; it knows nothing of HTTP. Only the routes (:mod:`._app`) turn a code into a status,
through one table, so that no request can end in a 500 because some step raised something
the route did not expect. The client maps the same codes back to its exceptions
(``client/_errors.py``), by code and never by status.

```
LifecycleError (RuntimeError)   code, message, details
  invalid_python, invalid_cwd, invalid_env, unsupported_root,   the request cannot be served
  no_sync_daemon, version_mismatch
  no_such_daemon                                                it names no supervised daemon
  already_retiring, retire_failed, legacy_lock_busy              it conflicts with what runs now
  spawn_failed                                                  the daemon never became healthy
  no_free_port, root_quarantined, state_not_writable,           the root cannot serve now
  root_file_refused, supervisor_exiting
```

Around the core, the socket's HTTP layer (``supervisor/_api.py``) answers a few codes of its
own, for requests that never reached a route or that no route could take
(:data:`RequestErrorCode`). Both lists together are every code an answer can carry; they are
written into ``docs/protocol.schema.json`` (``error_codes``), and a test keeps the three in
step (``tests/unit/test_error_codes.py``).

```
bad_http, invalid_json, invalid_request,     the request is malformed
not_found, method_not_allowed                it names no endpoint
peer_refused                                 it came from another user
protocol_mismatch                            client and supervisor speak different protocols
internal_error                               the last resort (500): a bug, never a refusal
```

Pure: standard library only, no I/O (a wall: tests/unit/test_walls.py); pure decision
modules may raise these.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ErrorCode", "LifecycleError", "RequestErrorCode"]

ErrorCode = Literal[
    "invalid_python",
    "invalid_cwd",
    "invalid_env",
    "unsupported_root",
    "no_sync_daemon",
    "version_mismatch",
    "no_such_daemon",
    "already_retiring",
    "retire_failed",
    "legacy_lock_busy",
    "spawn_failed",
    "no_free_port",
    "root_quarantined",
    "state_not_writable",
    "root_file_refused",
    "supervisor_exiting",
]

RequestErrorCode = Literal[
    "bad_http",
    "invalid_json",
    "invalid_request",
    "not_found",
    "method_not_allowed",
    "peer_refused",
    "protocol_mismatch",
    "internal_error",
]


class LifecycleError(RuntimeError):
    """Raised for a request the lifecycle cannot satisfy; ``code`` is the API error code."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.details = details or {}

"""``ensure_sync_daemon()``: the one call a spec-kitty process makes, on the standard-library wire.

A CLI process calls it once, so what a user pays is the process's start, this package's
import, one connection and one request. Nothing on that path may cost more than the round
trip itself: the request is built with :mod:`json` (no pydantic model, no validation the
supervisor does again anyway), no version is sent unless the caller gave one (the supervisor
reads each interpreter's spec-kitty-cli version itself and keeps it), and no subprocess runs
unless no supervisor answers (then the interpreter is checked before one is started).

The answer is an :class:`EnsureAnswer`: the fields of :class:`EnsureResponse`, read from the
JSON without pydantic, whose import alone costs a fresh process many times the rest of this
path (docs/adr/0007-one-call-path-without-pydantic.md has the figures).
:meth:`EnsureAnswer.to_model` gives the pydantic model to a caller that wants one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ._autostart import request_or_start
from ._discover import check_spec_kitty_interpreter, spec_kitty_python
from ._errors import ProtocolMismatch
from ._paths import resolve_daemon_root, socket_path_for_root
from ._transport import SyncTransport
from ._wire import passed_environment

if TYPE_CHECKING:
    from ._models import EnsureResponse

__all__ = [
    "DEFAULT_TIMEOUT",
    "DaemonAnswer",
    "EnsureAnswer",
    "ask_running_supervisor",
    "ensure_request_body",
    "ensure_sync_daemon",
]

#: The same bound as :class:`SupervisorClient`'s default: a cold spawn may wait for upstream's
#: whole health wait.
DEFAULT_TIMEOUT = 120.0


class DaemonAnswer(NamedTuple):
    """The daemon an ``ensure`` answered with: :class:`DaemonView`'s fields, token included."""

    pid: int
    port: int
    url: str
    package_version: str
    python: str
    origin: str
    state: str
    role: str
    started_at: str
    last_healthy_at: str | None = None
    token: str | None = None


_DAEMON_REQUIRED: dict[str, type] = {
    "pid": int,
    "port": int,
    "url": str,
    "package_version": str,
    "python": str,
    "origin": str,
    "state": str,
    "role": str,
    "started_at": str,
}


def _field(document: Any, name: str, kind: type, *, optional: bool = False) -> Any:
    value = document.get(name) if optional else document[name]
    # type(), not isinstance(): a bool is an int to isinstance, and a pid of ``true`` is not one.
    if (optional and value is None) or type(value) is kind:
        return value
    raise TypeError(f"{name} is {value!r}, not {kind.__name__}")


class EnsureAnswer(NamedTuple):
    """What :func:`ensure_sync_daemon` returns: :class:`EnsureResponse`'s fields, no pydantic."""

    action: str
    daemon: DaemonAnswer
    message: str = ""

    @classmethod
    def from_json(cls, body: bytes) -> EnsureAnswer:
        """Read an ``ensure`` answer; unknown fields are ignored, as the models ignore them.

        An answer without these fields, or with values of another type, is not protocol v1's:
        :class:`ProtocolMismatch`.
        """
        try:
            document = json.loads(body)
            daemon = document["daemon"]
            return cls(
                action=_field(document, "action", str),
                daemon=DaemonAnswer(
                    **{name: _field(daemon, name, kind) for name, kind in _DAEMON_REQUIRED.items()},
                    last_healthy_at=_field(daemon, "last_healthy_at", str, optional=True),
                    token=_field(daemon, "token", str, optional=True),
                ),
                message=_field(document, "message", str, optional=True) or "",
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolMismatch(
                f"the supervisor's ensure answer is not protocol v1's ({exc!r}); "
                "upgrade spec-kitty-supervisor so that client and supervisor match"
            ) from None

    def to_model(self) -> EnsureResponse:
        """The same answer as the client's pydantic :class:`EnsureResponse` (imports pydantic)."""
        from ._models import EnsureResponse

        return EnsureResponse.model_validate(
            {"action": self.action, "daemon": self.daemon._asdict(), "message": self.message}
        )


def ensure_request_body(python: str, version: str | None, cwd: str) -> bytes:
    """The ``POST /v1/sync/ensure`` body: what ``EnsureRequest`` would serialise.

    The supervisor validates it strictly (an invalid one is refused with ``invalid_request``,
    raised here as :class:`InvalidRequest`, exactly as the client's own validation would).
    """
    document: dict[str, object] = {
        "python": python,
        "cwd": cwd,
        "env": passed_environment(os.environ),
    }
    if version is not None:
        document["package_version"] = version
    return json.dumps(document).encode()


def ensure_sync_daemon(
    python: str | None = None,
    version: str | None = None,
    root: str | os.PathLike[str] | Path | None = None,
) -> EnsureAnswer:
    """One call: the root's sync daemon, with url, port, token, pid and what the supervisor did.

    ``python=None`` means the interpreter of the ``spec-kitty`` command on PATH; the
    supervisor reads the spec-kitty-cli version installed for it (``version``, when given,
    must be that one)::

        answer = ensure_sync_daemon()
        requests.post(answer.daemon.url + "/api/sync/trigger", json={"token": answer.daemon.token})
    """
    interpreter = python or spec_kitty_python()
    daemon_root = resolve_daemon_root(root)
    # One request (two when a supervisor must be started first): each on its own connection.
    transport = SyncTransport(socket_path_for_root(daemon_root), DEFAULT_TIMEOUT, keep_alive=False)
    try:
        reply = request_or_start(
            transport,
            daemon_root,
            "POST",
            "/v1/sync/ensure",
            ensure_request_body(interpreter, version, os.getcwd()),
            may_start=True,
            before_start=lambda: check_spec_kitty_interpreter(interpreter, version),
        )
    finally:
        transport.close()
    return EnsureAnswer.from_json(reply.body)


def ask_running_supervisor(
    root: str | os.PathLike[str] | Path | None,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """One request to the root's running supervisor, on the same wire: its answer's body.

    Never starts a supervisor: raises :class:`SupervisorUnavailable` when none answers, and
    an error answer as this package's exception. For a command that reads an answer as JSON
    and need not pay for the models (``spec-kitty-supervisor doctor``).
    """
    daemon_root = resolve_daemon_root(root)
    transport = SyncTransport(socket_path_for_root(daemon_root), timeout)
    try:
        reply = request_or_start(transport, daemon_root, method, path, body, may_start=False)
    finally:
        transport.close()
    return reply.body

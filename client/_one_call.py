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
    # The body is a function of these arguments and of the environment alone: a process that
    # asks again with the same ones and an environment equal to the one it last sent (compared
    # whole, entry by entry, in C: a fraction of filtering it again) sends the same bytes.
    environ = _environ_bytes()
    last = _Last.body
    if (
        last is not None
        and environ is not None
        and last.python == python
        and last.version == version
        and last.cwd == cwd
        and last.environ == environ
    ):
        return last.body
    document: dict[str, object] = {
        "python": python,
        "cwd": cwd,
        "env": passed_environment(os.environ),
    }
    if version is not None:
        document["package_version"] = version
    body = json.dumps(document).encode()
    if environ is not None:
        _Last.body = _SentBody(python, version, cwd, dict(environ), body)
    return body


class _SentBody(NamedTuple):
    python: str
    version: str | None
    cwd: str
    #: A copy of ``os.environ``'s own bytes when the body was built.
    environ: dict[bytes, bytes]
    body: bytes


class _Last:
    """What this process last sent and read: one slot each (a process asks for its daemon
    with the same arguments every time; another call only replaces the slot)."""

    body: _SentBody | None = None
    answer: tuple[bytes, EnsureAnswer] | None = None


def _environ_bytes() -> dict[bytes, bytes] | None:
    """``os.environ``'s own mapping, which every change through ``os.environ`` updates; None
    where it is not the bytes a POSIX process was given (the body is then always built)."""
    if os.name != "posix":
        return None
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else None


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
    return _read_answer(reply.body)


def _read_answer(body: bytes) -> EnsureAnswer:
    """:meth:`EnsureAnswer.from_json`, which is a function of the bytes alone: an answer
    byte for byte the same as the last one (a warm ``ensure`` between two heartbeats) is
    read as the same immutable :class:`EnsureAnswer`, without parsing it again. The
    supervisor is still asked every time; only the reading of its identical answer is saved.
    """
    last = _Last.answer
    if last is not None and last[0] == body:
        return last[1]
    answer = EnsureAnswer.from_json(body)
    _Last.answer = (body, answer)
    return answer


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

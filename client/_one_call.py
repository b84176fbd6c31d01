"""``ensure_sync_daemon()``: the one call a spec-kitty process makes, on the standard-library wire.

A CLI process calls it once, so what a user pays is the process's start, this package's
import, one connection and one request. Nothing on that path may cost more than the round
trip itself: the request is built with :mod:`json` (no pydantic model, no validation the
supervisor does again anyway), no version is sent unless the caller gave one (the supervisor
reads each interpreter's spec-kitty-cli version itself and keeps it), and no subprocess runs
unless no supervisor answers (then the interpreter is checked before one is started).

The answer is the documented :class:`EnsureResponse`. Its module, and pydantic with it, is
imported only once the supervisor has answered (docs/adr/0013-one-call-path.md says why and
what it costs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._autostart import request_or_start
from ._discover import check_spec_kitty_interpreter, spec_kitty_python
from ._paths import resolve_daemon_root, socket_path_for_root
from ._transport import SyncTransport
from ._wire import passed_environment

if TYPE_CHECKING:
    from ._models import EnsureResponse

__all__ = ["DEFAULT_TIMEOUT", "ensure_request_body", "ensure_sync_daemon"]

#: The same bound as :class:`SupervisorClient`'s default: a cold spawn may wait for upstream's
#: whole health wait.
DEFAULT_TIMEOUT = 120.0


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
) -> EnsureResponse:
    """One call: the root's sync daemon, with url, port, token, pid and what the supervisor did.

    ``python=None`` means the interpreter of the ``spec-kitty`` command on PATH; the
    supervisor reads the spec-kitty-cli version installed for it (``version``, when given,
    must be that one)::

        answer = ensure_sync_daemon()
        requests.post(answer.daemon.url + "/api/sync/trigger", json={"token": answer.daemon.token})
    """
    interpreter = python or spec_kitty_python()
    daemon_root = resolve_daemon_root(root)
    transport = SyncTransport(socket_path_for_root(daemon_root), DEFAULT_TIMEOUT)
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
    from ._models import EnsureResponse

    return EnsureResponse.model_validate_json(reply.body)

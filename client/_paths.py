"""Where things live: the daemon root, the supervisor's folder and its control socket.

These are the only functions that derive these paths; the supervisor, the client, the service
units and the hook installed into spec-kitty all call them, so they can never disagree about
where a root's socket is. They are written in :mod:`._wire` (standard library only, copied
into spec-kitty's environment by ``integrate``) and re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from ._wire import (
    SOCKET_PATH_LIMIT,
    UnsafeDirectory,
    resolve_daemon_root,
    socket_path_for_root,
    supervisor_dir,
)
from ._wire import ensure_private_dir as _ensure_private_dir

__all__ = [
    "SOCKET_PATH_LIMIT",
    "ensure_private_dir",
    "resolve_daemon_root",
    "socket_path_for_root",
    "supervisor_dir",
]


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and prove it is private to this user.

    Raises :class:`UnsafeDirectoryError` when the folder belongs to another user or is writable
    by group or others: a supervisor or client that trusted such a folder could be handed a
    socket or lock file by someone else.
    """
    from ._errors import UnsafeDirectoryError

    try:
        return _ensure_private_dir(path)
    except UnsafeDirectory as exc:
        raise UnsafeDirectoryError(str(exc)) from None

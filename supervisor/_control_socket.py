"""Binding the root's control socket: the one function the first stage and the runner share.

Light on purpose (standard library and the client's wire module): the first stage binds the
socket before the heavy imports (docs/adr/0015), and the runner binds it itself when there
was no first stage, or when self-fencing restores a socket file that vanished.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from spec_kitty_supervisor_client._wire import socket_accepts

__all__ = ["SocketTaken", "bind_control_socket"]


class SocketTaken(RuntimeError):
    """Raised when the socket path accepts connections although we hold the root's lock."""


def bind_control_socket(path: Path) -> socket.socket:
    """A listening socket at ``path``, 0600 from its first moment; call holding the root's lock.

    A socket file that accepts connections means a supervisor is present and is never
    unlinked (:class:`SocketTaken`); one that accepts nothing is a leftover of a supervisor
    that died, and is replaced.
    """
    if path.exists() or path.is_symlink():
        if socket_accepts(path):
            raise SocketTaken(
                f"{path} accepts connections although we hold the root's lock; refusing "
                "to take it over"
            )
        path.unlink()  # nothing accepts on it: a leftover of a supervisor that died
    old_umask = os.umask(0o177)  # no moment where the socket is connectable by others
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fsencode(path))
            os.chmod(path, 0o600)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
    finally:
        os.umask(old_umask)
    return sock

"""Where things live: the daemon root, the supervisor's folder and its control socket.

These are the only functions that derive these paths; the supervisor, the client and the
service units all call them, so they can never disagree about where a root's socket is.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

__all__ = [
    "SOCKET_PATH_LIMIT",
    "resolve_daemon_root",
    "socket_path_for_root",
    "supervisor_dir",
]

#: ``sizeof(sockaddr_un.sun_path)`` minus the terminating NUL byte.
SOCKET_PATH_LIMIT = 103 if sys.platform == "darwin" else 107


def resolve_daemon_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the daemon root exactly as spec-kitty (3.2.3+) derives it.

    An explicit ``root`` wins; else ``$SPEC_KITTY_HOME`` when set and non-empty; else
    ``~/.spec-kitty``. The result is ``Path.resolve()``d, as upstream does, so that the
    ``--spec-kitty-daemon-root=`` marker we write and compare is byte-identical to theirs.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser().resolve()
    from_env = os.environ.get("SPEC_KITTY_HOME", "")
    if from_env:
        return Path(from_env).expanduser().resolve()
    return (Path.home() / ".spec-kitty").resolve()


def supervisor_dir(daemon_root: Path) -> Path:
    """The supervisor's own folder inside a daemon root (mode 0700)."""
    return daemon_root / "supervisor"


def _root_digest(daemon_root: Path) -> str:
    return hashlib.sha256(os.fsencode(daemon_root)).hexdigest()[:16]


def _short_socket_dirs() -> list[Path]:
    candidates = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and Path(runtime_dir).is_dir():
        candidates.append(Path(runtime_dir) / "spec-kitty-supervisor")
    candidates.append(Path("/tmp") / f"spec-kitty-supervisor-{os.getuid()}")
    return candidates


def socket_path_for_root(daemon_root: Path) -> Path:
    """The control socket of the supervisor that owns ``daemon_root``.

    Normally ``R/supervisor/supervisor.sock``. A Unix socket path longer than the platform
    limit cannot be bound, so a deep root falls back to a short per-user path, under
    ``$XDG_RUNTIME_DIR`` when there is one, named by a digest of the root so that two roots
    never share a socket. The caller that creates the fallback folder makes it 0700 and checks
    that it owns it (:func:`spec_kitty_supervisor_client.ensure_private_dir`).
    """
    preferred = supervisor_dir(daemon_root) / "supervisor.sock"
    if len(os.fsencode(preferred)) <= SOCKET_PATH_LIMIT:
        return preferred
    name = f"{_root_digest(daemon_root)}.sock"
    for folder in _short_socket_dirs():
        if len(os.fsencode(folder / name)) <= SOCKET_PATH_LIMIT:
            return folder / name
    return _short_socket_dirs()[-1] / name


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and prove it is private to this user.

    Raises :class:`UnsafeDirectoryError` when the folder belongs to another user or is writable
    by group or others: a supervisor or client that trusted such a folder could be handed a
    socket or lock file by someone else.
    """
    from ._errors import UnsafeDirectoryError

    # mkdir's mode applies to the last folder only: create the parent (a new daemon root)
    # private too, rather than with the umask's 0755.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not _is_dir_mode(info.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise UnsafeDirectoryError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
            "refusing to use it"
        )
    if info.st_mode & 0o022:
        raise UnsafeDirectoryError(
            f"{path} is writable by group or others (mode {info.st_mode & 0o777:04o}); "
            f"run `chmod 700 {path}`"
        )
    return path


def _is_dir_mode(mode: int) -> bool:
    import stat

    return stat.S_ISDIR(mode)

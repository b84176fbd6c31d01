"""Durable small files: every state change is written atomically before it is acted on.

One function writes them all: a temporary file in the same folder, fsync, then
rename over the target, then fsync the folder so the rename itself survives a crash.

One function reads them all at start-up (:func:`read_regular_file`): a FIFO would block the
supervisor forever after it took the root's lock, a symlink could point anywhere (a device, a
FIFO elsewhere, another user's file), a directory cannot be replaced atomically. Such a file is
refused, and the caller moves it aside (:func:`move_refused_aside`) and starts from what is alive.

Upstream's own files in the root (``R/sync-daemon.lock``, ``R/sync-daemon.log``) are opened by
:func:`open_upstream_file` under the same rules, but a refused one is left where it is: it is
upstream's and the user's (a symlinked log may be on purpose), so the supervisor says what it
found and does not act through it, and the user moves it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from spec_kitty_supervisor_client._wire import (
    NOT_A_FILE_ERRNOS,
    describe_mode,
    open_own_file,
    refusal,
)

from ._errors import LifecycleError

__all__ = [
    "RefusedFile",
    "atomic_write",
    "refusal",
    "upstream_file_refused",
    "move_aside",
    "move_refused_aside",
    "open_own_file",
    "open_upstream_file",
    "read_regular_file",
]


class RefusedFile(OSError):
    """Raised when a file to be read is not a regular file of reasonable size.

    ``kind`` says what it is instead ("a FIFO", "a directory", "a symbolic link", ...);
    ``st_ino``/``st_dev`` identify the entry that was refused (None when it could not be seen).
    """

    def __init__(self, path: Path, kind: str, identity: tuple[int, int] | None) -> None:
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path = path
        self.kind = kind
        self.identity = identity


def open_upstream_file(path: Path, flags: int, *, single_link: bool) -> int:
    """Open (creating it if needed) one of upstream's files in the root; return the fd.

    Never through a final symlink, never blocking on a FIFO (the descriptor is blocking
    again once it is known to be a regular file, since a daemon may inherit it), and only a
    regular file of ours: anything else raises :class:`RefusedFile` and is left as it is.
    """
    if flags & os.O_TRUNC:
        raise ValueError("open_upstream_file never truncates before it knows the file is ours")
    opened = flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, opened, 0o600)
    except OSError as exc:
        if exc.errno not in NOT_A_FILE_ERRNOS:
            raise
        info = path.lstat()
        raise RefusedFile(path, describe_mode(info.st_mode), (info.st_dev, info.st_ino)) from None
    try:
        info = os.fstat(fd)
        problem = refusal(info, single_link=single_link)
        if problem is not None:
            raise RefusedFile(path, problem, (info.st_dev, info.st_ino))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def upstream_file_refused(refused: RefusedFile) -> LifecycleError:
    """The answer to a request that needed an upstream file :func:`open_upstream_file` refused."""
    return LifecycleError(
        "root_file_refused",
        f"{refused}: the supervisor opens it only as a regular file of yours, never through a "
        f"link, and does nothing that needs it. Look at what it is, move it away (mv "
        f"{refused.path} {refused.path}.moved), and retry",
        {"path": str(refused.path)},
    )


def _entry_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist.

    Opened non-blocking (a FIFO cannot stall us) and without following a final symlink; then
    refused with :class:`RefusedFile` unless it is a regular file of at most ``max_bytes``.
    Other errors (permissions, out of file descriptors) propagate as :class:`OSError`.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # ELOOP: a final symlink (EMLINK on some BSDs); ENXIO: a socket file, which
        # cannot be opened at all.
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EOPNOTSUPP):
            try:
                info = path.lstat()
            except FileNotFoundError:
                return None  # gone meanwhile
            raise RefusedFile(
                path, describe_mode(info.st_mode), (info.st_dev, info.st_ino)
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile(path, describe_mode(info.st_mode), (info.st_dev, info.st_ino))
        if info.st_uid != os.getuid():
            raise RefusedFile(path, f"a file of uid {info.st_uid}", (info.st_dev, info.st_ino))
        if info.st_size > max_bytes:
            raise RefusedFile(
                path, f"{info.st_size} bytes (more than {max_bytes})", (info.st_dev, info.st_ino)
            )
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew after the fstat
            raise RefusedFile(path, f"more than {max_bytes} bytes", (info.st_dev, info.st_ino))
        return b"".join(chunks)
    finally:
        os.close(fd)


def create_unique_file(folder: Path, prefix: str, suffix: str = "") -> tuple[int, Path]:
    """A new file of ours alone in ``folder`` (0600, opened for writing), under a random name.

    What ``tempfile.mkstemp`` does, without importing ``tempfile``: with ``random`` and
    ``shutil`` (and so ``bz2``, ``lzma``) it is a tenth of the first stage's own imports, and
    the first stage checks the root is writable before it spawns the starter's daemon.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        path = folder / f"{prefix}{os.urandom(6).hex()}{suffix}"
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue  # 48 random bits met another file's: draw again
    raise FileExistsError(errno.EEXIST, "no unused name for a new file", str(folder))


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd, temp_name = create_unique_file(path.parent, f".{path.name}.", ".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_aside(path: Path, label: str) -> Path:
    """Rename an unusable file to ``<name>.<label>-<n>``: nothing is lost and we start clean."""
    for attempt in range(1000):
        target = path.with_name(f"{path.name}.{label}-{attempt}")
        if not target.exists() and not target.is_symlink():
            os.replace(path, target)
            return target
    raise FileExistsError(f"too many {label} copies of {path}")


def move_refused_aside(refused: RefusedFile) -> Path | None:
    """Move the refused entry itself aside (a link is renamed, never followed).

    Only when the entry at the path is still the one we refused: a regular file someone
    wrote there meanwhile is left alone. Returns where it went, or None when it was not moved.
    """
    if refused.identity is None or _entry_identity(refused.path) != refused.identity:
        return None
    return move_aside(refused.path, "refused")

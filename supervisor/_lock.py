"""The supervisor lock: one flock per root, held for the supervisor's whole life."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ._files import open_own_file, read_regular_file

__all__ = ["SupervisorLock"]


class SupervisorLock:
    """``R/supervisor/supervisor.lock``; its content is the holder's pid, for messages only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        #: What was found at the path instead of a lock file of ours, and moved aside.
        self.moved: str | None = None

    def try_acquire(self) -> bool:
        # Never follows a planted link and never truncates what is not ours: a symlink,
        # directory or FIFO there is moved aside and a fresh lock file made.
        fd, moved = open_own_file(self.path, os.O_RDWR)
        self.moved = moved or self.moved
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            # The pid in the file is for messages only: a full disk (or quota) must not keep
            # a supervisor from its root; it starts degraded and says so in status.
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                raise
        self._fd = fd
        return True

    def holder_pid(self) -> int | None:
        try:
            raw = read_regular_file(self.path, 64)
            return None if raw is None else int(raw.strip())
        except (OSError, ValueError):
            return None

    def still_ours(self) -> bool:
        """False when the lock file was removed or replaced: another supervisor could lock it."""
        if self._fd is None:
            return False
        try:
            on_disk = self.path.stat()
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""Durable small files: every state change is written atomically before it is acted on.

One function writes them all: a temporary file in the same folder, fsync, then
rename over the target, then fsync the folder so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "move_aside"]


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"too many {label} copies of {path}")

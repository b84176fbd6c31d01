"""Upstream's state file ``R/sync-daemon`` and its lock, written and read as upstream does."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StateRecord", "read_state_file", "write_state_file"]


@dataclass(frozen=True)
class StateRecord:
    """The four lines of ``R/sync-daemon``."""

    url: str
    port: int
    token: str
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "port": self.port, "token": self.token, "pid": self.pid}


@contextlib.contextmanager
def _legacy_lock(root: Path, timeout: float) -> Iterator[None]:
    """Hold ``R/sync-daemon.lock`` as upstream spawners do (non-blocking tries, 0.1 s apart)."""
    with open(root / "sync-daemon.lock", "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{root}/sync-daemon.lock held for {timeout} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_state_file(
    root: Path, port: int, token: str, pid: int, *, lock: bool = True, lock_timeout: float = 10.0
) -> Path:
    """Write ``R/sync-daemon`` as an upstream spawner does: 4 lines, atomic, mode 0600.

    With ``lock`` (the default) it holds ``R/sync-daemon.lock`` meanwhile, as upstream does,
    so it waits behind a supervisor that holds that lock.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    text = f"http://localhost:{port}\n{port}\n{token}\n{pid}\n"
    target = root / "sync-daemon"
    with _legacy_lock(root, lock_timeout) if lock else contextlib.nullcontext():
        fd, temp = tempfile.mkstemp(prefix=".sync-daemon.", dir=root)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    return target


def read_state_file(root: Path) -> StateRecord | None:
    """``R/sync-daemon`` parsed, or None when missing or not four valid lines."""
    try:
        lines = [line.strip() for line in (Path(root) / "sync-daemon").read_text().splitlines()]
    except (OSError, UnicodeDecodeError):
        return None
    lines = [line for line in lines if line]
    if len(lines) < 4:
        return None
    try:
        return StateRecord(url=lines[0], port=int(lines[1]), token=lines[2], pid=int(lines[3]))
    except ValueError:
        return None

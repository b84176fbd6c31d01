"""Upstream's state file ``R/sync-daemon`` and its lock ``R/sync-daemon.lock``.

Unmodified spec-kitty CLIs read this file to find the root's daemon and SIGKILL the pid it
names without checking who that pid is now. So it must only ever name a live, verified daemon
of the root (it is rewritten or removed *before* a daemon it names is stopped or reaped),
and we change it only while holding the same flock upstream
spawners take, so that we never interleave with their inspect-kill-spawn sequence.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from ._files import (
    RefusedFile,
    atomic_write,
    move_refused_aside,
    open_upstream_file,
    read_regular_file,
    upstream_file_refused,
)

__all__ = [
    "LegacyLockTimeout",
    "LegacyRecord",
    "hold_legacy_lock",
    "parse_legacy_state",
    "read_legacy_state",
    "remove_legacy_state",
    "write_legacy_state",
]


#: Upstream's file is four short lines.
MAX_LEGACY_STATE_BYTES = 64 * 1024


class LegacyLockTimeout(TimeoutError):
    """Raised when an upstream CLI held ``R/sync-daemon.lock`` longer than we wait."""


class LegacyRecord(NamedTuple):
    # A named tuple, not a dataclass: the supervisor's first stage reads this file before its
    # early spawn, and ``dataclasses`` imports ``inspect`` (tests/unit/test_lazy_imports.py).
    url: str
    port: int
    token: str
    pid: int


def read_legacy_state(path: Path) -> LegacyRecord | None:
    """The recorded singleton, or None when the file is missing or not in upstream's shape.

    An entry that is not a regular file (a FIFO would hang us, and upstream CLIs too) is moved
    aside with a logged reason, so the supervisor can write the file again.
    """
    try:
        raw = read_regular_file(path, MAX_LEGACY_STATE_BYTES)
    except RefusedFile as refused:
        moved_to = move_refused_aside(refused)
        _log().warning("legacy_state_refused", problem=str(refused), moved_to=str(moved_to))
        return None
    except PermissionError as exc:
        # Upstream's file: left where it is (it is rewritten by rename, or removed, next).
        _log().warning("legacy_state_refused", problem=f"{path}: {exc.strerror}")
        return None
    if raw is None:
        return None
    return parse_legacy_state(raw)


def parse_legacy_state(raw: bytes) -> LegacyRecord | None:
    """The record in upstream's four-line shape, or None when ``raw`` is not in it."""
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None
    if len(lines) < 4:
        return None
    try:
        return LegacyRecord(
            url=lines[0].strip(),
            port=int(lines[1]),
            token=lines[2].strip(),
            pid=int(lines[3]),
        )
    except ValueError:
        return None


def write_legacy_state(path: Path, port: int, token: str, pid: int) -> None:
    atomic_write(path, f"http://localhost:{port}\n{port}\n{token}\n{pid}\n".encode(), mode=0o600)


def remove_legacy_state(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _log() -> Any:
    # structlog is imported when something is logged: the supervisor's light first stage
    # (``_early_spawn``) reads this file before the heavy imports, and ``doctor`` reads it
    # with structlog's configuration left to the first logger (``_logging.get_logger``).
    from ._logging import get_logger

    return get_logger("spec_kitty_supervisor")


@asynccontextmanager
async def hold_legacy_lock(path: Path, timeout: float) -> AsyncIterator[None]:
    """Hold upstream's exclusive flock; poll with a short sleep, as upstream spawners do.

    Upstream may hold it for ~21 s while it waits for a daemon's health, so callers pass a
    bound and treat :class:`LegacyLockTimeout` as "an upstream CLI is busy; try later".
    A lock file that is not a regular file of ours (a FIFO would block the open, a symlink
    would lock something else) raises ``LifecycleError("root_file_refused")``.
    """
    import anyio

    try:
        fd = open_upstream_file(path, os.O_RDWR, single_link=False)
    except RefusedFile as refused:
        raise upstream_file_refused(refused) from None
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await anyio.sleep(0.02)
    except TimeoutError:
        os.close(fd)
        raise LegacyLockTimeout(f"{path} stayed locked for {timeout:.0f} s") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

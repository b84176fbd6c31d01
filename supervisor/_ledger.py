"""The event ledger: every spawn, adoption, retirement, restart and signal, bounded in size.

Kept in memory for ``/v1/events`` and appended to ``R/supervisor/events.jsonl`` so that it
survives the supervisor; the file is compacted to the newest entries when it grows past twice
the bound. Tokens never enter the ledger: records carry pid, port, version and a reason only.

A write that fails (a full disk) never fails the caller: the event is an act already done.
It stays in memory, :attr:`Ledger.behind` says why the file misses it (``status`` shows it
as degraded), the failure is logged once, and the next write (the heartbeat calls
:meth:`Ledger.catch_up`) appends what the file misses, oldest first.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import ValidationError

from spec_kitty_supervisor_client._models import EventRecord

from ._files import (
    RefusedFile,
    atomic_write,
    move_aside,
    move_refused_aside,
    open_own_file,
    read_regular_file,
)

__all__ = ["Ledger"]

log = structlog.get_logger("spec_kitty_supervisor.ledger")

#: Compaction keeps the file near twice the capacity's worth of lines; far beyond that it is
#: not our ledger, and it is moved aside rather than read.
MAX_LEDGER_BYTES = 16 * 1024 * 1024


class Ledger:
    def __init__(self, path: Path | None, capacity: int = 1000) -> None:
        self._path = path
        self._capacity = capacity
        self._events: deque[EventRecord] = deque(maxlen=capacity)
        self._lines_in_file = 0
        self._seq = 0
        #: How many of the newest events the file misses, and why (None when it has them).
        self._unwritten = 0
        self.behind: str | None = None
        #: A failed write may have left a partial last line: the next one starts a new line.
        self._torn = False
        #: False once the file is no longer ours to write (the supervisor was fenced out):
        #: events are then kept in memory only.
        self.may_write: Callable[[], bool] = lambda: True
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            raw = read_regular_file(path, MAX_LEDGER_BYTES)
        except RefusedFile as refused:
            moved_to = move_refused_aside(refused)
            log.warning("ledger_refused", problem=str(refused), moved_to=str(moved_to))
            return
        except PermissionError as exc:
            moved_to = move_aside(path, "unreadable")
            log.warning("ledger_refused", problem=f"{path}: {exc.strerror}", moved_to=str(moved_to))
            return
        if raw is None:
            return
        lines = raw.decode("utf-8", errors="replace").splitlines()
        self._lines_in_file = len(lines)
        for line in lines[-self._capacity :]:
            try:
                self._events.append(EventRecord.model_validate_json(line))
            except ValidationError:
                continue  # a torn last line after a crash: skip it, keep the rest
        if self._events:
            self._seq = self._events[-1].seq

    def record(
        self,
        kind: str,
        *,
        pid: int | None = None,
        port: int | None = None,
        package_version: str | None = None,
        reason: str = "",
    ) -> EventRecord:
        self._seq += 1
        event = EventRecord(
            seq=self._seq,
            time=datetime.now(UTC).isoformat(timespec="milliseconds"),
            kind=kind,
            pid=pid,
            port=port,
            package_version=package_version,
            reason=reason,
        )
        self._events.append(event)
        self._unwritten += 1
        self.catch_up()
        log.info(kind, pid=pid, port=port, package_version=package_version, reason=reason)
        return event

    def catch_up(self) -> None:
        """Append the events the file misses; on failure keep them and say why (never raises)."""
        if self._path is None or not self.may_write():
            # Fenced out: the file is the next supervisor's now, and nothing is owed to it.
            self._unwritten = 0
            return
        if not self._unwritten:
            return
        try:
            self._write_unwritten(self._path)
        except OSError as exc:
            reason = (
                f"cannot write {self._path}: {exc.strerror or exc}; "
                f"{self._unwritten} event(s) kept in memory only"
            )
            if self.behind is None:
                # Once, not per event: a full disk would otherwise log on every record.
                log.error("ledger_not_written", reason=reason)
            self.behind = reason
            return
        if self.behind is not None:
            log.info("ledger_written_again", reason="the events it missed are in the file now")
            self.behind = None

    def _write_unwritten(self, path: Path) -> None:
        # More than the memory holds were missed: the file gets those still in memory.
        missed = list(self._events)[-min(self._unwritten, len(self._events)) :]
        if self._lines_in_file >= 2 * self._capacity:
            body = "".join(e.model_dump_json() + "\n" for e in self._events)
            atomic_write(path, body.encode())
            self._lines_in_file = len(self._events)
            self._unwritten = 0
            self._torn = False
            return
        # Never appended through a planted link, nor to another file's hard link.
        fd, moved = open_own_file(path, os.O_WRONLY | os.O_APPEND)
        try:
            if moved is not None:
                log.warning("ledger_refused", problem=moved)
                self._lines_in_file = 0
                self._torn = False
            if self._torn:
                _write_all(fd, b"\n")  # ends the partial line a failed write left (skipped on load)
                self._torn = False
            for event in missed:
                line = (event.model_dump_json() + "\n").encode()
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    _write_all(fd, line)
                except OSError:
                    self._torn = os.lseek(fd, 0, os.SEEK_END) != start
                    raise
                self._unwritten -= 1
                self._lines_in_file += 1
        finally:
            os.close(fd)
        self._unwritten = 0

    def events(self, since: int = 0, limit: int | None = None) -> list[EventRecord]:
        selected = [e for e in self._events if e.seq > since]
        return selected[-limit:] if limit else selected

    def __iter__(self) -> Iterator[EventRecord]:
        return iter(self._events)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``; a short write (a disk filling up) raises as the next one would."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]

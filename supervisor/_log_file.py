"""The supervisor's log file: rotating, never written through a planted link (:mod:`._logging`).

Apart from :mod:`._logging` so that only a process that opens a log file imports
``logging.handlers`` (with ``pickle``): ``doctor``, which logs to stderr, does not.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from ._files import open_own_file

__all__ = ["OwnRotatingFile"]


class OwnRotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating log that never writes through a planted link or into another file.

    Opened (at start and after each rotation) by :func:`open_own_file`: a symlink, FIFO,
    directory or foreign file at the log's path is moved aside first and noted in ``moved``.
    """

    def __init__(self, path: Path) -> None:
        self.moved: list[str] = []  # before the base class opens the file
        #: Why the last record could not be written, None while writes work.
        self.failing: str | None = None
        #: Records whose write failed since ``failing`` was set.
        self.failed_writes = 0
        self._failed_now = False
        super().__init__(path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd, moved = open_own_file(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND)
        if moved is not None:
            self.moved.append(moved)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)  # a failure inside ends in handleError
        if self._failed_now or self.failing is None:
            return
        failed, self.failing, self.failed_writes = self.failed_writes, None, 0
        line = _json_line("log_written_again", "info", failed_writes=failed)
        _tell_stderr(line)
        # Reporting a log failure must never fail the code that logged.
        stream = self.stream
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.write(line)
                stream.flush()

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed_now = True
        self.failed_writes += 1
        if self.failing is not None:
            return  # said once already
        error = sys.exc_info()[1]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else repr(error)
        self.failing = f"cannot write {self.baseFilename}: {reason}"
        _tell_stderr(_json_line("log_not_written", "error", reason=self.failing))


def _json_line(event: str, level: str, **fields: object) -> str:
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({**fields, "event": event, "level": level, "timestamp": stamp}) + "\n"


def _tell_stderr(line: str) -> None:
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.write(line)
            sys.stderr.flush()

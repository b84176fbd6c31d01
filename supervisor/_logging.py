"""Structured logs: JSON lines to stderr under a service manager, else a rotating file.

Tokens never reach a log: a processor drops any field whose name says it is a token, so that a
careless ``log.info(..., token=...)`` cannot leak one.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from ._files import open_own_file

__all__ = ["configure_logging"]


def _drop_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in [k for k in event_dict if "token" in k.lower()]:
        event_dict[key] = "<redacted>"
    return event_dict


class _OwnRotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating log that never writes through a planted link or into another file.

    Opened (at start and after each rotation) by :func:`open_own_file`: a symlink, FIFO,
    directory or foreign file at the log's path is moved aside first and noted in ``moved``.
    """

    def __init__(self, path: Path) -> None:
        self.moved: list[str] = []  # before the base class opens the file
        super().__init__(path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd, moved = open_own_file(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND)
        if moved is not None:
            self.moved.append(moved)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def configure_logging(log_file: Path | None, level: int = logging.INFO) -> list[str]:
    """Send structured logs to ``log_file`` (or stderr); returns what was moved aside for it."""
    handler: logging.Handler
    moved: list[str] = []
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        file_handler = _OwnRotatingFile(log_file)
        moved = file_handler.moved
        handler = file_handler
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    return moved

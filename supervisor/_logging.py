"""Structured logs: JSON lines to stderr under a service manager, else a rotating file.

Tokens never reach a log: a processor drops any field whose name says it is a token, so that a
careless ``log.info(..., token=...)`` cannot leak one.

A log file that cannot be written (a full disk) is said once, not per line: the standard
handler would print a "--- Logging error ---" traceback to stderr for every record. Ours
writes one ``log_not_written`` line to stderr, ``status`` shows it as degraded
(:func:`log_not_written`), and the first record written again is followed, in the file and on
stderr, by ``log_written_again`` with how many writes failed meanwhile.

A command that may log nothing at all (``doctor`` observing without a supervisor) asks for
structlog's configuration to wait until something first logs (``structlog_when_used``):
structlog, which imports asyncio's and the standard library's logging machinery, is then
imported only by a first :func:`get_logger`. Unconfigured, structlog prints to stdout, where
such a command writes its report, so code on those paths logs through :func:`get_logger`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["configure_logging", "get_logger", "log_not_written"]

#: The level structlog is to be configured with by the first :func:`get_logger`, when
#: :func:`configure_logging` was asked to wait; empty once configured (or never asked).
_structlog_waiting: list[int] = []


def _drop_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in [k for k in event_dict if "token" in k.lower()]:
        event_dict[key] = "<redacted>"
    return event_dict


#: The module of the log file's handler, imported only by a process that opens a log file.
_LOG_FILE_MODULE = f"{__package__}._log_file"


def log_not_written() -> str | None:
    """Why the supervisor's log file cannot be written now, for ``status``; None when it can.

    Asked for every ``status`` (a hundred clients ask ten times a second), so the handler's
    module is looked up where it is, not imported again (an ``import`` statement in a function
    costs a call into the import system each time).
    """
    log_file = sys.modules.get(_LOG_FILE_MODULE)
    if log_file is None:
        return None  # this process never opened a log file
    for handler in logging.getLogger().handlers:
        if isinstance(handler, log_file.OwnRotatingFile) and handler.failing is not None:
            return f"{handler.failing}; {handler.failed_writes} log record(s) not written"
    return None


def configure_logging(
    log_file: Path | None, level: int = logging.INFO, *, structlog_when_used: bool = False
) -> list[str]:
    """Send structured logs to ``log_file`` (or stderr); returns what was moved aside for it.

    With ``structlog_when_used``, structlog is configured by the first :func:`get_logger`
    rather than now (at once if something imported it already).
    """
    handler: logging.Handler
    moved: list[str] = []
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        # Only a log file needs logging.handlers (with pickle and socket): a command logging
        # to stderr does not import it.
        from ._log_file import OwnRotatingFile

        file_handler = OwnRotatingFile(log_file)
        moved = file_handler.moved
        handler = file_handler
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _structlog_waiting.clear()
    if structlog_when_used and "structlog" not in sys.modules:
        _structlog_waiting.append(level)
    else:
        _configure_structlog(level)
    return moved


def get_logger(name: str) -> Any:
    """structlog's logger ``name``, structlog configured first if :func:`configure_logging`
    left that to the first logger."""
    import structlog

    if _structlog_waiting:
        _configure_structlog(_structlog_waiting.pop())
    return structlog.get_logger(name)


def _configure_structlog(level: int) -> None:
    import structlog

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

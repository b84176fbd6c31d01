"""Waiting for a condition other processes make true: the only deadline loop tests need.

A test never sleeps to let something happen and never asserts how long it took; it states the
condition and waits for it with a generous deadline, which costs time only when the test fails.
A condition may return a falsy value or raise AssertionError while it does not hold yet; on
timeout the last AssertionError (or the last value) is in the message.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

__all__ = ["DEFAULT_TIMEOUT", "aeventually", "eventually"]

#: Generous on purpose: a busy laptop or CI runner may be many times slower than a quiet one.
DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T")


def _timed_out(
    what: str, timeout: float, last: object, error: AssertionError | None
) -> AssertionError:
    detail = f": {error}" if error is not None else f" (last value: {last!r})"
    return AssertionError(f"{what} did not happen within {timeout:g} s{detail}")


def eventually(
    condition: Callable[[], _T],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
) -> _T:
    """Poll ``condition`` until it returns a truthy value, and return that value.

    ``what`` names the awaited event for the failure message (``"the daemon to exit"``).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: AssertionError | None = None
    while True:
        try:
            value = condition()
        except AssertionError as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, error) from error
        time.sleep(interval)


async def aeventually(
    condition: Callable[[], _T | Awaitable[_T]],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
) -> _T:
    """:func:`eventually` for async tests; ``condition`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: AssertionError | None = None
    while True:
        try:
            outcome = condition()
            value: _T = await outcome if inspect.isawaitable(outcome) else outcome
        except AssertionError as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, error) from error
        await anyio.sleep(interval)

"""Waiting until a descriptor is readable or writable, on the asyncio loop the supervisor runs.

The control socket's hot path waits on descriptors directly (docs/adr/0009, 0014).
``anyio.wait_readable`` does the same with bookkeeping of its own on top (a context variable
that refuses a second waiter, a closure per wait): measured with callgrind, about 18,000
instructions a wait, and every connection waits at least twice (its accept, its close). Each
descriptor waited on here has one waiter, the task that owns it, so that bookkeeping has
nothing to catch. Cancellation is asyncio's, which anyio's cancel scopes deliver as usual.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_readable", "wait_writable", "wake"]


def wake(waiter: asyncio.Future[None]) -> None:
    """Resolve a waiter (a second wake, or one after cancellation, changes nothing)."""
    if not waiter.done():
        waiter.set_result(None)


async def wait_readable(fd: int) -> None:
    """Return once ``fd`` is readable (or has an error or hang-up to report)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    """Return once ``fd`` has room to write (or has an error to report)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)

"""Waiting until a descriptor is readable or writable, on the asyncio loop the supervisor runs.

The control socket's hot path waits on descriptors directly (docs/adr/0009, 0014).
``anyio.wait_readable`` does the same with bookkeeping of its own on top (a context variable
that refuses a second waiter, a closure per wait): measured with callgrind, about 18,000
instructions a wait, and every connection waits at least twice (its accept, its close). Each
descriptor waited on here has one waiter, the task that owns it, so that bookkeeping has
nothing to catch. Cancellation is asyncio's, which anyio's cancel scopes deliver as usual.

A kept-alive connection waits for every request it serves: :class:`ReadWaits` keeps its
descriptor registered with the loop between those waits (docs/adr/0023). A write waits only
when the socket's buffer is full, rarely: :func:`wait_writable` registers for each wait.
"""

from __future__ import annotations

import asyncio

__all__ = ["ReadWaits", "wait_writable", "wake"]


def wake(waiter: asyncio.Future[None]) -> None:
    """Resolve a waiter (a second wake, or one after cancellation, changes nothing)."""
    if not waiter.done():
        waiter.set_result(None)


async def wait_writable(fd: int) -> None:
    """Return once ``fd`` has room to write (or has an error to report)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


class ReadWaits:
    """Waits for one descriptor to be readable, registered with the loop once, not per wait.

    ``loop.add_reader`` and ``remove_reader`` around every wait (:func:`wait_readable`) were
    about an eighth of the supervisor's time under 100 kept-alive clients (epoll_ctl twice, a
    handle, the selector's bookkeeping). Here the registration stays while the owner of the
    descriptor works between two waits. epoll is level-triggered, so a readable descriptor
    whose owner does not wait would call back on every turn of the loop: the callback removes
    the registration then (the owner is busy and reads the bytes when it next looks), and
    the next wait registers again. A wait that was woken but has not resumed yet (its future
    done) is not "nobody waits": its owner is about to read.

    The loop polls once more before the woken owner runs, and reports the bytes that woke it
    again; by the time that report is handled the owner has read them (and may wait again).
    That one report is ignored: woken on it, the owner would find nothing to read; taken for
    "nobody waits", it would unregister a descriptor about to be waited on. Ignoring it loses
    nothing, since a descriptor still readable is reported again on the next turn.

    :meth:`close` removes the registration; call it before the descriptor is closed, or the
    selector would keep a stale entry for a descriptor number the kernel reuses.
    """

    __slots__ = ("_fd", "_loop", "_waiter", "_woke", "registered")

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = fd
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        #: The last report woke the owner: the next one is that report again.
        self._woke = False
        self.registered = False

    async def wait(self) -> None:
        """Return once the descriptor is readable (or has an error or hang-up to report)."""
        self._waiter = waiter = self._loop.create_future()
        if not self.registered:
            self._loop.add_reader(self._fd, self._readable)
            self.registered = True
        try:
            await waiter
        finally:
            self._waiter = None

    def _readable(self) -> None:
        if self._woke:
            self._woke = False
            return
        waiter = self._waiter
        if waiter is None:
            self._loop.remove_reader(self._fd)
            self.registered = False
        elif not waiter.done():
            waiter.set_result(None)
            self._woke = True

    def close(self) -> None:
        """Unregister the descriptor (a wait still pending is then never woken by it)."""
        if self.registered:
            self._loop.remove_reader(self._fd)
            self.registered = False
        self._woke = False

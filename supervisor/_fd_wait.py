"""Waiting until a descriptor is readable or writable, on the asyncio loop the supervisor runs.

The control socket's hot path waits on descriptors directly (docs/adr/0009, 0014).
``anyio.wait_readable`` does the same with bookkeeping of its own on top (a context variable
that refuses a second waiter, a closure per wait): measured with callgrind, about 18,000
instructions a wait, and every connection waits at least twice (its accept, its close). Each
descriptor waited on here has one waiter, the task that owns it, so that bookkeeping has
nothing to catch. Cancellation is asyncio's, which anyio's cancel scopes deliver as usual.

A kept-alive connection waits for every request it serves: :class:`SocketReads` keeps its
socket registered with the loop between those waits, and reads it in the loop's callback
(docs/adr/0023). A write waits only
when the socket's buffer is full, rarely: :func:`wait_writable` registers for each wait.
"""

from __future__ import annotations

import asyncio
import socket

__all__ = ["SocketReads", "wait_writable", "wake"]


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


class SocketReads:
    """One socket's reads, done by the loop's callback; registered once, not per wait.

    ``loop.add_reader`` and ``remove_reader`` around every wait were about an eighth of the
    supervisor's time under 100 kept-alive clients (epoll_ctl twice, a handle, the selector's
    bookkeeping). Here the registration stays while the owner of the socket works between two
    waits, and the callback that finds the socket readable reads it (into :attr:`buffer`,
    or notes its :attr:`ended`) before it wakes the owner. Were the owner to read after waking,
    the loop would poll once before it runs and report the same bytes again (level-triggered):
    a second callback for every wake.

    A readable socket whose owner does not wait would call back on every turn of the loop:
    the callback removes the registration then, without reading (the owner is busy, and
    reads when it next looks; nothing is read that nobody asked for), and the next wait
    registers again. A wait that was woken, or cancelled, but has not resumed yet is left as it
    is: its owner is about to look.

    :meth:`close` removes the registration; call it before the socket is closed, or the
    selector would keep a stale entry for a descriptor number the kernel reuses.
    """

    __slots__ = ("_fd", "_loop", "_sock", "_waiter", "buffer", "ended", "registered")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        #: What was read and not consumed yet (the owner consumes it in place).
        self.buffer = bytearray()
        #: The peer hung up, or the socket failed: nothing more will come.
        self.ended = False
        self.registered = False

    def read(self) -> bool:
        """Read what is there now into :attr:`buffer` (or note the end); False if nothing is."""
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.buffer += data
        else:
            self.ended = True
        return True

    async def wait(self) -> None:
        """Return once the callback read more bytes (or saw the end)."""
        self._waiter = waiter = self._loop.create_future()
        if not self.registered:
            self._loop.add_reader(self._fd, self._readable)
            self.registered = True
        try:
            await waiter
        finally:
            self._waiter = None

    def _readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._loop.remove_reader(self._fd)
            self.registered = False
        elif not waiter.done() and self.read():
            waiter.set_result(None)

    def close(self) -> None:
        """Unregister the socket (a wait still pending is then never woken by it)."""
        if self.registered:
            self._loop.remove_reader(self._fd)
            self.registered = False

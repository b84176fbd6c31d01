"""The signals that end the supervisor, received on its loop, never back to their default action.

anyio's signal receiver (asyncio's ``add_signal_handler``) gives each signal its default action
back when it closes, and only then could the supervisor ignore it: a second signal in between
(a service manager repeating its stop, Ctrl-C twice) met the default action and killed the
supervisor half-way through its exit, exit code -1 with no last write. Under load that
window is long enough to be hit (the chaos suite's ``SIGHUP-twice`` did, 2 runs in 24).

So the supervisor receives them as asyncio does, without asyncio's closing step: each signal
gets a Python handler that does nothing (CPython's own C handler then notes it, in whatever
thread the kernel picked), its number reaches the loop through ``signal.set_wakeup_fd`` on a
socket pair of ours, and on leaving each signal goes from that handler straight to
``SIG_IGN`` (the supervisor is exiting) or back to what it had before: never through the
default action. Main thread only, as every signal disposition is.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

from ._fd_wait import SocketReads

__all__ = ["ExitSignals"]

#: What ``signal.signal`` sets and returns.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python handler: the signal's number already went to the wakeup socket."""


class ExitSignals:
    """Receive ``signums`` while inside ``with``; iterate (``async for``) to take each one.

    Leaving ignores the signals from then on if :attr:`ignore_on_leaving` was set (the exit
    is under way: nothing may cut it short), and otherwise puts back the handlers found.
    """

    def __init__(self, signums: Iterable[int]) -> None:
        self._signums = frozenset(signums)
        self._previous: dict[int, _Handler] = {}
        self._pending: deque[int] = deque()
        self._previous_wakeup: int | None = None  # None: the wakeup descriptor was not taken
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._reads: SocketReads | None = None
        #: Set before leaving when the signals must be ignored to the process's end.
        self.ignore_on_leaving = False

    def __enter__(self) -> ExitSignals:
        try:
            receiving, noting = socket.socketpair()
            self._sockets = (receiving, noting)
            receiving.setblocking(False)
            noting.setblocking(False)
            self._reads = SocketReads(receiving, asyncio.get_running_loop())
            self._previous_wakeup = signal.set_wakeup_fd(noting.fileno(), warn_on_full_buffer=False)
            for signum in sorted(self._signums):
                self._previous[signum] = signal.signal(signum, _noted)
        except BaseException:
            # Off the main thread, or a signal that cannot be caught: give back what was taken
            # so far (handlers, the wakeup descriptor, the sockets), and nothing else.
            self._give_back(ignore=False)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._give_back(ignore=self.ignore_on_leaving)

    def _give_back(self, *, ignore: bool) -> None:
        # Dispositions first, from our handler straight to the next one; a signal meanwhile
        # still finds the wakeup socket open and changes nothing.
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if ignore else previous)
        self._previous.clear()
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        if self._sockets is not None:
            for sock in self._sockets:
                sock.close()
            self._sockets = None

    def __aiter__(self) -> ExitSignals:
        return self

    async def __anext__(self) -> int:
        reads = self._reads
        if reads is None:
            raise RuntimeError("ExitSignals can be iterated only inside its with block")
        while not self._pending:
            await reads.wait()
            # One byte a signal, its number; a signal with a Python handler of someone else's
            # is noted here too, and is not ours to act on.
            self._pending.extend(signum for signum in reads.buffer if signum in self._signums)
            reads.buffer.clear()
        return self._pending.popleft()

"""The control socket while the supervisor starts: answered from the standard library alone.

Importing the serving stack (anyio and asyncio, pydantic and the protocol's models, structlog)
takes most of a supervisor's start, and recovery comes after it. Until both are done the
supervisor has no table to answer from, but it already holds the root: the first stage
(``_early_spawn.start_early``) takes the root's lock, binds the socket, and hands it to a
:class:`StartingServer`, a thread with a selector loop, before the heavy imports
(docs/adr/0015). What it answers is only what is true without a table:

- ``GET /v1/health``: the supervisor's pid, version, protocol and root, with
  ``"state": "starting"`` (never a table it has not recovered);
- a request that is not HTTP as the protocol speaks it: its 4xx (``bad_http``), exactly as
  the full server would answer it, and the connection closed; nothing else changes.

Every other request (``ensure``, ``status``, a shutdown, a health request of another
protocol, a connection of another user) is kept as it is: the connection, the bytes read
from it and not yet answered. :meth:`StartingServer.hand_over` stops the thread and returns
them with the listening socket; the full server (``_runner._serve``) serves them, in the
order they came, after recovery and before it accepts anything new. A client waiting on such
a request sees one answer, the full supervisor's.

:func:`next_step` is the pure decision for one connection's bytes; the thread only does I/O.
Standard library and light modules only (``tests/unit/test_lazy_imports.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from spec_kitty_supervisor_client._wire import PROTOCOL_VERSION

from ._http import MAX_BODY, MAX_HEAD, HttpError, find_head_end, parse_head, response_bytes

__all__ = [
    "MAX_HELD",
    "Answer",
    "HandOver",
    "HandedConnection",
    "StartingServer",
    "error_body",
    "health_body",
    "next_step",
]

#: Connections held at once while starting; more wait in the listen queue, as they did when
#: nothing accepted before the full server.
MAX_HELD = 128
#: How long, and how much, a refused client may still send before its connection is closed
#: (as ``_api.LINGER_SECONDS``/``LINGER_BYTES``: it reads why before the close resets it).
LINGER_SECONDS = 1.0
LINGER_BYTES = MAX_BODY + MAX_HEAD
_PROTOCOL_VALUE = str(PROTOCOL_VERSION).encode("ascii")
_HEALTH = ("GET", "/v1/health")


def health_body(pid: int, version: str, root: str) -> bytes:
    """``SupervisorHealth`` while starting: alive, and saying that no table is recovered yet."""
    document = {
        "status": "ok",
        "state": "starting",
        "pid": pid,
        "version": version,
        "protocol_version": PROTOCOL_VERSION,
        "root": root,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(code: str, message: str) -> bytes:
    """``ErrorBody`` as the full server writes it (``exclude_none``: no ``details``)."""
    document = {"error": {"code": code, "message": message}}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class Answer(NamedTuple):
    """Send ``data``; ``consumed`` bytes of the buffer were its request. ``close``: close the
    connection once sent (after lingering, when ``linger``).

    Named tuples and plain classes here, no dataclass: ``dataclasses`` (with ``inspect``)
    would cost the first stage a tenth of its start."""

    data: bytes
    consumed: int
    close: bool
    linger: bool = False


class HandOver:
    """Not ours to answer: keep the connection and its bytes for the full server."""

    __slots__ = ()


HAND_OVER = HandOver()


def next_step(buffer: bytes | bytearray, health: bytes) -> Answer | HandOver | None:
    """What to do with a connection's unanswered bytes; None while a request is incomplete.

    ``health`` is :func:`health_body`'s answer. Pure: the same checks as the full server's
    reader (``_http``), so a malformed request gets the same 4xx now as it would later.
    """
    try:
        head_length = find_head_end(buffer)
        if head_length < 0:
            return None
        head = parse_head(buffer[:head_length])
    except HttpError as exc:
        answer = response_bytes(
            exc.status,
            error_body("bad_http", f"malformed HTTP request: {exc.message}"),
            keep_alive=False,
        )
        return Answer(answer, len(buffer), close=True, linger=True)
    if (head.method, urlsplit(head.target).path) != _HEALTH:
        return HAND_OVER
    if head.protocol is not None and head.protocol != _PROTOCOL_VALUE:
        return HAND_OVER  # the full server says protocol_mismatch, with its details
    end = head_length + head.content_length
    if len(buffer) < end:
        return None
    return Answer(response_bytes(200, health, keep_alive=head.keep_alive), end, not head.keep_alive)


class HandedConnection(NamedTuple):
    """A connection the starting server kept for the full server.

    ``received``: bytes read and not answered (the start of the next request, or all of it).
    ``unsent``: the end of an answer the client has not taken yet, to be sent first;
    ``close_after``: close once it is sent (that answer was the connection's last).
    """

    sock: socket.socket
    received: bytes = b""
    unsent: bytes = b""
    close_after: bool = False


class _Held:
    """One connection while the stage holds it."""

    __slots__ = (
        "close_after",
        "dropped",
        "handing_over",
        "linger_until",
        "received",
        "sock",
        "unsent",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()
        self.unsent = b""
        self.close_after = False
        #: Not read any more: kept as it is for the full server.
        self.handing_over = False
        #: Answered with a refusal: what the client still sends is dropped until this time.
        self.linger_until: float | None = None
        self.dropped = 0


def _own_uid(sock: socket.socket) -> bool:
    """Whether the peer is this user; unknown counts as not (the full server decides)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class StartingServer:
    """The control socket's server from the first stage until the full server takes it.

    ``start()`` runs :meth:`_loop` in a daemon thread; :meth:`hand_over` stops it and gives
    the listening socket and the held connections to the caller; :meth:`close` (a start that
    failed before the hand-over) closes both and unlinks the socket file it bound.
    """

    def __init__(self, listener: socket.socket, socket_path: Path, health: bytes) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.socket_path = socket_path
        #: The socket file's inode, to unlink only the file this server bound.
        self.inode = os.stat(socket_path).st_ino
        self._health = health
        self._held: dict[int, _Held] = {}
        self._order: list[_Held] = []
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._done = False
        self._handed_over = False
        #: What the thread did, for the log line at the hand-over.
        self.answered = 0
        self.refused = 0
        #: An error that ended the loop early (the held connections are still handed over).
        self.failure: str | None = None

    def start(self) -> None:
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="starting-server", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stopping = True
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")
            self._thread.join()
            self._thread = None
        if not self._done:
            self._done = True
            self._selector.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def hand_over(self) -> list[HandedConnection]:
        """Stop serving; the connections kept, oldest first. The listener is the caller's now.

        A connection that was only lingering after a refusal is closed: it was answered.
        """
        self._stop_thread()
        self._handed_over = True
        handed = []
        for held in self._order:
            if held.linger_until is not None and not held.unsent:
                held.sock.close()
                continue
            handed.append(
                HandedConnection(
                    held.sock,
                    bytes(held.received) if held.linger_until is None else b"",
                    held.unsent,
                    held.close_after or held.linger_until is not None,
                )
            )
        self._order.clear()
        self._held.clear()
        return handed

    def close(self) -> None:
        """The start failed before the hand-over: close everything and unlink our socket.

        Nothing once :meth:`hand_over` gave them away.
        """
        if self._handed_over:
            return
        for handed in self.hand_over():
            handed.sock.close()
        self.listener.close()
        try:
            if os.stat(self.socket_path).st_ino == self.inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    # The thread.

    def _loop(self) -> None:
        try:
            while not self._stopping:
                timeout = self._next_linger_end()
                for key, events in self._selector.select(timeout):
                    if self._stopping:
                        return
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fd != self._wake_read:
                        self._serve(self._held[key.fd], events)
                self._end_lingering()
        except Exception as exc:  # never the process: the full server takes what is held
            self.failure = repr(exc)

    def _accept(self) -> None:
        while len(self._order) < MAX_HELD:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return  # nothing more waiting
            except OSError:
                # Out of descriptors (or memory): stop accepting until a connection is let
                # go, rather than wake up for the same failure again and again; the full
                # server's accept loop takes what is left in the queue.
                self._selector.unregister(self.listener)
                return
            sock.setblocking(False)
            held = _Held(sock)
            self._held[sock.fileno()] = held
            self._order.append(held)
            if _own_uid(sock):
                self._selector.register(sock, selectors.EVENT_READ)
            else:
                held.handing_over = True  # refused by the full server, which says why
        self._selector.unregister(self.listener)  # full: the rest wait in the queue

    def _forget(self, held: _Held) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(held.sock)
        self._held.pop(held.sock.fileno(), None)
        self._order.remove(held)
        held.sock.close()
        if len(self._order) < MAX_HELD:
            with contextlib.suppress(KeyError):
                self._selector.register(self.listener, selectors.EVENT_READ)

    def _serve(self, held: _Held, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                if self._flush(held):
                    self._advance(held)  # a pipelined request may be waiting already
            elif events & selectors.EVENT_READ:
                self._receive(held)
        except OSError:
            self._forget(held)  # the client went away: nobody to answer
        except Exception:
            # A failure of ours: leave the connection as it is for the full server.
            held.handing_over = True
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(held.sock)

    def _receive(self, held: _Held) -> None:
        try:
            data = held.sock.recv(65536)
        except BlockingIOError:
            return
        if held.linger_until is not None:
            held.dropped += len(data)
            if not data or held.dropped >= LINGER_BYTES:
                self._forget(held)
            return
        if not data:
            self._forget(held)  # closed before (or instead of) a request
            return
        held.received += data
        self._advance(held)

    def _advance(self, held: _Held) -> None:
        """Answer what can be answered of the bytes held; stop reading at anything else."""
        while held.received:
            step = next_step(held.received, self._health)
            if step is None:
                return
            if isinstance(step, HandOver):
                held.handing_over = True
                self._selector.unregister(held.sock)
                return
            del held.received[: step.consumed]
            if step.linger:
                self.refused += 1
                held.linger_until = time.monotonic() + LINGER_SECONDS
            else:
                self.answered += 1
            held.close_after = step.close and not step.linger
            held.unsent = step.data
            if not self._flush(held):
                return

    def _flush(self, held: _Held) -> bool:
        """Send what is left of the answer; True when it is sent and the connection reads on."""
        try:
            sent = held.sock.send(held.unsent)
        except BlockingIOError:
            sent = 0
        held.unsent = held.unsent[sent:]
        if held.unsent:
            self._selector.modify(held.sock, selectors.EVENT_WRITE)
            return False
        if held.close_after:
            self._forget(held)
            return False
        self._selector.modify(held.sock, selectors.EVENT_READ)
        return held.linger_until is None  # a refused one only drops what still comes

    def _next_linger_end(self) -> float | None:
        ends = [h.linger_until for h in self._order if h.linger_until is not None]
        return None if not ends else max(0.0, min(ends) - time.monotonic())

    def _end_lingering(self) -> None:
        now = time.monotonic()
        for held in list(self._order):
            if held.linger_until is not None and held.linger_until <= now and not held.unsent:
                self._forget(held)

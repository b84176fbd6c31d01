"""Keeping the control socket served: the accept loop and the self-probe.

A supervisor that holds the root's lock but cannot answer its socket is worse than none: no
client can start a replacement. Two things prevent it. The accept loop survives running out of
file descriptors (EMFILE and friends are a pause, not the end, as in asyncio's own servers).
And every heartbeat the supervisor asks its own socket ``GET /v1/health``, as any client would;
only an answer carrying our pid counts. ``WATCHDOG=1`` follows a good answer only, and
:data:`SERVING_FAILURES` failed answers in a row end the supervisor (leaving its daemons, for
the next supervisor to re-adopt).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import structlog
from anyio.abc import SocketStream, TaskGroup

from spec_kitty_supervisor_client._models import PROTOCOL_VERSION

from ._api import PROTOCOL_HEADER
from ._fd_wait import wake

__all__ = [
    "ACCEPT_RETRY_PAUSE",
    "RESOURCE_ERRNOS",
    "SELF_PROBE_TIMEOUT",
    "SERVING_FAILURES",
    "ConnectionTasks",
    "ServingRecord",
    "Spawner",
    "UnixAcceptor",
    "accept_loop",
    "probe_own_socket",
]

log = structlog.get_logger("spec_kitty_supervisor")

#: Out of descriptors or memory: the same accept succeeds once something was closed.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: How long the accept loop waits before trying again (asyncio waits 1 s; a client waiting
#: in the backlog is served sooner this way, and a failing accept() is cheap).
ACCEPT_RETRY_PAUSE = 0.1
#: Generous: a busy supervisor must not mistake its own slowness for not serving.
SELF_PROBE_TIMEOUT = 5.0
#: Failed self-probes in a row after which the supervisor gives up the root.
SERVING_FAILURES = 3


_Client_co = TypeVar("_Client_co", covariant=True)
_Client = TypeVar("_Client")


class Accepting(Protocol[_Client_co]):
    """What the accept loop needs of a listener: :class:`UnixAcceptor` hands over accepted
    sockets, anyio's ``SocketListener`` streams."""

    async def accept(self) -> _Client_co: ...


class UnixAcceptor:
    """The listening socket, accepted from directly; each connection handed over as its socket.

    anyio's listener waits for a connection by registering the socket object with asyncio,
    which formats the socket's repr (a ``getsockname`` and a ``getpeername``) every time; a
    process that connects, asks once and leaves (every spec-kitty command) paid for it. This
    waits on the descriptor instead, and hands over the accepted (non-blocking) socket, which
    :func:`._api.serve_connection` serves directly: a stream object per connection would only
    be built and closed around it. Failures are anyio's: ``ClosedResourceError`` once closed,
    ``BrokenResourceError`` raised from the ``OSError`` of a failed accept (EMFILE and friends,
    which :func:`accept_loop` survives).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._closed = False
        #: Whether other tasks ran since the last connection was taken.
        self._yielded = True
        #: What a waiting accept waits on, so that closing can end the wait.
        self._waiter: asyncio.Future[None] | None = None

    async def _wait_for_connection(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        loop.add_reader(self._fd, wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if not self._closed:
                loop.remove_reader(self._fd)

    async def accept(self) -> socket.socket:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                client, _ = self._sock.accept()
            except BlockingIOError:
                await self._wait_for_connection()
                self._yielded = True
                continue
            except OSError as exc:
                if self._closed:
                    raise anyio.ClosedResourceError from None
                raise anyio.BrokenResourceError from exc
            if not self._yielded:
                # Taken straight after the previous one: that one is admitted (or closed to
                # make room) first, so a queue of connections never holds more than one
                # descriptor beyond the bound.
                try:
                    await anyio.lowlevel.checkpoint()
                except BaseException:
                    client.close()  # cancelled (shut down): nobody will serve it
                    raise
            self._yielded = False
            client.setblocking(False)
            return client

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._waiter is not None:
                # A waiting accept wakes, finds the acceptor closed: ClosedResourceError.
                asyncio.get_running_loop().remove_reader(self._fd)
                wake(self._waiter)
            self._sock.close()
        await anyio.lowlevel.checkpoint()


class Spawner(Protocol):
    """Where the accept loop starts a connection's task (:class:`ConnectionTasks`, or an anyio
    task group)."""

    def start_soon(self, func: Callable[[Any], Coroutine[Any, Any, None]], arg: Any, /) -> None: ...


class ConnectionTasks:
    """The connections' tasks: plain asyncio tasks, started cheaply and ended together.

    A spec-kitty process connects for its one request, so starting a connection's task is part
    of every such request. anyio's ``TaskGroup.start_soon`` costs about 100,000 instructions a
    task here (callgrind: a task handle, a wrapper coroutine, a name, its cancel-scope
    bookkeeping), a fifth of serving that whole request. What a task group adds is not needed
    for these tasks: :func:`._api.serve_connection` ends quietly whatever the client does, so
    there is no failure to propagate to its siblings, and a task that failed anyway is logged
    (``connection_task_failed``) while the others keep being served. What is kept is the
    structure: :meth:`aclose` (and leaving ``async with``) cancels every task still running and
    returns once all have ended, and no task is started after that.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> ConnectionTasks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __len__(self) -> int:
        return len(self._tasks)

    def start_soon(self, func: Callable[[Any], Coroutine[Any, Any, None]], arg: Any, /) -> None:
        coroutine = func(arg)
        if self._closed:
            coroutine.close()
            raise RuntimeError("the connection tasks were closed; no new one can start")
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("connection_task_failed", error=repr(exc))

    async def aclose(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            while self._tasks:
                pending = set(self._tasks)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)


def _errno_of(exc: BaseException) -> int | None:
    # anyio turns a failed accept() into BrokenResourceError raised from the OSError.
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return cause.errno if isinstance(cause, OSError) else None


async def accept_loop(
    listener: Accepting[_Client],
    handle: Callable[[_Client], Coroutine[Any, Any, None]],
    group: Spawner | TaskGroup,
    *,
    retry_pause: float = ACCEPT_RETRY_PAUSE,
) -> None:
    """Accept until the listener is closed (shutdown, or fencing replaced it); nothing else ends it.

    A failed accept is logged once per run of failures (``accept_failed``, with its errno) and
    retried after a pause; ``accept_recovered`` says when the next one succeeded.
    """
    failing: int | None = None
    failures = 0
    while True:
        try:
            client = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except (anyio.BrokenResourceError, OSError) as exc:
            code = _errno_of(exc)
            if failures == 0 or code != failing:
                log.error(
                    "accept_failed",
                    errno=code,
                    error=errno.errorcode.get(code, "?") if code is not None else repr(exc),
                    resource_exhausted=code in RESOURCE_ERRNOS,
                )
            failing = code
            failures += 1
            await anyio.sleep(retry_pause)
            continue
        if failures:
            log.info("accept_recovered", failed_attempts=failures, errno=failing)
            failing, failures = None, 0
        group.start_soon(handle, client)


@dataclass
class ServingRecord:
    """Consecutive self-probe failures; the pure part of the decision to give up the root."""

    limit: int = SERVING_FAILURES
    failures: list[str] = field(default_factory=list)

    def observe(self, problem: str | None) -> bool:
        """Record one probe (None = answered); True once ``limit`` failed in a row."""
        if problem is None:
            self.failures.clear()
            return False
        self.failures.append(problem)
        return len(self.failures) >= self.limit


async def probe_own_socket(path: Path, expected_pid: int, timeout: float) -> str | None:
    """None when ``path`` answers ``GET /v1/health`` with our pid; else what went wrong."""
    # The probe speaks h11 (an independent parser checks our answers, ADR 0009); it is
    # imported by the first probe, a heartbeat after the start, not by the start itself.
    import h11

    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_unix(path) as stream:
                return await _health_exchange(stream, expected_pid)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
        return f"could not connect ({name or type(exc).__name__}: {exc.strerror or exc})"
    except (anyio.BrokenResourceError, anyio.EndOfStream, h11.ProtocolError) as exc:
        return f"the connection broke ({type(exc).__name__})"


async def _health_exchange(stream: SocketStream, expected_pid: int) -> str | None:
    import h11

    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target="/v1/health",
        headers=[
            ("host", "supervisor"),
            ("connection", "close"),
            (PROTOCOL_HEADER, str(PROTOCOL_VERSION)),
        ],
    )
    await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
    status = 0
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive(65536))
            except anyio.EndOfStream:
                conn.receive_data(b"")
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    if status != 200:
        return f"GET /v1/health answered {status or 'nothing'}"
    try:
        pid = json.loads(body).get("pid")
    except (ValueError, AttributeError):
        return "GET /v1/health answered something that is not our health document"
    if pid != expected_pid:
        return f"the socket is answered by pid {pid}, not by us (pid {expected_pid})"
    return None

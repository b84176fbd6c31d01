"""The control API: HTTP/1.1 + JSON over the root's Unix socket (read by :mod:`._http`).

Each connection is its own task, so a slow or hostile client stalls only itself. Every
connection's peer uid is checked against ours before a byte is read (SO_PEERCRED on Linux,
LOCAL_PEERCRED on macOS). Every request either gets its model's answer or an error document
``{"error": {"code": ..., "message": ...}}``; no request can raise out of the server.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream
from pydantic import BaseModel, ValidationError

from spec_kitty_supervisor_client._models import PROTOCOL_VERSION, ErrorBody, ErrorDetail

from ._connections import ConnectionLimits, ConnectionPool, ConnectionSlot
from ._fd_wait import SocketReads, wait_writable
from ._http import (
    MAX_BODY,
    MAX_HEAD,
    HttpError,
    RequestHead,
    find_head_end,
    parse_head,
    response_bytes,
)

__all__ = [
    "MAX_BODY",
    "PROTOCOL_HEADER",
    "ApiError",
    "ApiRequest",
    "ConnectionTracker",
    "Encoded",
    "Handler",
    "ParsedBodies",
    "Route",
    "Router",
    "peer_pid",
    "peer_uid",
    "serve_connection",
]

log = structlog.get_logger("spec_kitty_supervisor.api")

PROTOCOL_HEADER = "spec-kitty-supervisor-protocol"
_PROTOCOL_VALUE = str(PROTOCOL_VERSION).encode("ascii")
#: How long, and how much, a refused client may still send before its connection is closed.
LINGER_SECONDS = 1.0
LINGER_BYTES = MAX_BODY + MAX_HEAD

_M = TypeVar("_M", bound=BaseModel)


class ApiError(Exception):
    """Raised by a handler to answer with an error document."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ApiRequest(NamedTuple):
    """One request as the routes see it. A named tuple: built for every request, and a
    frozen dataclass's ``__init__`` cost ten times as much (1.8 µs here)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    def parse(self, model: type[_M]) -> _M:
        """The body as ``model``; an empty body means all defaults."""
        try:
            return model.model_validate_json(self.body or b"{}")
        except ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                raise ApiError(400, "invalid_json", "the request body is not JSON") from None
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ApiError(400, "invalid_request", problems) from None

    def query_int(self, name: str, default: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        try:
            return int(values[-1])
        except ValueError:
            raise ApiError(400, "invalid_request", f"{name} must be an integer") from None


class ParsedBodies(Generic[_M]):
    """:meth:`ApiRequest.parse` for one request model, remembering the bodies it accepted.

    Validating a body is a function of its bytes alone, and the clients of a root send the
    same ``ensure`` body again and again (same interpreter, folder and environment). A body
    accepted before is answered with the model it gave, the same object: request models are
    frozen, and nothing that handles a request changes what it holds. Bounded like
    :func:`._http.parse_head`'s memory: at most :data:`LIMIT` bodies of at most
    :data:`BODY_BYTES` each (all forgotten when full); a refused body is validated, and
    refused, every time.
    """

    LIMIT = 16
    BODY_BYTES = 16 * 1024

    def __init__(self, model: type[_M]) -> None:
        self.model = model
        self._accepted: dict[bytes, _M] = {}

    def parse(self, request: ApiRequest) -> _M:
        known = self._accepted.get(request.body)
        if known is not None:
            return known
        parsed = request.parse(self.model)
        if len(request.body) <= self.BODY_BYTES:
            if len(self._accepted) >= self.LIMIT:
                self._accepted.clear()
            self._accepted[request.body] = parsed
        return parsed


@dataclass(frozen=True, slots=True)
class Encoded:
    """An answer a handler gives already written as its model's JSON (``model_dump_json``):
    for an answer it gives again unchanged, whose JSON it keeps. The whole HTTP answer on a
    kept-alive connection (``200``, as every handler's answer) is written with it, once."""

    json: bytes
    kept_alive: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kept_alive", response_bytes(200, self.json, keep_alive=True))

    def answer(self, keep_alive: bool) -> bytes:
        """The whole answer, for a connection kept alive or not."""
        return self.kept_alive if keep_alive else response_bytes(200, self.json, keep_alive=False)


Handler = Callable[[ApiRequest], Awaitable[BaseModel | Encoded]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self._routes = {(r.method, r.path): r.handler for r in routes}
        self._paths = {r.path for r in routes}

    async def dispatch(self, request: ApiRequest) -> tuple[int, BaseModel | Encoded]:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if request.path in self._paths:
                raise ApiError(405, "method_not_allowed", f"{request.method} {request.path}")
            raise ApiError(404, "not_found", f"no endpoint {request.path}")
        return 200, await handler(request)


_PEERCRED_SIZE = struct.calcsize("3i")


class _LastPeer:
    """The socket whose ``SO_PEERCRED`` was read last, its descriptor then, and what it said.

    A connected socket's peer never changes, and each connection is asked twice: its pid
    (``_runner`` chooses the connection's tracker) and its uid (the check below). The second
    question about the same open socket is answered from here; any other socket, or this
    one once closed (its descriptor is then -1), is asked the kernel again.
    """

    sock: socket.socket | None = None
    fd = -1
    creds: tuple[int, int, int] = (0, -1, -1)


def _linux_peer(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer, from ``SO_PEERCRED``."""
    if _LastPeer.sock is sock and _LastPeer.fd == sock.fileno():
        return _LastPeer.creds
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED_SIZE)
    pid, uid, gid = struct.unpack("3i", creds)
    _LastPeer.sock, _LastPeer.fd, _LastPeer.creds = sock, sock.fileno(), (pid, uid, gid)
    return pid, uid, gid


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket, or None when unknown."""
    if sys.platform.startswith("linux"):
        return _linux_peer(sock)[1]
    if sys.platform == "darwin":
        # struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
        local_peercred = 0x001
        creds = sock.getsockopt(0, local_peercred, struct.calcsize("IIh16I"))
        _version, uid = struct.unpack_from("II", creds)
        return int(uid)
    return None


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket, or None when unknown."""
    if sys.platform.startswith("linux"):
        return _linux_peer(sock)[0]
    if sys.platform == "darwin":
        local_peerpid = 0x002
        (pid,) = struct.unpack("i", sock.getsockopt(0, local_peerpid, struct.calcsize("i")))
        return int(pid)
    return None


def _error_body(code: str, message: str, details: dict[str, object] | None = None) -> bytes:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
    return body.model_dump_json(exclude_none=True).encode()


class _Connection:
    """One client's socket, what it sent that no request has consumed yet, and its deadline.

    The connection has one cancel scope, entered by :func:`serve_connection`: the pool
    cancels it to make room for a newcomer, and so does the connection's deadline, the
    phase's (waiting for a request, its head, its body, taking the answer). A deadline only
    matters while the connection waits for its client: :meth:`due_in` only notes it, it is put
    in force just before a wait (:meth:`_arm`) and lifted before a handler runs, so a request
    that arrived whole, as a spec-kitty process's one request does, never puts one in force.

    The deadline is kept by one timer of the connection's own, which is not moved for every
    request (docs/adr/0023): a timer due no later than the deadline in force stays, and when
    it fires it ends the connection if the deadline in force has passed, sets itself again
    for that deadline if it has not, and does nothing when none is in force. A kept-alive
    connection's next deadline is later than the one its timer is set for, so a request
    costs no timer at all (moving anyio's scope deadline cost two: one set, one cancelled).
    The socket stays registered with the loop between its waits, and is read by the loop's
    callback (:class:`._fd_wait.SocketReads`); :meth:`release` lets go of the registration
    and the timer before the socket is closed.
    """

    def __init__(self, sock: socket.socket, scope: anyio.CancelScope) -> None:
        self.raw = sock
        self.fd = sock.fileno()
        loop = asyncio.get_running_loop()
        self._reads = SocketReads(sock, loop)
        #: What the client sent that no request has consumed yet (consumed in place).
        self.buffer = self._reads.buffer
        self.closed = False
        self.scope = scope
        #: The phase's deadline (loop time), and the one in force while the connection waits.
        self.due = math.inf
        self.armed = math.inf
        #: Whether other tasks ran since this connection's last answer (a task that has just
        #: started was scheduled like any other, so it has).
        self.took_turn = True
        self._loop = loop
        #: The loop's clock (``anyio.current_time()`` on the asyncio backend, the supervisor's
        #: only one, ADR 0014), without finding the backend and the loop again each time.
        self.now = loop.time
        #: The deadline timer, and when it fires (inf: none is set).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def due_in(self, seconds: float) -> None:
        self.due = self.now() + seconds

    def no_deadline(self) -> None:
        """No deadline runs while a handler works (a spawn may take upstream's health wait)."""
        self.due = self.armed = math.inf

    def _arm(self) -> None:
        self.armed = due = self.due
        if due < self._timer_at:  # no timer yet, or it would fire after this deadline
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(due, self._timer_fired)
            self._timer_at = due

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, math.inf
        armed = self.armed
        if armed == math.inf:
            return  # lifted meanwhile: the next wait sets the timer again
        if self.now() >= armed:
            self.scope.cancel()
        else:
            self._timer = self._loop.call_at(armed, self._timer_fired)
            self._timer_at = armed

    def release(self) -> None:
        """Unregister the descriptor and cancel the timer: before the socket is closed."""
        self._reads.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    async def receive(self) -> None:
        """Read once more, within the deadline; ``closed`` once the peer hung up.

        Straight from the (non-blocking) socket, waiting for it when nothing is there; the
        wait's callback reads (:class:`._fd_wait.SocketReads`): anyio's stream would also
        yield before every read, and asyncio registers a socket object by formatting its repr
        (two syscalls) each time. A connection that has answered since it last waited waits
        before it reads: it owes the other connections a turn, so that a client that always
        has bytes ready takes its turn like the others, and a kept-alive client's next request
        is rarely there the instant its answer left, so reading first would mostly fail (a
        syscall and an exception for nothing). Bytes already there are reported by the loop's
        next poll.
        """
        reads = self._reads
        if not (self.took_turn and reads.read()):
            self._arm()
            await reads.wait()
            self.took_turn = True
        if reads.ended:
            self.closed = True

    async def linger(self) -> None:
        """Read and drop what the client still sends, for a moment, before closing.

        A refused request (a body over the limit, a head too long) is answered before the
        client has finished sending it; closing at once would reset the connection under the
        client's write, and it might never read why. Bounded in bytes and time, like any read.
        """
        self.due_in(LINGER_SECONDS)
        dropped = 0
        while not self.closed and dropped < LINGER_BYTES:
            self.buffer.clear()
            await self.receive()
            dropped += len(self.buffer)

    async def respond(self, status: int, body: bytes, keep_alive: bool) -> None:
        """Send a whole answer, within the deadline.

        Written straight to the (non-blocking) socket: an answer that fits in the socket's
        buffer, as nearly every one does, leaves at once; what does not fit waits for room.
        """
        await self.send(response_bytes(status, body, keep_alive=keep_alive))

    async def send(self, data: bytes) -> None:
        """Send ``data`` whole, within the deadline."""
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            rest = memoryview(data)[sent:]
            while rest:
                self._arm()
                await wait_writable(self.fd)
                try:
                    rest = rest[self.raw.send(rest) :]
                except BlockingIOError:
                    continue


class ConnectionTracker(Protocol):
    """Who wants to know about connections: idle exit counts them, shutdown drains requests."""

    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...


async def serve_connection(
    client: socket.socket | SocketStream,
    router: Router,
    tracker: ConnectionTracker,
    pool: ConnectionPool | None = None,
    *,
    received: bytes = b"",
    unsent: bytes = b"",
    close_after: bool = False,
) -> None:
    """Serve one client until it closes, misbehaves, times out or is closed to make room.

    ``client`` is the accepted socket (what the supervisor's acceptor hands over), or an anyio
    stream whose socket is served the same way; either is closed on return. ``pool`` holds the
    connection bounds shared by all connections (a private one, with the default time limits,
    when None).

    A connection the first stage held while the supervisor started (``_starting``) comes
    with what it had read and not answered (``received``), and possibly the end of an answer
    the client had not taken yet (``unsent``, sent first; ``close_after``: then closed).
    """
    pool = pool if pool is not None else ConnectionPool()
    if isinstance(client, socket.socket):
        sock, stream = client, None
        if sock.getblocking():  # the acceptor hands it over non-blocking already
            sock.setblocking(False)
    else:
        sock, stream = client.extra(SocketAttribute.raw_socket), client
    try:
        with anyio.CancelScope() as scope:
            slot = pool.admit(scope)
            if slot is None:
                return
            try:
                connection = _Connection(sock, scope)
                try:
                    connection.buffer.extend(received)
                    await _serve_admitted(
                        connection,
                        router,
                        tracker,
                        pool,
                        slot,
                        unsent=unsent,
                        close_after=close_after,
                    )
                finally:
                    connection.release()
            finally:
                pool.close(slot)
    finally:
        if stream is None:
            sock.close()
        else:
            with anyio.CancelScope(shield=True):
                await stream.aclose()


async def _serve_admitted(
    connection: _Connection,
    router: Router,
    tracker: ConnectionTracker,
    pool: ConnectionPool,
    slot: ConnectionSlot,
    *,
    unsent: bytes = b"",
    close_after: bool = False,
) -> None:
    tracker.connection_opened()
    try:
        uid = peer_uid(connection.raw)
        if uid is not None and uid != os.getuid():
            log.warning("peer_refused", peer_uid=uid)
            connection.due_in(pool.limits.reply_timeout)
            await connection.respond(
                403,
                _error_body(
                    "peer_refused",
                    f"uid {uid} may not use this supervisor (owner {os.getuid()})",
                ),
                keep_alive=False,
            )
            return
        if unsent:
            connection.due_in(pool.limits.reply_timeout)
            await connection.send(unsent)
        if close_after:
            return
        await _serve_requests(connection, router, tracker, pool, slot)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    except Exception as exc:  # the server never dies of a client
        log.error("connection_failed", error=repr(exc))
    finally:
        tracker.connection_closed()


async def _serve_requests(
    connection: _Connection,
    router: Router,
    tracker: ConnectionTracker,
    pool: ConnectionPool,
    slot: ConnectionSlot,
) -> None:
    """Answer requests until the client closes or misbehaves; inside ``connection.scope``.

    The first request's head is due within ``head_timeout`` of the accept; a kept-alive
    connection's next request may be awaited for ``idle_timeout``, then its head is due within
    ``head_timeout`` of its first byte; a body within ``body_timeout`` of its head; an answer
    must be taken within ``reply_timeout``. No deadline runs while a handler works.
    """
    limits = pool.limits
    connection.due_in(limits.head_timeout)
    kept_alive = False
    while True:
        # Idle: the only state in which the pool may close this connection for a newcomer,
        # and nothing of a request has been read, so nothing is lost.
        pool.idle(slot)
        if connection.buffer:
            # Pipelined: the next request is here already. Let other connections run first,
            # as a receive would have.
            await anyio.lowlevel.checkpoint()
            connection.took_turn = True
        else:
            await connection.receive()
            if connection.closed:
                return
        pool.busy(slot)
        if kept_alive:
            connection.due_in(limits.head_timeout)
        try:
            head, body = await _read_request(connection, limits)
        except HttpError as exc:
            connection.due_in(limits.reply_timeout)
            await connection.respond(
                exc.status,
                _error_body("bad_http", f"malformed HTTP request: {exc.message}"),
                keep_alive=False,
            )
            pool.idle(slot)  # nothing more will be answered: a newcomer may have the place
            await connection.linger()
            return
        if head is None:
            return  # the client hung up mid-request: nobody to answer
        tracker.request_started()
        try:
            connection.no_deadline()
            answer = await _answer(router, head, body)
            connection.due_in(limits.reply_timeout)
            await connection.send(answer)
            connection.took_turn = False
        finally:
            tracker.request_finished()
        if not head.keep_alive:
            return
        kept_alive = True
        connection.due_in(limits.idle_timeout)


async def _read_request(
    connection: _Connection, limits: ConnectionLimits
) -> tuple[RequestHead | None, bytes]:
    """The next request's head and body from ``connection`` (None if it closed mid-request).

    Raises :class:`HttpError` for a request to refuse.
    """
    scanned = 0
    while (head_length := find_head_end(connection.buffer, scanned)) < 0:
        if connection.closed:
            return None, b""
        scanned = len(connection.buffer)
        await connection.receive()
    head = parse_head(connection.buffer[:head_length])
    end = head_length + head.content_length
    if len(connection.buffer) < end:
        connection.due_in(limits.body_timeout)
        while len(connection.buffer) < end:
            if connection.closed:
                return None, b""
            await connection.receive()
    body = bytes(connection.buffer[head_length:end])
    del connection.buffer[:end]
    return head, body


async def _answer(router: Router, head: RequestHead, body: bytes) -> bytes:
    """The whole answer to one request (head and body, one write)."""
    status, answer = await _answer_body(router, head, body)
    if isinstance(answer, Encoded):
        return answer.answer(head.keep_alive)
    return response_bytes(status, answer, keep_alive=head.keep_alive)


async def _answer_body(
    router: Router, head: RequestHead, body: bytes
) -> tuple[int, bytes | Encoded]:
    if head.protocol is not None and head.protocol != _PROTOCOL_VALUE:
        client_version = head.protocol.decode("ascii", errors="replace")
        return 400, _error_body(
            "protocol_mismatch",
            f"this supervisor speaks protocol {PROTOCOL_VERSION}, the client speaks "
            f"{client_version}; install matching spec-kitty-supervisor versions, or stop "
            "this supervisor (`spec-kitty-supervisor stop`) so the newer one can start",
            {"supervisor_protocol": PROTOCOL_VERSION, "client_protocol": client_version},
        )
    target = urlsplit(head.target)
    request = ApiRequest(
        method=head.method,
        path=target.path,
        query=parse_qs(target.query) if target.query else {},
        body=body,
    )
    try:
        status, model = await router.dispatch(request)
    except ApiError as exc:
        return exc.status, _error_body(exc.code, exc.message, exc.details)
    except Exception as exc:
        log.exception("handler_failed", path=request.path)
        return 500, _error_body("internal_error", f"the supervisor failed this request: {exc!r}")
    if isinstance(model, Encoded):
        return status, model
    return status, model.model_dump_json().encode()

"""The control API: HTTP/1.1 + JSON over the root's Unix socket, spoken with h11.

Each connection is its own task, so a slow or hostile client stalls only itself. Every
connection's peer uid is checked against ours before a byte is read (SO_PEERCRED on Linux,
LOCAL_PEERCRED on macOS). Every request either gets its model's answer or an error document
``{"error": {"code": ..., "message": ...}}``; no request can raise out of the server.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import h11
import structlog
from anyio.abc import SocketAttribute, SocketStream
from pydantic import BaseModel, ValidationError

from spec_kitty_supervisor_client._models import PROTOCOL_VERSION, ErrorBody, ErrorDetail

from ._connections import ConnectionLimits, ConnectionPool, ConnectionSlot

__all__ = [
    "PROTOCOL_HEADER",
    "ApiError",
    "ApiRequest",
    "ConnectionTracker",
    "Handler",
    "Route",
    "Router",
    "peer_pid",
    "peer_uid",
    "serve_connection",
]

log = structlog.get_logger("spec_kitty_supervisor.api")

PROTOCOL_HEADER = "spec-kitty-supervisor-protocol"
MAX_BODY = 1024 * 1024

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


@dataclass(frozen=True)
class ApiRequest:
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


Handler = Callable[[ApiRequest], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self._routes = {(r.method, r.path): r.handler for r in routes}
        self._paths = {r.path for r in routes}

    async def dispatch(self, request: ApiRequest) -> tuple[int, BaseModel]:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if request.path in self._paths:
                raise ApiError(405, "method_not_allowed", f"{request.method} {request.path}")
            raise ApiError(404, "not_found", f"no endpoint {request.path}")
        return 200, await handler(request)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket, or None when unknown."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
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
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return int(pid)
    if sys.platform == "darwin":
        local_peerpid = 0x002
        (pid,) = struct.unpack("i", sock.getsockopt(0, local_peerpid, struct.calcsize("i")))
        return int(pid)
    return None


def _error_body(code: str, message: str, details: dict[str, object] | None = None) -> bytes:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
    return body.model_dump_json(exclude_none=True).encode()


class _Connection:
    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send(data)

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | Any:
        """The next event, reading as needed; the caller bounds the time it may take."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def request_begun(self) -> None:
        """Return once the next request's first bytes are here (or the peer hung up)."""
        data, closed = self.h11.trailing_data
        if not (data or closed):
            await self._receive()

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            data = b""
        self.h11.receive_data(data)

    async def respond(self, status: int, body: bytes, keep_alive: bool) -> None:
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            (PROTOCOL_HEADER, str(PROTOCOL_VERSION)),
        ]
        if not keep_alive:
            headers.append(("connection", "close"))
        await self.send(h11.Response(status_code=status, headers=headers))
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())


class ConnectionTracker(Protocol):
    """Who wants to know about connections: idle exit counts them, shutdown drains requests."""

    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...


async def serve_connection(
    stream: SocketStream,
    router: Router,
    tracker: ConnectionTracker,
    pool: ConnectionPool | None = None,
) -> None:
    """Serve one client until it closes, misbehaves, times out or is closed to make room.

    ``pool`` holds the connection bounds shared by all connections (a private one, with the
    default time limits, when None).
    """
    pool = pool if pool is not None else ConnectionPool()
    with anyio.CancelScope() as scope:
        slot = pool.admit(scope)
        if slot is None:
            await stream.aclose()
            return
        try:
            await _serve_admitted(stream, router, tracker, pool, slot)
        finally:
            pool.close(slot)


async def _serve_admitted(
    stream: SocketStream,
    router: Router,
    tracker: ConnectionTracker,
    pool: ConnectionPool,
    slot: ConnectionSlot,
) -> None:
    tracker.connection_opened()
    try:
        async with stream:
            raw = stream.extra(SocketAttribute.raw_socket)
            uid = peer_uid(raw)
            if uid is not None and uid != os.getuid():
                log.warning("peer_refused", peer_uid=uid)
                connection = _Connection(stream)
                await connection.respond(
                    403,
                    _error_body(
                        "peer_refused",
                        f"uid {uid} may not use this supervisor (owner {os.getuid()})",
                    ),
                    keep_alive=False,
                )
                return
            await _serve_requests(_Connection(stream), router, tracker, pool, slot)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError):
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
    limits = pool.limits
    # The first request's head is due within head_timeout of the accept; later ones may be
    # awaited for idle_timeout, then their head is due within head_timeout of its first byte.
    head_deadline = anyio.current_time() + limits.head_timeout
    while True:
        try:
            # Idle: the only state in which the pool may close this connection for a newcomer,
            # and nothing of a request has been read, so nothing is lost.
            pool.idle(slot)
            with anyio.fail_after(max(0.0, head_deadline - anyio.current_time())):
                await connection.request_begun()
            pool.busy(slot)
            with anyio.fail_after(limits.head_timeout):
                event = await connection.next_event()
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            request, keep_alive = await _read_request(connection, event, limits)
        except h11.RemoteProtocolError as exc:
            if connection.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with anyio.fail_after(limits.reply_timeout):
                    await connection.respond(
                        exc.error_status_hint,
                        _error_body("bad_http", f"malformed HTTP request: {exc}"),
                        keep_alive=False,
                    )
            return
        except _BodyTooLarge:
            with anyio.fail_after(limits.reply_timeout):
                await connection.respond(
                    413,
                    _error_body(
                        "body_too_large", f"request bodies are limited to {MAX_BODY} bytes"
                    ),
                    keep_alive=False,
                )
            return
        tracker.request_started()
        try:
            status, body = await _answer(router, request, event)
            with anyio.fail_after(limits.reply_timeout):
                await connection.respond(status, body, keep_alive)
        finally:
            tracker.request_finished()
        if not keep_alive or connection.h11.our_state is h11.MUST_CLOSE:
            return
        try:
            connection.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return
        head_deadline = anyio.current_time() + limits.idle_timeout


class _BodyTooLarge(Exception):
    pass


async def _read_request(
    connection: _Connection, head: h11.Request, limits: ConnectionLimits
) -> tuple[ApiRequest, bool]:
    chunks: list[bytes] = []
    size = 0
    with anyio.fail_after(limits.body_timeout):
        while True:
            event = await connection.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise _BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise h11.RemoteProtocolError("connection closed mid-request")
    target = urlsplit(head.target.decode("latin-1"))
    request = ApiRequest(
        method=head.method.decode("ascii", errors="replace"),
        path=target.path,
        query=parse_qs(target.query),
        body=b"".join(chunks),
    )
    keep_alive = not any(
        name.lower() == b"connection" and value.lower() == b"close" for name, value in head.headers
    )
    return request, keep_alive


async def _answer(router: Router, request: ApiRequest, head: h11.Request) -> tuple[int, bytes]:
    for name, value in head.headers:
        if name.lower() == PROTOCOL_HEADER.encode() and value != str(PROTOCOL_VERSION).encode():
            client_version = value.decode("ascii", errors="replace")
            return 400, _error_body(
                "protocol_mismatch",
                f"this supervisor speaks protocol {PROTOCOL_VERSION}, the client speaks "
                f"{client_version}; install matching spec-kitty-supervisor versions, or stop "
                "this supervisor (`spec-kitty-supervisor stop`) so the newer one can start",
                {"supervisor_protocol": PROTOCOL_VERSION, "client_protocol": client_version},
            )
    try:
        status, model = await router.dispatch(request)
    except ApiError as exc:
        return exc.status, _error_body(exc.code, exc.message, exc.details)
    except Exception as exc:
        log.exception("handler_failed", path=request.path)
        return 500, _error_body("internal_error", f"the supervisor failed this request: {exc!r}")
    return status, model.model_dump_json().encode()

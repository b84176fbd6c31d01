"""HTTP/1.1 over the supervisor's Unix socket.

The synchronous transport speaks h11 over a raw socket and keeps the connection alive: the warm
``ensure`` is spec-kitty's hot path, and an httpx client costs about three times as much per
request as this. The asynchronous transport is httpx's own, over the same socket.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11

from ._errors import ProtocolMismatch, SupervisorUnavailable, error_from_response
from ._models import PROTOCOL_VERSION

if TYPE_CHECKING:
    import httpx

__all__ = ["PROTOCOL_HEADER", "AsyncTransport", "Reply", "SyncTransport", "raise_for_reply"]

PROTOCOL_HEADER = "spec-kitty-supervisor-protocol"
_BASE_HEADERS = [
    ("host", "supervisor"),
    ("accept", "application/json"),
    (PROTOCOL_HEADER, str(PROTOCOL_VERSION)),
]


@dataclass(frozen=True)
class Reply:
    status: int
    protocol: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raise_for_reply(reply: Reply) -> None:
    """Turn an error answer, or a supervisor of another protocol, into our exception."""
    if reply.protocol is not None and reply.protocol != str(PROTOCOL_VERSION):
        raise ProtocolMismatch(
            f"the supervisor speaks protocol {reply.protocol}, this client speaks "
            f"{PROTOCOL_VERSION}; upgrade spec-kitty-supervisor so both match, or stop the "
            "running supervisor (`spec-kitty-supervisor stop`)"
        )
    if reply.status < 400:
        return
    try:
        error = reply.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", reply.body.decode(errors="replace"), None
    if code == "protocol_mismatch":
        raise ProtocolMismatch(message)
    raise error_from_response(code, message, reply.status, details)


class SyncTransport:
    """One kept-alive connection; reconnects once when the supervisor closed it meanwhile."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._conn: h11.Connection | None = None

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise SupervisorUnavailable(
                f"no supervisor answers on {self.socket_path} ({exc.strerror or exc})"
            ) from None
        self._sock = sock
        self._conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        fresh = self._sock is None
        if fresh:
            self._connect()
        try:
            return self._exchange(method, path, body)
        except (OSError, h11.ProtocolError, _ClosedBeforeReply) as exc:
            self.close()
            if fresh or isinstance(exc, TimeoutError):
                raise SupervisorUnavailable(
                    f"the supervisor on {self.socket_path} did not answer: {exc}"
                ) from None
        # A kept-alive connection the supervisor had closed (idle timeout, restart): the
        # request never reached it, so one retry on a new connection is safe.
        self._connect()
        try:
            return self._exchange(method, path, body)
        except (OSError, h11.ProtocolError, _ClosedBeforeReply) as exc:
            self.close()
            raise SupervisorUnavailable(
                f"the supervisor on {self.socket_path} did not answer: {exc}"
            ) from None

    def _exchange(self, method: str, path: str, body: bytes | None) -> Reply:
        assert self._sock is not None
        assert self._conn is not None
        conn = self._conn
        headers = list(_BASE_HEADERS)
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        data = conn.send(h11.Request(method=method, target=path, headers=headers))
        if body is not None:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        self._sock.sendall(data)
        status = 0
        protocol: str | None = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                received = self._sock.recv(65536)
                if not received and status == 0:
                    raise _ClosedBeforeReply("connection closed before a reply")
                conn.receive_data(received)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name == PROTOCOL_HEADER.encode():
                        protocol = value.decode("ascii", errors="replace")
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClosedBeforeReply("connection closed mid-reply")
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self.close()
        else:
            conn.start_next_cycle()
        return Reply(status=status, protocol=protocol, body=b"".join(chunks))


class _ClosedBeforeReply(Exception):
    pass


class AsyncTransport:
    """The async twin of :class:`SyncTransport`, on httpx."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        # Imported here: a synchronous caller (spec-kitty's CLI) never pays for httpx.
        import httpx

        self.socket_path = socket_path
        self._client: httpx.AsyncClient = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path), retries=1),
            base_url="http://supervisor",
            timeout=timeout,
            headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
        )

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        import httpx

        try:
            response = await self._client.request(
                method,
                path,
                content=body,
                headers={"content-type": "application/json"} if body is not None else None,
            )
        except httpx.TransportError as exc:
            raise SupervisorUnavailable(
                f"no supervisor answers on {self.socket_path} ({exc})"
            ) from None
        return Reply(
            status=response.status_code,
            protocol=response.headers.get(PROTOCOL_HEADER),
            body=response.content,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

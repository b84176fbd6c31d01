"""Talking to sync daemons over loopback HTTP: the health probe and the token shutdown.

Upstream daemons run the stdlib ``HTTPServer``: HTTP/1.0, one request per connection, the body
delimited by the connection closing. h11 speaks that exactly, so each probe is one connection,
one request and a bounded read, with a hard timeout around the whole exchange.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import anyio

from ._health import HealthAnswer

__all__ = ["DaemonReply", "HealthAnswer", "http_request", "post_shutdown", "probe_health"]

_MAX_BODY = 256 * 1024


class DaemonReply(NamedTuple):
    status: int
    body: bytes


async def http_request(
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    timeout: float,
    host: str = "127.0.0.1",
) -> DaemonReply | None:
    """One HTTP exchange with a loopback listener; None when it did not answer in time."""
    # h11 is imported by the first probe, not by the supervisor's start (a clean root's
    # supervisor probes no daemon before it serves).
    import h11

    with anyio.move_on_after(timeout):
        try:
            return await _exchange(host, port, method, target, body)
        except (OSError, h11.ProtocolError, anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    return None


async def _exchange(host: str, port: int, method: str, target: str, body: bytes) -> DaemonReply:
    import h11

    connection = h11.Connection(our_role=h11.CLIENT)
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    if body:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    async with await anyio.connect_tcp(host, port) as stream:
        out = connection.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += connection.send(h11.Data(data=body))
        out += connection.send(h11.EndOfMessage())
        await stream.send(out)
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(65536)
                except anyio.EndOfStream:
                    data = b""
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return DaemonReply(status=status, body=b"".join(chunks))


async def probe_health(port: int, timeout: float, host: str = "127.0.0.1") -> HealthAnswer | None:
    """``GET /api/health``; None when nothing answered a JSON object with 200 in ``timeout``."""
    reply = await http_request(port, "GET", "/api/health", timeout=timeout, host=host)
    if reply is None or reply.status != 200:
        return None
    try:
        payload = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    return HealthAnswer.from_payload(payload)


async def post_shutdown(port: int, token: str, timeout: float) -> bool:
    """``POST /api/shutdown`` with the daemon's token; True when it said it is stopping."""
    body = json.dumps({"token": token}).encode()
    reply = await http_request(port, "POST", "/api/shutdown", body=body, timeout=timeout)
    return reply is not None and reply.status == 200

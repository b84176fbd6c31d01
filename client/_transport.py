"""HTTP/1.1 over the supervisor's Unix socket.

The synchronous transport is :mod:`._wire`'s kept-alive connection over a raw socket: the warm
``ensure`` is spec-kitty's hot path, and an httpx client costs about three times as much per
request. The same wire, copied verbatim, is the transport of the hook that ``integrate``
installs into spec-kitty's environment. The asynchronous transport is httpx's own, over the
same socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import ProtocolMismatch, SupervisorBusy, SupervisorUnavailable, error_from_response
from ._wire import PROTOCOL_HEADER, PROTOCOL_VERSION, Busy, Connection, Reply, Unavailable

if TYPE_CHECKING:
    import httpx

__all__ = ["PROTOCOL_HEADER", "AsyncTransport", "Reply", "SyncTransport", "raise_for_reply"]


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
    """One kept-alive connection (:class:`_wire.Connection`), failures in this library's terms.

    ``keep_alive=False``: one connection per request, closed by the supervisor once it has
    answered (the one call asks once per process).
    """

    def __init__(self, socket_path: Path, timeout: float, *, keep_alive: bool = True) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._connection = Connection(socket_path, timeout, keep_alive=keep_alive)

    def close(self) -> None:
        self._connection.close()

    def follow(self, socket_path: Path) -> None:
        """Talk to ``socket_path`` from now on: a supervisor just started may have recorded a
        socket folder of its own (a deep root whose predictable folder someone else took)."""
        if socket_path != self.socket_path:
            self._connection.close()
            self.socket_path = socket_path
            self._connection = Connection(socket_path, self.timeout, keep_alive=self.keep_alive)

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        try:
            return self._connection.request(method, path, body)
        except Unavailable as exc:
            raise SupervisorUnavailable(str(exc)) from None
        except Busy as exc:
            # Not "unavailable": a full backlog proves a supervisor listens; starting
            # another would only find the root locked.
            raise SupervisorBusy(str(exc)) from None


class AsyncTransport:
    """The async twin of :class:`SyncTransport`, on httpx."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        # Imported here: a synchronous caller (spec-kitty's CLI) never pays for httpx.
        import httpx

        self.socket_path = socket_path
        self.timeout = timeout
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

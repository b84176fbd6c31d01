"""What a client can hold of the control API (issue 14, slow clients): a bounded number of
connections, the longest-idle one closed first to make room, and deadlines for a request's
head, its body, its answer and an idle kept-alive connection. Limits are injected small here;
the defaults are 512 connections (fewer when descriptors are scarce), 5 s, 10 s, 10 s, 60 s."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream
from pydantic import BaseModel

from sks_harness import aeventually
from spec_kitty_supervisor._api import ApiRequest, Route, Router, _Connection, serve_connection
from spec_kitty_supervisor._connections import ConnectionLimits, ConnectionPool
from spec_kitty_supervisor._fd_wait import SocketReads
from spec_kitty_supervisor._serving import ConnectionTasks, UnixAcceptor, accept_loop
from spec_kitty_supervisor_client._models import SupervisorHealth

pytestmark = pytest.mark.anyio

#: Generous: only a broken server makes a test wait this long.
HANG_GUARD = 30.0
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: s\r\n\r\n"


class _Tracker:
    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        pass


class Server:
    def __init__(self, path: Path, pool: ConnectionPool) -> None:
        self.path = path
        self.pool = pool
        self.release_slow = anyio.Event()
        self.slow_started = 0


#: Timeouts no busy machine reaches by accident: for the tests about anything but timeouts.
GENEROUS = ConnectionLimits(
    max_connections=3,
    head_timeout=HANG_GUARD,
    body_timeout=HANG_GUARD,
    reply_timeout=HANG_GUARD,
    idle_timeout=HANG_GUARD,
)
#: Timeouts that expire quickly: only for the tests that wait for one to expire.
QUICK = ConnectionLimits(
    max_connections=3, head_timeout=0.5, body_timeout=0.5, reply_timeout=0.5, idle_timeout=0.5
)
quick_timeouts = pytest.mark.parametrize("limits", [QUICK], indirect=True, ids=["quick"])


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> ConnectionLimits:
    # A stall of the test process longer than a quick timeout would close a connection that a
    # test about eviction or keep-alive expects open: those get generous timeouts.
    limits: ConnectionLimits = getattr(request, "param", GENEROUS)
    return limits


@pytest.fixture(params=["acceptor", "anyio_listener"])
async def server(
    tmp_path: Path, limits: ConnectionLimits, request: pytest.FixtureRequest
) -> AsyncIterator[Server]:
    """Served as the supervisor serves (its acceptor hands sockets to connection tasks), and
    from an anyio listener's streams, which ``serve_connection`` also takes."""
    state = Server(tmp_path / "api.sock", ConnectionPool(limits))

    async def health(request: ApiRequest) -> BaseModel:
        return SupervisorHealth(pid=1, version="t", protocol_version=1, root="/r")

    async def slow(request: ApiRequest) -> BaseModel:
        state.slow_started += 1
        await state.release_slow.wait()
        return SupervisorHealth(pid=2, version="t", protocol_version=1, root="/r")

    router = Router([Route("GET", "/v1/health", health), Route("GET", "/v1/slow", slow)])

    async def handle(client: socket.socket | SocketStream) -> None:
        await serve_connection(client, router, _Tracker(), state.pool)

    if request.param == "acceptor":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(state.path))
        sock.listen(128)
        acceptor = UnixAcceptor(sock)
        async with ConnectionTasks() as connections, anyio.create_task_group() as group:
            group.start_soon(accept_loop, acceptor, handle, connections)
            yield state
            state.release_slow.set()
            await acceptor.aclose()
        assert len(connections) == 0  # every connection's task ended with the server
        return
    async with (
        await anyio.create_unix_listener(state.path) as listener,
        anyio.create_task_group() as group,
    ):
        group.start_soon(listener.serve, handle)
        yield state
        state.release_slow.set()
        group.cancel_scope.cancel()


async def _reply(stream: SocketStream) -> bytes:
    """One whole answer (they all carry content-length), or what came before the close."""
    data = b""
    with anyio.fail_after(HANG_GUARD):
        while b"\r\n\r\n" not in data:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(body) < length:
            body += await stream.receive()
    return data


async def _closed_by_server(stream: SocketStream) -> bool:
    """True once the server closes the connection (EOF), never on our own guard."""
    with anyio.fail_after(HANG_GUARD):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
    return True


async def _kept_alive(path: Path) -> SocketStream:
    stream = await anyio.connect_unix(path)
    await stream.send(HEALTH)
    assert (await _reply(stream)).startswith(b"HTTP/1.1 200")
    return stream


@quick_timeouts
async def test_a_kept_alive_connection_idle_too_long_is_closed(server: Server) -> None:
    async with await _kept_alive(server.path) as stream:
        assert await _closed_by_server(stream)


async def test_a_kept_alive_connection_in_use_stays_open(server: Server) -> None:
    async with await _kept_alive(server.path) as stream:
        for _ in range(3):
            await stream.send(HEALTH)
            assert (await _reply(stream)).startswith(b"HTTP/1.1 200")


async def test_a_client_that_asks_to_close_is_answered_then_closed_by_the_server(
    server: Server,
) -> None:
    async with await anyio.connect_unix(server.path) as stream:
        await stream.send(b"GET /v1/health HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
        reply = await _reply(stream)
        assert reply.startswith(b"HTTP/1.1 200")
        assert b"\r\nconnection: close\r\n" in reply.lower()
        # Closed by the server while this end still holds the connection open.
        assert await _closed_by_server(stream)


@quick_timeouts
async def test_no_deadline_runs_while_a_handler_works(server: Server) -> None:
    # Kept alive first, so that the connection waited (a deadline was set) before the request.
    async with await _kept_alive(server.path) as stream:
        await stream.send(b"GET /v1/slow HTTP/1.1\r\nHost: s\r\n\r\n")
        await aeventually(lambda: server.slow_started == 1, what="the slow request in flight")
        began = anyio.current_time()
        # Every deadline of QUICK passes while the handler works; the answer still comes.
        await aeventually(
            lambda: anyio.current_time() > began + 2 * QUICK.idle_timeout,
            what="every deadline to pass",
        )
        server.release_slow.set()
        reply = await _reply(stream)
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["pid"] == 2


@quick_timeouts
async def test_a_request_head_sent_byte_by_byte_must_still_arrive_in_time(server: Server) -> None:
    # Each byte comes well within any per-read timeout; the head as a whole never completes.
    async with await anyio.connect_unix(server.path) as stream:
        closed = False
        with anyio.fail_after(HANG_GUARD):
            for byte in b"GET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
                try:
                    await stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, OSError):
                    closed = True
                    break
                await anyio.sleep(0.05)
        assert closed, "a trickled head was never cut off"


@quick_timeouts
async def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    async with await anyio.connect_unix(server.path) as stream:
        assert await _closed_by_server(stream)


@quick_timeouts
async def test_a_body_that_does_not_arrive_in_time_closes_the_connection(server: Server) -> None:
    async with await anyio.connect_unix(server.path) as stream:
        await stream.send(b"POST /v1/health HTTP/1.1\r\nHost: s\r\nContent-Length: 100\r\n\r\n{")
        assert await _closed_by_server(stream)


async def test_when_full_the_longest_idle_connection_makes_room(server: Server) -> None:
    oldest = await _kept_alive(server.path)
    middle = await _kept_alive(server.path)
    newest = await _kept_alive(server.path)
    async with await anyio.connect_unix(server.path) as newcomer:
        await newcomer.send(HEALTH)
        assert (await _reply(newcomer)).startswith(b"HTTP/1.1 200")
    assert await _closed_by_server(oldest)
    for stream in (middle, newest):  # the others still serve
        await stream.send(HEALTH)
        assert (await _reply(stream)).startswith(b"HTTP/1.1 200")
    for stream in (oldest, middle, newest):
        await stream.aclose()


async def test_when_every_connection_is_mid_request_a_newcomer_is_closed(server: Server) -> None:
    busy = []
    for _ in range(3):
        stream = await anyio.connect_unix(server.path)
        await stream.send(b"GET /v1/slow HTTP/1.1\r\nHost: s\r\n\r\n")
        busy.append(stream)
    await aeventually(lambda: server.slow_started == 3, what="three slow requests in flight")
    async with await anyio.connect_unix(server.path) as newcomer:
        assert await _closed_by_server(newcomer)
    server.release_slow.set()
    for stream in busy:  # nothing in flight was cut off
        reply = await _reply(stream)
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["pid"] == 2
        await stream.aclose()


def test_the_default_bound_leaves_descriptors_for_everything_else() -> None:
    assert ConnectionLimits().for_descriptor_limit(4096).max_connections == 512
    assert ConnectionLimits().for_descriptor_limit(256).max_connections == 192
    assert ConnectionLimits().for_descriptor_limit(65).max_connections == 1
    assert ConnectionLimits().idle_timeout == 60.0
    assert (ConnectionLimits().head_timeout, ConnectionLimits().body_timeout) == (5.0, 10.0)


async def test_the_pool_picks_the_connection_idle_the_longest() -> None:
    now = [0.0]
    pool = ConnectionPool(ConnectionLimits(max_connections=2), clock=lambda: now[0])
    first = pool.admit(anyio.CancelScope())
    now[0] = 1.0
    second = pool.admit(anyio.CancelScope())
    assert first is not None
    assert second is not None
    pool.busy(first)  # mid-request: never chosen
    now[0] = 2.0
    third = pool.admit(anyio.CancelScope())
    assert third is not None
    assert second.evicted
    assert second.scope.cancel_called
    assert not first.evicted
    pool.busy(third)
    assert pool.admit(anyio.CancelScope()) is None  # all that remain are busy


async def test_a_request_sent_while_a_handler_works_is_not_polled_meanwhile(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection stays registered with the loop between requests (docs/adr/0023). A
    # request that arrives while the previous one's handler works makes the descriptor
    # readable with nobody waiting: it must be unregistered, not reported every turn.
    callbacks = 0
    readable = SocketReads._readable

    def counting(self: SocketReads) -> None:
        nonlocal callbacks
        callbacks += 1
        readable(self)

    monkeypatch.setattr(SocketReads, "_readable", counting)
    async with await _kept_alive(server.path) as stream:  # waited once: registered
        await stream.send(b"GET /v1/slow HTTP/1.1\r\nHost: s\r\n\r\n")
        await aeventually(lambda: server.slow_started == 1, what="the slow request in flight")
        before = callbacks
        await stream.send(HEALTH)  # pipelined behind the slow one
        for _ in range(100):
            await asyncio.sleep(0)  # a hundred turns of the loop, each polling
        assert callbacks - before <= 2
        server.release_slow.set()
        first = await _reply(stream)
        assert json.loads(first.partition(b"\r\n\r\n")[2])["pid"] == 2
        second = await _reply(stream)
        assert json.loads(second.partition(b"\r\n\r\n")[2])["pid"] == 1


async def test_a_connection_ended_while_it_waits_leaves_nothing_registered_with_the_loop() -> None:
    async def health(request: ApiRequest) -> BaseModel:
        return SupervisorHealth(pid=1, version="t", protocol_version=1, root="/r")

    router = Router([Route("GET", "/v1/health", health)])
    loop = asyncio.get_running_loop()
    served, client = socket.socketpair()
    fd = served.fileno()
    with client:
        client.setblocking(False)
        async with anyio.create_task_group() as group:
            group.start_soon(serve_connection, served, router, _Tracker(), ConnectionPool())
            for _ in range(2):  # kept alive: between requests the connection waits, registered
                client.send(HEALTH)
                reply = b""
                with anyio.fail_after(HANG_GUARD):
                    while not reply.endswith(b"}"):
                        await anyio.wait_readable(client)
                        reply += client.recv(65536)
                assert reply.startswith(b"HTTP/1.1 200")
            # Ended while it waits for the next request (a shutdown; eviction and deadlines
            # end it the same way): its descriptor is not readable, so only the connection's
            # own clean-up can unregister it.
            group.cancel_scope.cancel()
        assert served.fileno() == -1  # closed by serve_connection
        # Unregistered before the close: no entry is left for a descriptor number that the
        # kernel hands out again (asyncio would then take the new socket for the old one).
        assert not loop.remove_reader(fd)


async def test_a_connection_deadline_timer_moves_only_for_an_earlier_deadline() -> None:
    served, client = socket.socketpair()
    scope = anyio.CancelScope()  # what the connection's task runs in; only its cancel is read
    with served, client:
        connection = _Connection(served, scope)
        connection.due_in(60)
        connection._arm()
        first = connection._timer
        assert first is not None
        # A kept-alive request: the deadline is lifted for its handler, then a later one is
        # put in force for the next wait. The timer set for the earlier one stays.
        connection.no_deadline()
        connection.due_in(120)
        connection._arm()
        assert connection._timer is first
        assert not first.cancelled()
        # An earlier deadline (a head due sooner than the idle one) moves it.
        connection.due_in(1)
        connection._arm()
        moved = connection._timer
        assert moved is not None
        assert moved is not first
        assert first.cancelled()
        moved.cancel()  # fired by hand below
        # Fired before the deadline in force: set again for that deadline, nothing ended.
        connection.due_in(60)
        connection._arm()
        assert connection._timer is moved  # later than the timer: not moved
        connection._timer_fired()
        again = connection._timer
        assert again is not None
        assert again.when() == connection.armed
        assert not scope.cancel_called
        again.cancel()
        # Fired while a handler works (no deadline in force): nothing ends, no timer is left.
        connection.no_deadline()
        connection._timer_fired()
        assert connection._timer is None
        assert not scope.cancel_called
        # Fired once the deadline in force has passed: the connection ends.
        connection.due_in(-1)
        connection._arm()
        passed = connection._timer
        assert passed is not None
        passed.cancel()
        connection._timer_fired()
        assert scope.cancel_called
        connection.due_in(60)
        connection._arm()
        last = connection._timer
        assert last is not None
        connection.release()
        assert last.cancelled()
        assert connection._timer is None

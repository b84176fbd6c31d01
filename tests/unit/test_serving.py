"""The control socket stays served: the accept loop survives running out of descriptors, and
the self-probe tells a socket that answers us from one that does not (issue 8)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketListener, SocketStream
from pydantic import BaseModel
from structlog.testing import capture_logs

from sks_harness import aeventually
from spec_kitty_supervisor._api import ApiRequest, Route, Router, serve_connection
from spec_kitty_supervisor._fd_wait import SocketReads, wait_writable
from spec_kitty_supervisor._serving import (
    SERVING_FAILURES,
    ConnectionTasks,
    ServingRecord,
    UnixAcceptor,
    accept_loop,
    probe_own_socket,
)
from spec_kitty_supervisor_client._models import SupervisorHealth

pytestmark = pytest.mark.anyio


class _FailingFirst:
    """A real listener whose first accepts fail as anyio reports a failed accept()."""

    def __init__(self, real: SocketListener, errnos: list[int]) -> None:
        self.real = real
        self.errnos = list(errnos)
        self.attempts = 0

    async def accept(self) -> SocketStream:
        self.attempts += 1
        if self.errnos:
            code = self.errnos.pop(0)
            raise anyio.BrokenResourceError from OSError(code, "simulated")
        return await self.real.accept()


async def test_accept_failures_are_logged_once_per_run_and_the_loop_keeps_serving(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    served = anyio.Event()

    async def handle(stream: SocketStream) -> None:
        async with stream:
            await stream.send(b"served")
        served.set()

    failures = [errno.EMFILE, errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.ENOBUFS]
    async with await anyio.create_unix_listener(path) as real, anyio.create_task_group() as group:
        listener = _FailingFirst(real, failures)
        with capture_logs() as logs:
            group.start_soon(lambda: accept_loop(listener, handle, group, retry_pause=0))
            async with await anyio.connect_unix(path) as client:
                assert await client.receive() == b"served"
            await served.wait()
        group.cancel_scope.cancel()
    failed = [entry for entry in logs if entry["event"] == "accept_failed"]
    # One line per run of the same errno, not one per attempt.
    assert [entry["errno"] for entry in failed] == [errno.EMFILE, errno.ENFILE, errno.ENOBUFS]
    assert all(entry["resource_exhausted"] for entry in failed)
    assert failed[0]["error"] == "EMFILE"
    recovered = [entry for entry in logs if entry["event"] == "accept_recovered"]
    assert [entry["failed_attempts"] for entry in recovered] == [len(failures)]


async def test_the_accept_loop_ends_when_the_listener_is_closed(tmp_path: Path) -> None:
    async def handle(stream: SocketStream) -> None:
        await stream.aclose()

    listener = await anyio.create_unix_listener(tmp_path / "s.sock")
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: accept_loop(listener, handle, group, retry_pause=0))
        await anyio.wait_all_tasks_blocked()
        await listener.aclose()
    # Reaching this line means the loop returned: the task group waited for it.


def test_the_serving_record_gives_up_only_after_failures_in_a_row() -> None:
    record = ServingRecord()
    assert not record.observe("refused")
    assert not record.observe(None)  # one answer resets the count
    for _ in range(SERVING_FAILURES - 1):
        assert not record.observe("no answer")
    assert record.observe("no answer")
    assert record.failures == ["no answer"] * SERVING_FAILURES


class _Tracker:
    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        pass


@pytest.fixture
async def health_server(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "api.sock"

    async def health(request: ApiRequest) -> BaseModel:
        return SupervisorHealth(pid=4242, version="t", protocol_version=1, root="/r")

    router = Router([Route("GET", "/v1/health", health)])

    async def handle(stream: SocketStream) -> None:
        await serve_connection(stream, router, _Tracker())

    async with (
        await anyio.create_unix_listener(path) as listener,
        anyio.create_task_group() as group,
    ):
        group.start_soon(listener.serve, handle)
        yield path
        group.cancel_scope.cancel()


async def test_the_self_probe_passes_when_the_socket_answers_with_our_pid(
    health_server: Path,
) -> None:
    assert await probe_own_socket(health_server, 4242, timeout=5) is None


async def test_the_self_probe_fails_when_another_process_answers(health_server: Path) -> None:
    problem = await probe_own_socket(health_server, 1, timeout=5)
    assert problem is not None
    assert "pid 4242, not by us (pid 1)" in problem


async def test_the_self_probe_fails_when_nothing_listens(tmp_path: Path) -> None:
    problem = await probe_own_socket(tmp_path / "none.sock", 1, timeout=5)
    assert problem is not None
    assert "could not connect (ENOENT" in problem


async def test_the_self_probe_fails_when_connections_are_never_accepted(tmp_path: Path) -> None:
    # The state issue 8 found: the kernel queues the connection, nobody ever serves it.
    path = tmp_path / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.bind(str(path))
        stuck.listen(8)
        problem = await probe_own_socket(path, 1, timeout=0.2)
    assert problem == "no answer within 0.2 s"


def _bound(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


async def test_the_acceptor_serves_queued_connections_each_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    acceptor = UnixAcceptor(_bound(path))
    # Three clients queued before the first accept: all three are served, one at a time.
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for index, client in enumerate(clients):
        client.connect(str(path))
        client.sendall(b"%d" % index)
    got = []
    with anyio.fail_after(30):  # a guard against a hang, not a duration
        for _ in clients:
            accepted = await acceptor.accept()
            with accepted:
                # Handed over non-blocking, to be read as the server reads it.
                assert accepted.gettimeout() == 0.0
                await anyio.wait_readable(accepted.fileno())
                got.append(accepted.recv(16))
    assert sorted(got) == [b"0", b"1", b"2"]
    for client in clients:
        client.close()
    await acceptor.aclose()


async def test_closing_the_acceptor_ends_a_waiting_accept_loop(tmp_path: Path) -> None:
    acceptor = UnixAcceptor(_bound(tmp_path / "s.sock"))

    async def handle(accepted: socket.socket) -> None:
        accepted.close()

    with anyio.fail_after(30):  # a guard against a hang, not a duration
        async with anyio.create_task_group() as group:
            ended = anyio.Event()

            async def loop() -> None:
                await accept_loop(acceptor, handle, group, retry_pause=0)
                ended.set()

            group.start_soon(loop)
            await anyio.wait_all_tasks_blocked()
            await acceptor.aclose()
            await ended.wait()
    with pytest.raises(anyio.ClosedResourceError):
        await acceptor.accept()


async def test_closing_the_connection_tasks_ends_every_task_still_running() -> None:
    ended: list[int] = []
    started = anyio.Event()

    async def serve_forever(number: int) -> None:
        try:
            if number == 2:
                started.set()
            await anyio.sleep_forever()
        finally:
            ended.append(number)

    connections = ConnectionTasks()
    for number in range(3):
        connections.start_soon(serve_forever, number)
    await started.wait()
    assert len(connections) == 3
    with anyio.fail_after(30):  # a guard against a hang, not a duration
        await connections.aclose()
    assert sorted(ended) == [0, 1, 2]
    assert len(connections) == 0

    never_run = serve_forever(3)
    with pytest.raises(RuntimeError, match="closed"):
        connections.start_soon(lambda _: never_run, None)
    assert never_run.cr_frame is None  # closed, not left un-awaited


async def test_a_connection_task_that_fails_is_logged_and_the_others_keep_running() -> None:
    release = anyio.Event()
    served: list[str] = []

    async def fails(_: object) -> None:
        raise ValueError("a bug in serving one connection")

    async def waits(_: object) -> None:
        await release.wait()
        served.append("the other connection")

    with capture_logs() as logs:
        async with ConnectionTasks() as connections:
            connections.start_soon(waits, None)
            connections.start_soon(fails, None)
            await aeventually(
                lambda: any(e["event"] == "connection_task_failed" for e in logs),
                what="the failure logged",
            )
            assert len(connections) == 1  # the other one still runs
            release.set()
            await aeventually(lambda: served, what="the other connection served")
    failed = [entry for entry in logs if entry["event"] == "connection_task_failed"]
    assert failed[0]["error"] == "ValueError('a bug in serving one connection')"


async def test_a_wait_on_a_socket_ends_when_it_read_something_and_can_be_cancelled() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        reads = SocketReads(left, asyncio.get_running_loop())
        with anyio.move_on_after(0.05) as scope:
            await reads.wait()  # nothing sent: only the cancel ends it
        assert scope.cancelled_caught
        # The cancelled wait let go of the socket: a new wait on it works.
        right.send(b"x")
        with anyio.fail_after(30):  # a guard against a hang, not a duration
            await reads.wait()
            await wait_writable(left.fileno())
        assert reads.buffer == b"x"  # read by the wait's callback
        right.close()
        with anyio.fail_after(30):
            await reads.wait()
        assert reads.ended
        reads.close()


class _CountingReads(SocketReads):
    """SocketReads counting how often the loop called it back."""

    __slots__ = ("callbacks",)

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(sock, loop)
        self.callbacks = 0

    def _readable(self) -> None:
        self.callbacks += 1
        super()._readable()


async def _turns(count: int) -> None:
    """Let the loop run ``count`` times (each turn polls the descriptors registered)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_socket_stays_registered_between_waits_and_is_let_go_on_close() -> None:
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        reads = _CountingReads(left, loop)
        with anyio.fail_after(30):  # a guard against a hang, not a duration
            for byte in (b"a", b"b", b"c"):
                right.send(byte)
                await reads.wait()
                assert reads.buffer == byte
                reads.buffer.clear()
                assert reads.registered  # kept for the next wait
        # Read by the callback that woke each wait, so the loop never reported the same bytes
        # twice: one callback a wake.
        await _turns(20)
        assert reads.callbacks == 3
        reads.close()
        assert not reads.registered
        # Nothing of the descriptor is left with the loop: removing it finds nothing.
        assert not loop.remove_reader(left.fileno())


async def test_a_readable_socket_nobody_waits_for_is_unregistered_not_polled_again() -> None:
    # Level-triggered: bytes nobody reads keep the socket readable. Were it left registered
    # while its owner works elsewhere, the loop would call back every turn.
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        reads = _CountingReads(left, loop)
        right.send(b"first")
        with anyio.fail_after(30):
            await reads.wait()
        right.send(b"second")  # arrives while the owner "handles" the first, not waiting
        await _turns(50)
        assert not reads.registered
        assert reads.callbacks <= 2  # the wake, the unregistering
        assert reads.buffer == b"first"  # nothing read that nobody asked for
        # The next wait registers again and is woken with the bytes at once.
        with anyio.fail_after(30):
            await reads.wait()
        assert reads.registered
        assert reads.buffer == b"firstsecond"
        reads.close()
        assert not loop.remove_reader(left.fileno())

"""The control socket while the supervisor starts (``_starting``, docs/adr/0015).

Health is answered at once and says ``starting``; a malformed request gets the 4xx the full
server would give it; everything else is held, bytes and all, and served by the full server
after the hand-over. No sleep: each step waits on an answer, or on the thread being stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from sks_harness import DEFAULT_TIMEOUT
from spec_kitty_supervisor import _starting
from spec_kitty_supervisor._api import ApiRequest, Route, Router, serve_connection
from spec_kitty_supervisor._connections import ConnectionPool
from spec_kitty_supervisor._control_socket import bind_control_socket
from spec_kitty_supervisor._http import response_bytes
from spec_kitty_supervisor._starting import (
    Answer,
    HandedConnection,
    HandOver,
    StartingServer,
    health_body,
    next_step,
)
from spec_kitty_supervisor_client._models import SupervisorHealth

HEALTH_BODY = health_body(4242, "9.9.9", "/r")
HEALTH = b"GET /v1/health HTTP/1.1\r\nhost: s\r\n\r\n"
HEALTH_ONCE = b"GET /v1/health HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n"
STATUS = b"GET /v1/status HTTP/1.1\r\nhost: s\r\n\r\n"
ENSURE_BODY = b'{"python": "/usr/bin/python3"}'
ENSURE = (
    b"POST /v1/sync/ensure HTTP/1.1\r\nhost: s\r\ncontent-length: %d\r\n\r\n" % len(ENSURE_BODY)
    + ENSURE_BODY
)


# --------------------------------------------------------------------------------------------
# the decision for one connection's bytes (pure)


def test_an_incomplete_request_waits_for_more() -> None:
    assert next_step(b"GET /v1/health HTTP/1.1\r\nhost: s\r\n", HEALTH_BODY) is None
    assert next_step(b"", HEALTH_BODY) is None


def test_health_is_answered_and_says_starting() -> None:
    step = next_step(HEALTH + STATUS, HEALTH_BODY)
    assert isinstance(step, Answer)
    assert step.consumed == len(HEALTH)  # the status request behind it is left
    assert not step.close
    assert step.data.startswith(b"HTTP/1.1 200 OK\r\n")
    document = json.loads(step.data.split(b"\r\n\r\n", 1)[1])
    assert document == {
        "status": "ok",
        "state": "starting",
        "pid": 4242,
        "version": "9.9.9",
        "protocol_version": 1,
        "root": "/r",
    }
    # The protocol's model reads it, and says the truth about it.
    assert SupervisorHealth.model_validate(document).state == "starting"


def test_health_asking_to_close_is_closed_after_its_answer() -> None:
    request = b"GET /v1/health?x=1 HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n"
    step = next_step(request, HEALTH_BODY)
    assert isinstance(step, Answer)
    assert step.close
    assert b"connection: close\r\n" in step.data


def test_health_with_a_body_waits_for_the_body() -> None:
    head = b"GET /v1/health HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\n\r\n"
    assert next_step(head + b"ab", HEALTH_BODY) is None
    step = next_step(head + b"abcd", HEALTH_BODY)
    assert isinstance(step, Answer)
    assert step.consumed == len(head) + 4


@pytest.mark.parametrize(
    "request_bytes",
    [
        STATUS,
        ENSURE,
        b"POST /v1/health HTTP/1.1\r\nhost: s\r\n\r\n",  # the full server says 405
        b"GET /v1/nowhere HTTP/1.1\r\nhost: s\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nhost: s\r\nspec-kitty-supervisor-protocol: 2\r\n\r\n",
        b"POST /v1/shutdown HTTP/1.1\r\nhost: s\r\ncontent-length: 2\r\n\r\n{",  # incomplete
    ],
)
def test_every_other_request_is_handed_over(request_bytes: bytes) -> None:
    assert isinstance(next_step(request_bytes, HEALTH_BODY), HandOver)


MALFORMED = [
    b"NOT HTTP\r\n\r\n",
    b"GET /v1/health HTTP/1.1\n\n",
    b"GET /v1/health HTTP/1.1\r\n\r\n",  # no host
    b"GET /v1/health HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n",
    b"POST /v1/sync/ensure HTTP/1.1\r\nhost: s\r\ncontent-length: 99999999\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nhost: s\r\n x\r\n\r\n",
    b"GET /" + b"a" * (70 * 1024),
]


@pytest.mark.parametrize("request_bytes", MALFORMED)
def test_a_malformed_request_is_refused_with_a_4xx(request_bytes: bytes) -> None:
    step = next_step(request_bytes, HEALTH_BODY)
    assert isinstance(step, Answer)
    status = int(step.data.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert step.linger
    assert step.consumed == len(request_bytes)
    assert json.loads(step.data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_http"


class _Tracker:
    def __init__(self) -> None:
        self.requests = 0

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def request_started(self) -> None:
        self.requests += 1

    def request_finished(self) -> None:
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("request_bytes", MALFORMED)
async def test_a_malformed_request_gets_the_answer_the_full_server_gives(
    request_bytes: bytes,
) -> None:
    """The same bytes: a client cannot tell which stage refused it."""
    step = next_step(request_bytes, HEALTH_BODY)
    assert isinstance(step, Answer)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    tracker = _Tracker()
    with anyio.fail_after(DEFAULT_TIMEOUT), theirs:  # a guard against a hang, not a duration
        async with anyio.create_task_group() as group:
            group.start_soon(serve_connection, ours, _router(), tracker, ConnectionPool())
            await anyio.to_thread.run_sync(theirs.sendall, request_bytes)
            theirs.shutdown(socket.SHUT_WR)
            reply = await anyio.to_thread.run_sync(_read_to_end, theirs)
    assert reply == step.data
    assert tracker.requests == 0


# --------------------------------------------------------------------------------------------
# the server: a real socket, its thread, the hand-over


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_answer(sock: socket.socket) -> tuple[int, Any]:
    """One answer off ``sock``: its status and JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside an answer"
        rest += chunk
    assert len(rest) == length, "more bytes than one answer"
    return int(head.split(b" ", 2)[1]), json.loads(rest)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sks-start-", dir="/tmp"))  # short: a socket path
    try:
        yield folder / "supervisor.sock"
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def server(socket_path: Path) -> Iterator[StartingServer]:
    server = StartingServer(bind_control_socket(socket_path), socket_path, HEALTH_BODY)
    server.start()
    try:
        yield server
    finally:
        server.close()
        server.listener.close()  # the test's own once it was handed over


def _client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEFAULT_TIMEOUT)  # a guard against a hang, not a duration
    sock.connect(os.fsencode(path))
    return sock


class _Answers:
    """What the full server's router answers, and how often it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def status(self, request: ApiRequest) -> BaseModel:
        self.asked.append("status")
        return SupervisorHealth(pid=1, version="full", protocol_version=1, root="/status")

    async def ensure(self, request: ApiRequest) -> BaseModel:
        self.asked.append(f"ensure {request.body.decode()}")
        return SupervisorHealth(pid=2, version="full", protocol_version=1, root="/ensure")

    async def health(self, request: ApiRequest) -> BaseModel:
        self.asked.append("health")
        return SupervisorHealth(pid=3, version="full", protocol_version=1, root="/health")


def _router(answers: _Answers | None = None) -> Router:
    answers = answers or _Answers()
    return Router(
        [
            Route("GET", "/v1/health", answers.health),
            Route("GET", "/v1/status", answers.status),
            Route("POST", "/v1/sync/ensure", answers.ensure),
        ]
    )


async def _serve_held(held: list[HandedConnection], router: Router) -> None:
    pool = ConnectionPool()
    async with anyio.create_task_group() as group:
        for connection in held:
            group.start_soon(
                lambda c: serve_connection(
                    c.sock,
                    router,
                    _Tracker(),
                    pool,
                    received=c.received,
                    unsent=c.unsent,
                    close_after=c.close_after,
                ),
                connection,
            )


def test_health_is_answered_while_starting_on_a_kept_alive_connection(
    server: StartingServer, socket_path: Path
) -> None:
    with _client(socket_path) as client:
        for _ in range(2):
            client.sendall(HEALTH)
            status, document = _read_answer(client)
            assert status == 200
            assert document["state"] == "starting"
            assert document["pid"] == 4242
    assert server.answered == 2


@pytest.mark.anyio
async def test_requests_held_while_starting_are_served_after_the_hand_over(
    server: StartingServer, socket_path: Path
) -> None:
    answers = _Answers()
    pipelined = _client(socket_path)  # health, then status behind it in the same write
    ensure = _client(socket_path)  # an ensure: only the full lifecycle may answer it
    silent = _client(socket_path)  # connected, nothing sent yet
    with pipelined, ensure, silent:
        pipelined.sendall(HEALTH + STATUS)
        assert _read_answer(pipelined)[1]["state"] == "starting"
        ensure.sendall(ENSURE)
        # The silent one is held once accepted: health on a fourth connection is answered
        # after the thread has accepted everything queued before it (and that one is closed
        # by the thread in the step that answered it).
        with _client(socket_path) as probe:
            probe.sendall(HEALTH_ONCE)
            assert _read_answer(probe)[0] == 200

        held = server.hand_over()

        assert len(held) == 3  # the probe asked nothing else, and left
        ensure.setblocking(False)
        with pytest.raises(BlockingIOError):
            ensure.recv(1)  # nothing answered the ensure before the full server
        ensure.setblocking(True)
        assert answers.asked == []
        with anyio.fail_after(DEFAULT_TIMEOUT):  # a guard against a hang, not a duration
            async with anyio.create_task_group() as group:
                group.start_soon(_serve_held, held, _router(answers))
                status_answer = await anyio.to_thread.run_sync(_read_answer, pipelined)
                ensure_answer = await anyio.to_thread.run_sync(_read_answer, ensure)
                silent.sendall(HEALTH)
                late_health = await anyio.to_thread.run_sync(_read_answer, silent)
                for sock in (pipelined, ensure, silent):
                    sock.shutdown(socket.SHUT_WR)
    assert status_answer == (
        200,
        {
            "status": "ok",
            "state": "serving",
            "pid": 1,
            "version": "full",
            "protocol_version": 1,
            "root": "/status",
        },
    )
    assert ensure_answer[1]["root"] == "/ensure"
    assert late_health[1]["state"] == "serving"  # the full server answers it now
    assert sorted(answers.asked) == sorted(["status", f"ensure {ENSURE_BODY.decode()}", "health"])


def test_a_malformed_request_while_starting_is_refused_and_nothing_is_held(
    server: StartingServer, socket_path: Path
) -> None:
    with _client(socket_path) as client:
        client.sendall(b"NOT HTTP\r\n\r\n")
        status, document = _read_answer(client)
    assert status == 400
    assert document["error"]["code"] == "bad_http"
    assert server.hand_over() == []
    assert server.refused == 1
    assert server.answered == 0


def test_a_start_that_fails_closes_what_it_held_and_unlinks_its_socket(
    server: StartingServer, socket_path: Path
) -> None:
    with _client(socket_path) as client:
        client.sendall(STATUS)
        with _client(socket_path) as probe:  # the status connection is held once this answers
            probe.sendall(HEALTH_ONCE)
            _read_answer(probe)
        server.close()
        assert _read_to_end(client) == b""  # closed, never answered wrongly
    assert not socket_path.exists()
    server.close()  # a second time does nothing


def test_after_the_hand_over_the_socket_is_the_full_servers(
    server: StartingServer, socket_path: Path
) -> None:
    assert server.hand_over() == []
    server.close()  # nothing: the listener and the socket file are not the stage's any more
    assert socket_path.is_socket()
    with _client(socket_path):
        accepted, _ = server.listener.accept()
        accepted.close()
    server.listener.close()


def test_at_most_max_held_connections_are_taken_the_rest_wait_in_the_queue(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_starting, "MAX_HELD", 2)
    server = StartingServer(bind_control_socket(socket_path), socket_path, HEALTH_BODY)
    server.start()
    first, second, third = (_client(socket_path) for _ in range(3))
    with first, second, third:
        for client in (first, second):
            client.sendall(HEALTH)
            assert _read_answer(client)[0] == 200
        third.sendall(STATUS)
        held = server.hand_over()
        assert len(held) == 2
        server.listener.setblocking(True)
        accepted, _ = server.listener.accept()  # still in the queue, with its request
        with accepted:
            assert accepted.recv(65536) == STATUS
        for connection in held:
            connection.sock.close()
    server.listener.close()


def test_pipelined_health_requests_are_each_answered_and_the_rest_is_held(
    server: StartingServer, socket_path: Path
) -> None:
    with _client(socket_path) as client:
        client.sendall(HEALTH * 3 + STATUS[:10])  # and the start of a status request
        one = response_bytes(200, HEALTH_BODY, keep_alive=True)
        received = b""
        while len(received) < 3 * len(one):
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
        assert received == one * 3  # three answers, in order, nothing more
        (held,) = server.hand_over()
        # The part of the status request that was read goes with the connection.
        assert STATUS.startswith(held.received)
        held.sock.close()
    assert server.answered == 3

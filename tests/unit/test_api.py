"""The control API as a client sees it: answers, errors, and a server that never dies."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal, get_args, get_origin

import anyio
import pytest
from anyio.abc import SocketStream
from pydantic import BaseModel

from sks_harness import DEFAULT_TIMEOUT
from spec_kitty_supervisor._api import (
    MAX_BODY,
    PROTOCOL_HEADER,
    ApiError,
    ApiRequest,
    Encoded,
    ParsedBodies,
    Route,
    Router,
    serve_connection,
)
from spec_kitty_supervisor._http import response_bytes
from spec_kitty_supervisor_client._models import (
    DaemonView,
    EnsureRequest,
    EnsureResponse,
    RetireRequest,
    SupervisorHealth,
)

pytestmark = pytest.mark.anyio


class _Tracker:
    def __init__(self) -> None:
        self.open = 0
        self.in_flight = 0

    def connection_opened(self) -> None:
        self.open += 1

    def connection_closed(self) -> None:
        self.open -= 1

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1


async def _health(request: ApiRequest) -> BaseModel:
    return SupervisorHealth(pid=1, version="t", protocol_version=1, root="/r")


async def _retire(request: ApiRequest) -> BaseModel:
    body = request.parse(RetireRequest)
    if body.pid == 13:
        raise ApiError(404, "no_such_daemon", "no daemon 13")
    return SupervisorHealth(pid=body.pid or 0, version="t", protocol_version=1, root="/r")


async def _boom(request: ApiRequest) -> BaseModel:
    raise RuntimeError("handler bug")


class _Gate:
    """Holds the slow handler until the test lets it go: no sleep stands in for slowness."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()


_SLOW: list[_Gate] = []


async def _slow(request: ApiRequest) -> BaseModel:
    gate = _SLOW[-1]
    gate.entered.set()
    await gate.release.wait()
    return SupervisorHealth(pid=2, version="t", protocol_version=1, root="/r")


_ENCODED = Encoded(b'{"pid":3,"version":"t","protocol_version":1,"root":"/r"}')


async def _encoded(request: ApiRequest) -> Encoded:
    return _ENCODED


ROUTER = Router(
    [
        Route("GET", "/v1/health", _health),
        Route("GET", "/v1/encoded", _encoded),
        Route("POST", "/v1/retire", _retire),
        Route("GET", "/v1/boom", _boom),
        Route("GET", "/v1/slow", _slow),
    ]
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "api.sock"
    tracker = _Tracker()

    async def handle(stream: SocketStream) -> None:
        await serve_connection(stream, ROUTER, tracker)

    async with (
        await anyio.create_unix_listener(path, mode=0o600) as listener,
        anyio.create_task_group() as group,
    ):
        group.start_soon(listener.serve, handle)
        yield path
        group.cancel_scope.cancel()


async def _raw(path: Path, data: bytes) -> bytes:
    async with await anyio.connect_unix(path) as stream:
        await stream.send(data)
        chunks = []
        with anyio.fail_after(DEFAULT_TIMEOUT):  # a guard against a hang, not a duration
            while True:
                try:
                    chunks.append(await stream.receive())
                except anyio.EndOfStream:
                    break
        return b"".join(chunks)


def _request(method: str, target: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _split(reply: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


async def test_a_route_answers_its_model(server: Path) -> None:
    status, body = _split(await _raw(server, _request("GET", "/v1/health")))
    assert status == 200
    assert body["pid"] == 1


async def test_every_answer_carries_the_protocol_version(server: Path) -> None:
    reply = await _raw(server, _request("GET", "/v1/health"))
    assert f"{PROTOCOL_HEADER}: 1".encode() in reply


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (_request("GET", "/v1/nothing"), 404, "not_found"),
        (_request("DELETE", "/v1/health"), 405, "method_not_allowed"),
        (_request("POST", "/v1/retire", b"{not json"), 400, "invalid_json"),
        (_request("POST", "/v1/retire", b'{"pid": "x"}'), 400, "invalid_request"),
        (_request("POST", "/v1/retire", b"{}"), 400, "invalid_request"),
        (_request("POST", "/v1/retire", b'{"pid": 1, "surprise": 2}'), 400, "invalid_request"),
        (_request("POST", "/v1/retire", b'{"pid": 13}'), 404, "no_such_daemon"),
        (_request("GET", "/v1/boom"), 500, "internal_error"),
        (
            _request("GET", "/v1/health", extra=f"{PROTOCOL_HEADER}: 2\r\n"),
            400,
            "protocol_mismatch",
        ),
        (b"GARBAGE\r\n\r\n", 400, "bad_http"),
    ],
)
async def test_bad_requests_get_an_error_document(
    server: Path, request_bytes: bytes, status: int, code: str
) -> None:
    got_status, body = _split(await _raw(server, request_bytes))
    assert got_status == status
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert error["message"]
    # ...and the server is still there for the next client.
    assert _split(await _raw(server, _request("GET", "/v1/health")))[0] == 200


async def test_protocol_mismatch_names_both_versions(server: Path) -> None:
    request = _request("GET", "/v1/health", extra=f"{PROTOCOL_HEADER}: 2\r\n")
    _, body = _split(await _raw(server, request))
    message = body["error"]["message"]  # type: ignore[index]
    assert "protocol 1" in message
    assert "2" in message


async def test_oversized_body_is_refused(server: Path) -> None:
    body = b"x" * (MAX_BODY + 10)
    reply = await _raw(server, _request("POST", "/v1/retire", body))
    assert _split(reply)[0] == 413


async def test_kept_alive_connection_serves_many_requests(server: Path) -> None:
    one = b"GET /v1/health HTTP/1.1\r\nHost: s\r\n\r\n"
    async with await anyio.connect_unix(server) as stream:
        replies = 0
        for _ in range(5):
            await stream.send(one)
            data = b""
            while data.count(b"}") < 1:
                data += await stream.receive()
            replies += data.count(b"HTTP/1.1 200")
    assert replies == 5


async def _one_reply(stream: SocketStream) -> tuple[int, dict[str, object]]:
    """Read one Content-Length-delimited reply from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive()
    return int(head.split(b" ")[1]), json.loads(body)


async def test_a_stalled_client_does_not_stall_others(server: Path) -> None:
    async with await anyio.connect_unix(server) as stalled:
        await stalled.send(b"POST /v1/retire HTTP/1.1\r\nHost: s\r\nContent-Length: 100\r\n\r\n{")
        status, _ = _split(await _raw(server, _request("GET", "/v1/health")))
        assert status == 200
        # Meanwhile the stalled request was still being read, not dropped: its end arrives
        # now and it gets its own answer.
        await stalled.send(b'"pid": 7'.ljust(98) + b"}")
        status, body = await _one_reply(stalled)
        assert (status, body["pid"]) == (200, 7)


async def test_a_slow_handler_does_not_stall_others(server: Path) -> None:
    gate = _Gate()
    _SLOW.append(gate)
    slow: list[bytes] = []

    async def ask_slowly() -> None:
        slow.append(await _raw(server, _request("GET", "/v1/slow")))

    async with anyio.create_task_group() as group:
        group.start_soon(ask_slowly)
        await gate.entered.wait()
        # The slow handler is running and holds on: another request is answered meanwhile.
        status, _ = _split(await _raw(server, _request("GET", "/v1/health")))
        assert status == 200
        assert slow == []
        gate.release.set()
    assert _split(slow[0])[0] == 200


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system python")
async def test_a_client_of_another_uid_is_refused_by_the_peer_check() -> None:
    # The socket is world-connectable in a 0711 folder, so neither the folder nor the socket
    # mode refuses the stranger: only the peer-credential check can. The check runs before a
    # byte is read, so the stranger only listens for the refusal.
    folder = Path(tempfile.mkdtemp(prefix="sks-peer-", dir="/tmp"))
    os.chmod(folder, 0o711)
    path = folder / "api.sock"
    tracker = _Tracker()

    async def handle(stream: SocketStream) -> None:
        await serve_connection(stream, ROUTER, tracker)

    client = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "if sys.argv[2] == 'ask':\n"
        "    s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: s\\r\\n'\n"
        "              b'Connection: close\\r\\n\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(65536): data += chunk\n"
        "print(data.decode())\n"
    )
    # The venv's interpreter lives under root's 0700 home; nobody can run the system one.
    stranger = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"]
    try:
        async with (
            await anyio.create_unix_listener(path, mode=0o666) as listener,
            anyio.create_task_group() as group,
        ):
            group.start_soon(listener.serve, handle)
            as_nobody = await anyio.run_process(
                [*stranger, "-c", client, str(path), "listen"], check=False
            )
            as_us = await anyio.run_process([sys.executable, "-c", client, str(path), "ask"])
            group.cancel_scope.cancel()
    finally:
        shutil.rmtree(folder)
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert b"HTTP/1.1 403" in as_nobody.stdout
    assert b"peer_refused" in as_nobody.stdout
    assert b"HTTP/1.1 200" in as_us.stdout


def test_nothing_listens_on_a_unix_socket_path_by_accident(tmp_path: Path) -> None:
    # Guard for the fixture above: a closed listener leaves a path that refuses connections.
    path = tmp_path / "x.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(str(path))
    assert subprocess.run(["true"], check=False).returncode == 0


def test_a_client_meeting_another_protocol_gets_an_error_naming_both() -> None:
    from spec_kitty_supervisor_client import ProtocolMismatch
    from spec_kitty_supervisor_client._transport import Reply, raise_for_reply

    with pytest.raises(ProtocolMismatch) as mismatch:
        raise_for_reply(Reply(status=200, protocol="2", body=b"{}"))
    message = str(mismatch.value)
    assert "protocol 2" in message
    assert "speaks 1" in message
    assert "spec-kitty-supervisor stop" in message


async def test_an_answer_a_handler_gives_as_json_is_sent_as_it_is(server: Path) -> None:
    reply = await _raw(server, _request("GET", "/v1/encoded"))
    assert reply.endswith(b"\r\n\r\n" + _ENCODED.json)
    assert _split(reply)[0] == 200
    assert b"\r\nconnection: close\r\n" in reply
    # Kept alive, its whole answer is the one written with it, and says nothing of closing.
    kept = _request("GET", "/v1/encoded").replace(b"Connection: close\r\n", b"")
    both = await _raw(server, kept + _request("GET", "/v1/encoded"))
    assert both == _ENCODED.kept_alive + reply
    assert _ENCODED.kept_alive == response_bytes(200, _ENCODED.json, keep_alive=True)
    assert b"connection: close" not in _ENCODED.kept_alive


def _ensure_request(body: bytes) -> ApiRequest:
    return ApiRequest(method="POST", path="/v1/sync/ensure", query={}, body=body)


def test_a_body_accepted_before_gives_the_same_request_and_a_refused_one_is_refused_again() -> None:
    bodies = ParsedBodies(EnsureRequest)
    body = json.dumps({"python": "/p/bin/python", "cwd": "/w", "env": {"HOME": "/h"}}).encode()
    first = bodies.parse(_ensure_request(body))
    assert first == EnsureRequest.model_validate_json(body)
    assert bodies.parse(_ensure_request(bytes(body))) is first
    other = bodies.parse(_ensure_request(body.replace(b"/w", b"/v")))
    assert (other.cwd, first.cwd) == ("/v", "/w")
    for refused, code in ((b'{"python": "p"}', "invalid_request"), (b"{", "invalid_json")):
        for _ in range(2):
            with pytest.raises(ApiError) as error:
                bodies.parse(_ensure_request(refused))
            assert error.value.code == code


def test_what_is_remembered_of_bodies_stays_bounded() -> None:
    bodies = ParsedBodies(EnsureRequest)
    for n in range(3 * ParsedBodies.LIMIT):
        bodies.parse(_ensure_request(json.dumps({"python": f"/p{n}/bin/python"}).encode()))
        assert len(bodies._accepted) <= ParsedBodies.LIMIT
    large = json.dumps({"python": "/p/bin/python", "cwd": "/" + "w" * ParsedBodies.BODY_BYTES})
    bodies.parse(_ensure_request(large.encode()))
    assert large.encode() not in bodies._accepted


def _immutable(annotation: object) -> bool:
    if annotation in (str, int, float, bool, type(None)):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return bool(annotation.model_config.get("frozen")) and all(
            _immutable(field.annotation) for field in annotation.model_fields.values()
        )
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return True
    return origin is not None and origin not in (list, dict, set) and all(map(_immutable, args))


def test_an_ensure_answer_cannot_change_once_made() -> None:
    # The ensure route keeps the JSON of the last answer object it gave (``_app._LastJson``):
    # only right while that object cannot change, all the way down.
    assert _immutable(EnsureResponse)
    assert _immutable(DaemonView)
    assert not _immutable(EnsureRequest)  # the check can fail: a request's env is a dict


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED is Linux's")
def test_a_peer_is_told_apart_from_the_last_one_asked_and_a_closed_socket_is_asked_again(
    tmp_path: Path,
) -> None:
    from spec_kitty_supervisor._api import peer_pid, peer_uid

    path = tmp_path / "peer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
    )
    try:
        theirs, _ = listener.accept()
        ours, other = socket.socketpair(socket.AF_UNIX)
        with theirs, ours, other:
            assert (peer_pid(theirs), peer_uid(theirs)) == (child.pid, os.getuid())
            assert peer_pid(ours) == os.getpid()  # asked right after another socket
            assert peer_pid(theirs) == child.pid
            assert peer_pid(theirs) == child.pid  # the same open socket again
        with pytest.raises(OSError, match="Bad file descriptor"):
            peer_pid(theirs)  # closed: the kernel is asked, and refuses
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=DEFAULT_TIMEOUT)
        listener.close()

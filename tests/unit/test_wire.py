"""The standard-library wire: HTTP/1.1 over a Unix socket, and what the hook sends and reads.

The hook that ``integrate`` installs carries this file verbatim, so what it sends must be what
``docs/protocol.schema.json`` accepts, and what it reads must be what the schema promises.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spec_kitty_supervisor_client import EnsureRequest, RetireRequest
from spec_kitty_supervisor_client._wire import Connection, Unavailable, passed_environment

SCHEMA = json.loads(Path("docs/protocol.schema.json").read_text())["models"]


class _FakeSupervisor:
    """Answers each request with the next canned reply; records what it received."""

    def __init__(self, path: Path, replies: list[bytes], close_after: int | None = None) -> None:
        self.path = path
        self.replies = replies
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                served = 0
                buffer = b""
                while self.replies:
                    while b"\r\n\r\n" not in buffer:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buffer += chunk
                    if b"\r\n\r\n" not in buffer:
                        break
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buffer) < length:
                        buffer += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                    buffer = buffer[length:]
                    conn.sendall(self.replies.pop(0))
                    served += 1
                    if self.close_after is not None and served >= self.close_after:
                        break

    def close(self) -> None:
        self._listener.close()


def _reply(status: int, body: dict[str, Any], *, extra: str = "") -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nspec-kitty-supervisor-protocol: 1\r\n{extra}\r\n"
    )
    return head.encode() + payload


@pytest.fixture
def socket_path() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wire-", dir="/tmp") as folder:
        yield Path(folder) / "s.sock"


def test_a_kept_alive_connection_serves_many_requests(socket_path: Path) -> None:
    server = _FakeSupervisor(socket_path, [_reply(200, {"n": n}) for n in range(3)])
    connection = Connection(socket_path, 5.0)
    try:
        answers = [connection.request("GET", "/v1/health").json()["n"] for _ in range(3)]
    finally:
        connection.close()
        server.close()
    assert answers == [0, 1, 2]
    assert server.connections == 1


def test_a_connection_the_supervisor_closed_is_retried_once(socket_path: Path) -> None:
    server = _FakeSupervisor(socket_path, [_reply(200, {"n": 0}), _reply(200, {"n": 1})], 1)
    connection = Connection(socket_path, 5.0)
    try:
        first = connection.request("GET", "/v1/health")
        second = connection.request("GET", "/v1/health")
    finally:
        connection.close()
        server.close()
    assert (first.json(), second.json()) == ({"n": 0}, {"n": 1})
    assert server.connections == 2


def test_connection_close_is_honoured(socket_path: Path) -> None:
    server = _FakeSupervisor(
        socket_path, [_reply(200, {}, extra="connection: close\r\n"), _reply(200, {})], 1
    )
    connection = Connection(socket_path, 5.0)
    try:
        connection.request("GET", "/v1/health")
        connection.request("GET", "/v1/health")
    finally:
        connection.close()
        server.close()
    assert server.connections == 2


def test_the_protocol_header_and_status_are_read(socket_path: Path) -> None:
    server = _FakeSupervisor(socket_path, [_reply(404, {"error": {"code": "x", "message": "m"}})])
    connection = Connection(socket_path, 5.0)
    try:
        reply = connection.request("POST", "/v1/sync/retire", b'{"pid": 1}')
    finally:
        connection.close()
        server.close()
    assert (reply.status, reply.protocol) == (404, "1")
    request = server.requests[0]
    assert request.startswith(b"POST /v1/sync/retire HTTP/1.1\r\n")
    assert b"\r\nspec-kitty-supervisor-protocol: 1\r\n" in request
    assert request.endswith(b'\r\n\r\n{"pid": 1}')


def test_nothing_listening_is_unavailable(socket_path: Path) -> None:
    with pytest.raises(Unavailable, match="no supervisor answers"):
        Connection(socket_path, 1.0).request("GET", "/v1/health")


def test_a_reply_that_is_not_http_is_unavailable(socket_path: Path) -> None:
    server = _FakeSupervisor(socket_path, [b"SSH-2.0-OpenSSH\r\n\r\n"])
    try:
        with pytest.raises(Unavailable, match="not an HTTP answer"):
            Connection(socket_path, 5.0).request("GET", "/v1/health")
    finally:
        server.close()


# What the hook sends and reads, against the published schema


def _ensure_body(monkeypatch: pytest.MonkeyPatch, socket_path: Path) -> dict[str, Any]:
    from spec_kitty_supervisor_client import _hook

    daemon = {"pid": 4242, "port": 9401, "url": "http://127.0.0.1:9401"}
    server = _FakeSupervisor(socket_path, [_reply(200, {"action": "spawned", "daemon": daemon})])
    monkeypatch.setattr(_hook, "socket_path_for_root", lambda root: socket_path)
    monkeypatch.setenv("SPEC_KITTY_ENABLE_SAAS_SYNC", "1")
    try:
        pid = _hook.supervised_daemon_pid(Path("/r"), "3.2.7", 5.0, may_start=False)
    finally:
        server.close()
    assert pid == 4242
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/sync/ensure HTTP/1.1")
    return dict(json.loads(body))


def test_the_hooks_ensure_request_follows_the_schema(
    monkeypatch: pytest.MonkeyPatch, socket_path: Path
) -> None:
    body = _ensure_body(monkeypatch, socket_path)
    schema = SCHEMA["EnsureRequest"]
    assert set(body) <= set(schema["properties"])
    assert set(schema.get("required", [])) <= set(body)
    EnsureRequest.model_validate(body)  # the model the schema is generated from
    assert body["env"] == passed_environment(body["env"])
    assert body["env"]["SPEC_KITTY_ENABLE_SAAS_SYNC"] == "1"


def _schema_type(model: str, *path: str) -> Any:
    node = SCHEMA[model]
    defs = node.get("$defs", {})
    for key in path:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = node["items"] if key == "[]" else node["properties"][key]
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node.get("type") or [option.get("type") for option in node.get("anyOf", [])]


def test_what_the_hook_reads_is_what_the_schema_promises() -> None:
    assert _schema_type("EnsureResponse", "daemon", "pid") == "integer"
    assert _schema_type("StatusResponse", "daemons", "[]", "pid") == "integer"
    assert _schema_type("StatusResponse", "daemons", "[]", "role") == "string"
    assert (
        "current" in SCHEMA["StatusResponse"]["$defs"]["DaemonView"]["properties"]["role"]["enum"]
    )
    assert _schema_type("RetireResponse", "retired") == "object"
    assert _schema_type("ErrorBody", "error", "code") == "string"
    assert _schema_type("ErrorBody", "error", "message") == "string"


def test_the_hooks_retire_request_follows_the_schema(
    monkeypatch: pytest.MonkeyPatch, socket_path: Path
) -> None:
    from spec_kitty_supervisor_client import _hook

    current = {"pid": 77, "port": 9401, "role": "current"}
    server = _FakeSupervisor(
        socket_path,
        [
            _reply(200, {"supervisor": None, "daemons": [current]}),
            _reply(200, {"retired": current, "stop_path": "http_shutdown"}),
        ],
    )
    monkeypatch.setattr(_hook, "socket_path_for_root", lambda root: socket_path)
    try:
        assert _hook.retire_current_daemon(Path("/r"), 5.0) is True
    finally:
        server.close()
    assert server.requests[0].startswith(b"GET /v1/status HTTP/1.1")
    body = json.loads(server.requests[1].partition(b"\r\n\r\n")[2])
    assert set(body) <= set(SCHEMA["RetireRequest"]["properties"])
    RetireRequest.model_validate(body)
    assert body["pid"] == 77


def test_the_environment_read_from_os_environ_is_the_one_read_from_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # os.environ is filtered on its own bytes (the fast path); a copy through the mapping.
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("SPEC_KITTY_ENABLE_SAAS_SYNC", "1")
    monkeypatch.setenv("SPEC_KITTY_HOME", "/set/by/the/supervisor")
    monkeypatch.setenv("SPEC_KITTY_CLI_VERSION", "9.9.9")
    monkeypatch.setenv("LANG", "fr_FR.UTF-8")
    monkeypatch.setenv("TZ", "Europe/Zürich")
    monkeypatch.setenv("SPEC_KITTY_UNDECODABLE", "caf\udce9")  # a byte that is not UTF-8
    monkeypatch.setenv("NOT_PASSED", "secret")
    monkeypatch.setenv("lc_lower", "not a prefix match")
    passed = passed_environment(os.environ)
    assert passed == passed_environment(dict(os.environ))
    assert passed["LC_ALL"] == "C.UTF-8"
    assert passed["TZ"] == "Europe/Zürich"
    assert passed["SPEC_KITTY_UNDECODABLE"] == "caf\udce9"
    assert passed["SPEC_KITTY_ENABLE_SAAS_SYNC"] == "1"
    assert not {"SPEC_KITTY_HOME", "SPEC_KITTY_CLI_VERSION", "NOT_PASSED", "lc_lower"} & set(passed)

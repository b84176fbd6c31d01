"""A real supervisor's start: its socket is answered from the first stage, and what only the
full supervisor may answer waits for it (docs/adr/0015).

The start is held in place without timing: the test holds ``R/sync-daemon.lock``, which
recovery takes (to keep ``R/sync-daemon`` right) before the supervisor serves; until the test
lets it go, the supervisor is certainly still starting.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    DEFAULT_TIMEOUT,
    SPAWN_PORTS,
    PortRange,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    spec_kitty_python,
)
from spec_kitty_supervisor_client._wire import socket_path_for_root

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: supervisor\r\n"
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEFAULT_TIMEOUT * 3)  # a guard against a hang (a spawn included)
    try:
        sock.connect(os.fsencode(path))
    except BaseException:
        sock.close()
        raise
    return sock


def _accepts(path: Path) -> bool:
    try:
        _connect(path).close()
    except OSError:
        return False
    return True


def _answer(sock: socket.socket) -> tuple[int, Any]:
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
    return int(head.split(b" ", 2)[1]), json.loads(rest)


def _unanswered(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(DEFAULT_TIMEOUT * 3)
    return False


def test_a_starting_supervisor_answers_health_and_serves_the_rest_after_recovery(
    sup: SupervisorUnderTest,
) -> None:
    sup.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    upstream_lock = os.open(sup.root / "sync-daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    socket_path = socket_path_for_root(sup.root)
    python = str(spec_kitty_python("3.2.4"))
    try:
        fcntl.flock(upstream_lock, fcntl.LOCK_EX)  # recovery cannot finish while we hold it
        pid = sup.start(wait=False)
        eventually(lambda: _accepts(socket_path), what="the first stage's socket")

        status = _connect(socket_path)
        status.sendall(_request("GET", "/v1/status"))
        ensure = _connect(socket_path)
        ensure.sendall(_request("POST", "/v1/sync/ensure", json.dumps({"python": python}).encode()))
        with _connect(socket_path) as health:
            health.sendall(_request("GET", "/v1/health"))
            code, document = _answer(health)
        assert code == 200
        assert (document["state"], document["pid"]) == ("starting", pid)
        with _connect(socket_path) as malformed:
            malformed.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            code, refusal = _answer(malformed)
        assert code == 400
        assert refusal["error"]["code"] == "bad_http"
        # Nothing but health and the refusal was answered: the table is not recovered.
        assert _unanswered(status)
        assert _unanswered(ensure)
        assert daemon_pids(sup.root) == []
    finally:
        os.close(upstream_lock)  # releases the flock: recovery goes on

    with status, ensure:
        code, answered_status = _answer(status)
        assert code == 200
        assert answered_status["supervisor"]["pid"] == pid
        code, answered_ensure = _answer(ensure)
        assert code == 200, answered_ensure
        # Served by the lifecycle after recovery: a spawn, journaled and recorded.
        assert answered_ensure["action"] == "spawned"
        daemon_pid = answered_ensure["daemon"]["pid"]
    assert daemon_pids(sup.root) == [daemon_pid]
    assert [d["pid"] for d in sup.cli_json("status")["daemons"]] == [daemon_pid]
    with _connect(socket_path) as health:
        health.sendall(_request("GET", "/v1/health"))
        assert _answer(health)[1]["state"] == "serving"
    (handed,) = sup.log_events("starting_server_handed_over")
    assert handed["health_answered"] >= 1
    assert handed["refused"] == 1
    assert handed["held"] >= 2  # the status and the ensure (and any probe still open)
    assert handed["failure"] is None

"""The under-load benchmark's generator (``bench/_load_worker.py``, ``bench/under_load.py``)
counts what it must: every answer read whole however the bytes arrive, each client's calls
on its schedule, the exact bytes ``SupervisorClient`` sends, and every wrong answer or lost
connection as a failure. (Its speed is the benchmark's business, not a test's.)"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import under_load
from bench._load_worker import AnswerReader, due_at
from spec_kitty_supervisor_client._wire import Connection

HANG_GUARD = 60.0


def _answer(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


def test_answers_are_read_whole_however_the_bytes_are_split() -> None:
    stream = _answer(b'{"a":1}') + _answer(b"") + _answer(b'{"daemon":{"pid":7}}', 409)
    expected = [(200, b'{"a":1}'), (200, b""), (409, b'{"daemon":{"pid":7}}')]
    for cut in range(len(stream) + 1):
        for second_cut in (cut, min(len(stream), cut + 5), len(stream)):
            reader = AnswerReader()
            got = reader.feed(stream[:cut])
            got += reader.feed(stream[cut:second_cut])
            got += reader.feed(stream[second_cut:])
            assert got == expected, (cut, second_cut)


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}", "content-length"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n", "content-length"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
    ],
)
def test_an_answer_it_cannot_read_is_an_error(garbage: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        AnswerReader().feed(garbage)


def test_each_round_is_due_at_the_clients_phase_of_the_period() -> None:
    assert due_at(100.0, 0, 0.0, 10.0) == 100.0
    assert due_at(100.0, 3, 0.25, 10.0) == pytest.approx(100.325)


def test_spread_clients_cover_the_period_and_each_worker_spans_it() -> None:
    phases = under_load.client_phases(100, 4, spread=True)
    assert [len(p) for p in phases] == [25, 25, 25, 25]
    assert sorted(p for worker in phases for p in worker) == [i / 100 for i in range(100)]
    # Interleaved: every worker has clients in the first and the last quarter of the period.
    for worker in phases:
        assert min(worker) < 0.25
        assert max(worker) >= 0.75
    assert under_load.client_phases(10, 3, spread=False) == [[0.0] * 4, [0.0] * 3, [0.0] * 3]
    assert under_load.client_phases(2, 4, spread=True) == [[0.0], [0.5]]


def _serve_one(listener: socket.socket, answer: bytes, captured: list[bytes]) -> None:
    peer, _ = listener.accept()
    with peer:
        data = b""
        while b"\r\n\r\n" not in data:
            data += peer.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += peer.recv(65536)
        captured.append(data[: len(head) + 4] + rest)
        peer.sendall(answer)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder whose socket paths fit in ``sun_path`` wherever the tests run."""
    folder = Path(tempfile.mkdtemp(prefix="sks-lg-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v1/status", None), ("POST", "/v1/sync/ensure", b'{"python":"/x"}')],
)
def test_requests_are_the_bytes_the_client_library_sends(
    short_dir: Path, method: str, path: str, body: bytes | None
) -> None:
    socket_path = short_dir / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(1)
    captured: list[bytes] = []
    server = threading.Thread(target=_serve_one, args=(listener, _answer(b"{}"), captured))
    server.start()
    connection = Connection(socket_path, HANG_GUARD)
    try:
        assert connection.request(method, path, body).status == 200
    finally:
        connection.close()
        server.join(HANG_GUARD)
        listener.close()
    assert captured == [under_load.request_bytes(method, path, body)]


def _run_worker(socket_path: Path, answers: dict[str, bytes], **job: Any) -> dict[str, Any]:
    """A canned server answering ``answers`` (by "METHOD PATH") and one worker driving it."""
    recorded = {key: value.decode("latin-1") for key, value in answers.items()}
    server = subprocess.Popen(
        [sys.executable, "-c", under_load._CANNED, str(socket_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdin is not None
        assert server.stdout is not None
        server.stdin.write(json.dumps(recorded))
        server.stdin.close()
        assert server.stdout.readline().strip() == "ready"
        requests = {
            "health": under_load.request_bytes("GET", "/v1/health"),
            "status": under_load.request_bytes("GET", "/v1/status"),
            "ensure": under_load.request_bytes("POST", "/v1/sync/ensure", b'{"python":"/x"}'),
        }
        full_job = {
            "socket": str(socket_path),
            "requests": {name: data.decode("latin-1") for name, data in requests.items()},
            # Generous: the worker refuses to start late, and this machine may be busy.
            "start": time.monotonic() + 5.0,
            "grace_seconds": 10.0,
            **job,
        }
        worker = subprocess.run(
            [sys.executable, str(under_load._WORKER), json.dumps(full_job)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=False,
        )
        assert worker.returncode == 0, worker.stderr
        report: dict[str, Any] = json.loads(worker.stdout)
        return report
    finally:
        server.terminate()  # our own child, by its Popen
        server.wait(HANG_GUARD)
        if server.stdout is not None:
            server.stdout.close()


_HEALTH = _answer(b'{"status":"ok"}')
_STATUS = _answer(b'{"daemons":[]}')


def test_each_client_makes_its_rounds_and_every_answer_is_checked(short_dir: Path) -> None:
    reused = _answer(b'{"action":"reused","daemon":{"pid":4242}}')
    report = _run_worker(
        short_dir / "s.sock",
        {"GET /v1/health": _HEALTH, "GET /v1/status": _STATUS, "POST /v1/sync/ensure": reused},
        seconds=0.3,
        rate=10.0,
        phases=[0.0, 0.5],
    )
    assert report["collections"] == 0
    clients = report["clients"]
    assert len(clients) == 2
    for client in clients:
        assert client["failures"] == []
        assert client["pids"] == [4242]
        # 0.3 s at 10/s: rounds 0, 1, 2, each a status and an ensure.
        assert client["done"] == 6
        assert len(client["from_due"]) == len(client["from_send"]) == 6
        assert len(client["lateness"]) == 3
        # Measured from the due instant, a call never takes less than from its write.
        for from_due, from_send in zip(client["from_due"], client["from_send"], strict=True):
            assert from_due >= from_send > 0


def test_a_wrong_action_or_a_lost_connection_is_a_failure(short_dir: Path) -> None:
    spawned = _answer(b'{"action":"spawned","daemon":{"pid":1}}')
    report = _run_worker(
        short_dir / "s.sock",
        {"GET /v1/health": _HEALTH, "GET /v1/status": _STATUS, "POST /v1/sync/ensure": spawned},
        seconds=0.2,
        rate=10.0,
        phases=[0.0],
    )
    assert report["clients"][0]["failures"] == ["action spawned", "action spawned"]

    # The canned server has no answer for status: it fails and closes the connection.
    lost = _run_worker(
        short_dir / "t.sock",
        {"GET /v1/health": _HEALTH},
        seconds=0.2,
        rate=10.0,
        phases=[0.0],
    )
    (failure,) = lost["clients"][0]["failures"]
    assert failure.startswith("status: the connection closed")
    assert lost["clients"][0]["done"] == 0


def test_flat_out_clients_ask_back_to_back(short_dir: Path) -> None:
    reused = _answer(b'{"action":"reused","daemon":{"pid":9}}')
    report = _run_worker(
        short_dir / "s.sock",
        {"GET /v1/health": _HEALTH, "POST /v1/sync/ensure": reused},
        seconds=0.2,
        rate=0.0,
        phases=[0.0, 0.0],
    )
    for client in report["clients"]:
        assert client["failures"] == []
        assert client["done"] > 2
        assert client["pids"] == [9]

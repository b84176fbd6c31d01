"""The under-load benchmark's generator (``bench/_load_worker.py``, ``bench/under_load.py``)
counts what it must: every answer read whole however the bytes arrive, each client's calls
on its schedule, the exact bytes ``SupervisorClient`` sends, and every wrong answer or lost
connection as a failure. (Its speed is the benchmark's business, not a test's.)"""

from __future__ import annotations

import argparse
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

from bench import load_ab, under_load
from bench._load_worker import AnswerReader, Client, _Loop, due_at
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


def test_the_last_content_length_counts_whatever_its_case() -> None:
    stream = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nCONTENT-LENGTH : 2\r\n\r\n{}rest"
    reader = AnswerReader()
    assert reader.feed(stream) == [(200, b"{}")]
    # What follows an answer stays for the next one.
    assert reader.feed(b"") == []
    with pytest.raises(ValueError, match="not an HTTP answer"):
        reader.feed(b"\r\n\r\n")


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


def test_a_variant_names_a_worker_and_its_process_count() -> None:
    assert load_ab.parse_variant("old=/tmp/w:x.py:4") == ("old", Path("/tmp/w:x.py"), 4)
    for bad in ("old", "old=/tmp/w.py", "=/tmp/w.py:4", "old=:4", "old=/tmp/w.py:0", "a=b:-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=WORKER_PATH:WORKERS"):
            load_ab.parse_variant(bad)


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


_REQUESTS = {"health": b"H", "status": b"S", "ensure": b"E"}
_REUSED = b'{"action":"reused","daemon":{"pid":42}}'


def test_a_client_sends_status_at_its_instant_and_ensure_at_the_answer() -> None:
    client = Client(_REQUESTS, start=100.0, seconds=0.3, rate=10.0, phase=0.5)
    assert client.answered(99.0, 200, b"{}") is None  # health: connected
    assert client.connected
    client.first_round()
    assert client.wake_at == 100.05
    # The timer fires 2 ms late: the lateness is counted, status is due at its instant.
    assert client.begin_round(100.052) == b"S"
    client.sent = 100.052
    assert client.answered(100.053, 200, b"{}") == b"E"
    client.sent = 100.0535
    assert client.answered(100.054, 200, _REUSED) is None
    assert client.from_due == pytest.approx([0.003, 0.001])
    assert client.from_send == pytest.approx([0.001, 0.0005])
    assert client.lateness == pytest.approx([0.002])
    assert client.pids == {42}
    assert client.failures == []
    assert client.wake_at == pytest.approx(100.15)


def test_a_late_round_is_not_skipped_and_its_wait_counts() -> None:
    client = Client(_REQUESTS, start=0.0, seconds=10.0, rate=10.0, phase=0.0)
    client.first_round()
    assert client.begin_round(0.0) == b"S"
    client.sent = 0.0
    # The status answer comes 250 ms later: rounds 1 and 2 were due meanwhile.
    assert client.answered(0.25, 200, b"{}") == b"E"
    assert client.answered(0.26, 200, _REUSED) is None
    assert client.wake_at == pytest.approx(0.1)  # round 1, already past: it starts at once
    assert client.begin_round(0.26) == b"S"
    assert client.answered(0.27, 200, b"{}") == b"E"
    # Round 1's status counts from its instant (0.1), not from when it could be sent.
    assert client.from_due[2] == pytest.approx(0.17)
    assert client.lateness == pytest.approx([0.0, 0.16])


def test_a_client_finishes_after_its_seconds_and_says_so_once() -> None:
    finished: list[bool] = []
    client = Client(_REQUESTS, start=0.0, seconds=0.2, rate=10.0, phase=0.0)
    client.on_finished = lambda: finished.append(True)
    client.first_round()
    for round_ in range(2):
        assert client.begin_round(round_ / 10) == b"S"
        assert client.answered(round_ / 10, 200, b"{}") == b"E"
        assert client.answered(round_ / 10, 200, _REUSED) is None
    assert client.finished
    assert client.wake_at is None
    assert client.begin_round(5.0) is None
    client.finish(6.0)
    assert finished == [True]
    assert client.done == 4


def test_every_ensure_answer_is_checked_even_when_the_bytes_repeat() -> None:
    client = Client(_REQUESTS, start=0.0, seconds=10.0, rate=10.0, phase=0.0)
    other = b'{"action":"reused","daemon":{"pid":43}}'
    spawned = b'{"action":"spawned","daemon":{"pid":42}}'
    for body in (_REUSED, _REUSED, other, _REUSED, spawned, spawned, b"{}", b"nonsense"):
        client.call = "ensure"
        client.answered(1.0, 200, body)
    assert client.pids == {42, 43}
    assert client.failures[:2] == ["action spawned", "action spawned"]
    assert client.failures[2].startswith("ensure: an unreadable answer (KeyError")
    assert client.failures[3].startswith("ensure: an unreadable answer (JSONDecodeError")
    assert len(client.failures) == 4
    client.call = "ensure"
    client.answered(1.0, 503, _REUSED)
    assert client.failures[4].startswith("ensure: HTTP 503")


def test_flat_out_a_client_asks_again_at_each_answer_until_its_seconds() -> None:
    client = Client(_REQUESTS, start=10.0, seconds=1.0, rate=0.0, phase=0.0)
    client.first_round()
    assert client.wake_at == 10.0
    assert client.begin_round(10.0) == b"E"
    assert client.answered(10.5, 200, _REUSED) == b"E"
    assert client.from_due == pytest.approx([0.5])
    assert client.answered(11.0, 200, _REUSED) is None
    assert client.finished
    assert client.lateness == []


def test_a_request_the_kernel_takes_in_parts_is_written_whole() -> None:
    """A request larger than the socket's buffer is finished when the socket is writable."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = b"x" * (4 << 20)
    received = bytearray()

    def peer() -> None:
        while len(received) < len(big):
            chunk = theirs.recv(1 << 16)
            if not chunk:
                return
            received.extend(chunk)
        theirs.sendall(_answer(b"{}"))

    client = Client({**_REQUESTS, "health": big}, start=0.0, seconds=1.0, rate=10.0, phase=0.0)
    loop = _Loop()
    loop.add(client, ours)
    (connection,) = loop.connections.values()
    reader = threading.Thread(target=peer)
    try:
        loop.send(connection, big)
        assert connection.unsent  # the kernel took a part only
        reader.start()
        loop.pump(time.monotonic() + HANG_GUARD, lambda: client.connected)
    finally:
        loop.close()
        theirs.close()
        if reader.ident is not None:
            reader.join(HANG_GUARD)
    assert client.connected
    assert client.failures == []
    assert bytes(received) == big

"""One process of the under-load generator: many kept-alive clients of one Unix socket.

``python bench/_load_worker.py JOB`` (``JOB`` a JSON document, see :func:`run`) prints one JSON
line: each client's latencies, failures and the daemon pids its ``ensure`` answers named.
Standard library only, so that it costs no more than it must.

Why it is built this way (docs/performance.md, "Under load", sessions 5 to 7): the generator
shares two CPUs with the server it measures, and the guest has windows in which every process
runs several times slower; every microsecond of CPU the generator spends per call lengthens the
queues in those windows, in the generator and in the server. So each client is a non-blocking
connection driven by one hand-written ``select`` loop a process: a timer heap sends ``status``
at the client's scheduled instant, its answer sends ``ensure`` at once, and that answer puts the
next round on the heap. No thread, no task, no callback handle per request; the collector is off
once the connections are made (what a client allocates per request holds no reference cycle).
``select`` and not ``epoll``: epoll rounds its timeout up to the next millisecond, so a round
would be sent up to 1 ms after it was due, and that lateness would be counted in its latency;
``select`` takes microseconds (a worker's few dozen descriptors are all below 1024).

Timestamps, both kept for every call (``time.monotonic``, one clock for every process):

- ``from_due``: from the instant the call was due to its answer. ``status`` is due at the
  client's scheduled instant (``start + (round + phase) / rate``); ``ensure`` is due when the
  ``status`` answer arrived. A late round is not skipped, and its lateness is counted in its
  latency: a stall of the server (or of this process) shows in every call it delayed, not only
  the one in flight (no coordinated omission). This is the judged figure.
- ``from_send``: from the write of the request to its answer (what the first generator
  measured).

Flat out (``rate`` 0): each client sends ``ensure`` as soon as the previous answer arrived.
"""

from __future__ import annotations

import gc
import heapq
import json
import re
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

#: A call slower than this (from its due instant) is listed with its timestamps, so that it
#: can be laid beside what the server was doing then.
SLOW_MS = 5.0
_MAX_SLOW = 5000
_MAX_HEAD = 65536
_RECV_SIZE = 65536
_CONTENT_LENGTH = re.compile(rb"\r\n[ \t]*content-length[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE)


class AnswerReader:
    """Whole HTTP/1.1 answers out of the bytes of one connection, as they arrive.

    Each answer must carry ``content-length`` (the supervisor's always do); anything else is
    a ``ValueError``, counted as a failure by the caller. An answer that arrives whole in one
    read (nearly every one) is sliced out of that read without copying the rest.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        answers = []
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise ValueError("an answer whose head exceeds 64 KiB")
                break
            head = buffer[:head_end]
            if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit() or head[8:9] != b" ":
                status_line = head.split(b"\r\n", 1)[0]
                raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
            # The last content-length counts, as in the reader this one replaced.
            lengths = _CONTENT_LENGTH.findall(head)
            length = lengths[-1].strip() if lengths else b""
            if not length.isdigit():
                raise ValueError("an answer without content-length")
            end = head_end + 4 + int(length)
            if len(buffer) < end:
                break
            answers.append((int(head[9:12]), buffer[head_end + 4 : end]))
            buffer = buffer[end:]
        self._buffer = buffer
        return answers


def due_at(start: float, round_: int, phase: float, rate: float) -> float:
    """The instant round ``round_`` of a client at ``phase`` (a fraction of the period) is due."""
    return start + (round_ + phase) / rate


class Client:
    """One client's schedule and findings: what to send when; no I/O of its own.

    The loop (:func:`run`) gives it each answer with the instant it was read and writes the
    request it returns; ``wake_at`` is the instant of its next round when it waits for one.
    """

    def __init__(
        self, requests: dict[str, bytes], start: float, seconds: float, rate: float, phase: float
    ) -> None:
        self.requests = requests
        self.start = start
        self.seconds = seconds
        self.rate = rate
        self.phase = phase
        self.reader = AnswerReader()
        self.round = 0
        self.call = "health"
        self.due = 0.0
        self.sent = 0.0
        self.wake_at: float | None = None
        self.connected = False
        self.from_due: list[float] = []
        self.from_send: list[float] = []
        self.lateness: list[float] = []
        self.slow: list[tuple[str, float, float, float]] = []
        self.failures: list[str] = []
        self.pids: set[int] = set()
        # The last ensure answer found good, and the pid it named: the same bytes again need
        # no second parse (the supervisor's warm answer is the same document each time).
        self._good_ensure = b""
        self._good_pid = 0
        self.done = 0
        self.finished = False
        self.ended_at = 0.0
        self.on_finished: Callable[[], None] | None = None

    def first_round(self) -> None:
        """Put round 0 on the schedule (flat out: due at the start)."""
        if self.rate:
            self.schedule_round()
        else:
            self.due = self.wake_at = self.start

    def schedule_round(self) -> None:
        """Wait for the next round's instant; a late round starts at once (it is not skipped)."""
        if self.round / self.rate >= self.seconds:
            self.finish(time.monotonic())
            return
        self.due = self.wake_at = due_at(self.start, self.round, self.phase, self.rate)

    def begin_round(self, now: float) -> bytes | None:
        """The round's instant came: its first request (``status``, or ``ensure`` flat out)."""
        self.wake_at = None
        if self.finished:
            return None
        if self.rate:
            self.lateness.append(now - self.due)
            self.call = "status"
            return self.requests["status"]
        if now - self.start >= self.seconds:
            self.finish(now)
            return None
        self.call, self.due = "ensure", now
        return self.requests["ensure"]

    def answered(self, now: float, status: int, body: bytes) -> bytes | None:
        """An answer read at ``now``: the request to send at once, if any (else see
        ``wake_at``, or the client is finished)."""
        call = self.call
        if call == "health":
            self.connected = True
            return None
        from_due = now - self.due
        self.from_due.append(from_due)
        self.from_send.append(now - self.sent)
        if from_due > SLOW_MS / 1e3 and len(self.slow) < _MAX_SLOW:
            self.slow.append((call, self.due, self.sent, now))
        self.done += 1
        if status != 200:
            self.failures.append(f"{call}: HTTP {status}: {body[:200]!r}")
        elif call == "ensure":
            self._check_ensure(body)
        if call == "status":
            self.call, self.due = "ensure", now
            return self.requests["ensure"]
        if self.rate:
            self.round += 1
            self.schedule_round()
            return None
        return self.begin_round(now)

    def _check_ensure(self, body: bytes) -> None:
        if body == self._good_ensure:
            self.pids.add(self._good_pid)
            return
        try:
            answer = json.loads(body)
            pid = int(answer["daemon"]["pid"])
            self.pids.add(pid)
            if answer["action"] != "reused":
                self.failures.append("action " + str(answer["action"]))
            else:
                self._good_ensure, self._good_pid = body, pid
        except (ValueError, KeyError, TypeError) as exc:
            self.failures.append(f"ensure: an unreadable answer ({exc!r}): {body[:200]!r}")

    def fail(self, reason: str, now: float) -> None:
        self.failures.append(reason[:300])
        self.finish(now)

    def finish(self, now: float) -> None:
        if not self.finished:
            self.finished, self.ended_at = True, now
            self.wake_at = None
            if self.on_finished is not None:
                self.on_finished()

    def result(self) -> dict[str, Any]:
        return {
            "from_due": self.from_due,
            "from_send": self.from_send,
            "lateness": self.lateness,
            "slow": self.slow,
            "failures": self.failures,
            "pids": sorted(self.pids),
            "done": self.done,
            "elapsed": (self.ended_at or time.monotonic()) - self.start,
        }


class _Connection:
    """A client's non-blocking socket, with what is left of a request the kernel did not take."""

    def __init__(self, client: Client, sock: socket.socket) -> None:
        self.client = client
        self.sock = sock
        self.fd = sock.fileno()
        self.unsent = b""


class _Loop:
    """Every connection of the worker, one ``select`` at a time, and the rounds' timer heap."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.connections: dict[int, _Connection] = {}
        self.readers: list[int] = []
        self.writers: list[int] = []
        self.timers: list[tuple[float, int]] = []

    def add(self, client: Client, sock: socket.socket) -> None:
        sock.setblocking(False)
        connection = _Connection(client, sock)
        self.connections[connection.fd] = connection
        self.readers.append(connection.fd)

    def send(self, connection: _Connection, data: bytes) -> None:
        connection.client.sent = self.clock()
        try:
            written = connection.sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.lose(connection, f"the connection closed ({exc!r})")
            return
        if written < len(data):
            connection.unsent = data[written:]
            self.writers.append(connection.fd)

    def lose(self, connection: _Connection, why: str) -> None:
        """Close a connection; a client not finished yet fails with ``why``."""
        if connection.fd in self.readers:
            self.readers.remove(connection.fd)
            if connection.fd in self.writers:
                self.writers.remove(connection.fd)
            connection.sock.close()
        client = connection.client
        if not client.finished:
            client.fail(f"{client.call}: {why}", self.clock())

    def close(self) -> None:
        for fd in list(self.readers):
            self.connections[fd].sock.close()
        self.readers.clear()
        self.writers.clear()

    def schedule(self, connection: _Connection) -> None:
        wake_at = connection.client.wake_at
        if wake_at is not None:
            heapq.heappush(self.timers, (wake_at, connection.fd))

    def pump(self, until: float, done: Callable[[], bool]) -> None:
        """Serve reads, writes and rounds' instants until ``done()`` or ``until``."""
        clock, connections, timers = self.clock, self.connections, self.timers
        while not done() and self.readers:
            now = clock()
            if now >= until:
                return
            timeout = until - now
            if timers and timers[0][0] - now < timeout:
                timeout = max(0.0, timers[0][0] - now)
            ready, writable, _ = select.select(self.readers, self.writers, [], timeout)
            for fd in writable:
                connection = connections[fd]
                self.writers.remove(fd)
                data, connection.unsent = connection.unsent, b""
                self.send(connection, data)
            for fd in ready:
                connection = connections[fd]
                now = clock()
                try:
                    data = connection.sock.recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self.lose(connection, f"the connection closed ({exc!r})")
                    continue
                if not data:
                    self.lose(connection, "the connection closed (None)")
                    continue
                client = connection.client
                try:
                    answers = client.reader.feed(data)
                except ValueError as exc:
                    self.lose(connection, str(exc))
                    continue
                for status, body in answers:
                    request = client.answered(now, status, body)
                    if request is not None:
                        self.send(connection, request)
                    else:
                        self.schedule(connection)
            now = clock()
            while timers and timers[0][0] <= now:
                _, fd = heapq.heappop(timers)
                connection = connections[fd]
                request = connection.client.begin_round(now)
                if request is not None:
                    self.send(connection, request)


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Connect every client, wait for ``job["start"]``, drive the schedule, report.

    ``job``: ``socket`` (a path), ``requests`` (``health``, ``status``, ``ensure``: each a
    request's bytes as latin-1), ``start`` (a ``time.monotonic`` instant), ``seconds``,
    ``rate`` (rounds a second per client; 0 flat out), ``phases`` (one client each: its offset
    into the period, a fraction of it) and ``grace_seconds`` (how long after the last round
    answers still outstanding are awaited before they count as failures).
    """
    requests = {
        name: job["requests"][name].encode("latin-1") for name in ("health", "status", "ensure")
    }
    start: float = job["start"]
    loop = _Loop()
    clients: list[Client] = []
    for phase in job["phases"]:
        client = Client(requests, start, job["seconds"], job["rate"], phase)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(job["socket"])
        loop.add(client, sock)
        clients.append(client)
    for connection in list(loop.connections.values()):
        loop.send(connection, requests["health"])
    loop.pump(start, lambda: all(c.connected or c.finished for c in clients))
    unready = [c.failures or ["no answer"] for c in clients if not c.connected]
    if unready:
        raise ConnectionError(f"clients not connected before the start: {unready[:3]}")
    # From here on a client allocates nothing that outlives a request but its samples.
    gc.collect()
    gc.freeze()
    gc.disable()
    collections_before = sum(s["collections"] for s in gc.get_stats())
    cpu_before = time.process_time()
    if start <= time.monotonic():
        raise RuntimeError("the start instant passed before every client was connected")
    unfinished = [len(clients)]
    for client in clients:
        client.on_finished = lambda: unfinished.__setitem__(0, unfinished[0] - 1)
    for connection in loop.connections.values():
        connection.client.first_round()
        loop.schedule(connection)
    grace = job["seconds"] + job["grace_seconds"]
    loop.pump(start + grace, lambda: unfinished[0] == 0)
    for client in clients:
        if not client.finished:
            client.failures.append(
                f"{client.call}: no answer {grace:g} s after the start (round {client.round})"
            )
    loop.close()
    cpu_seconds = time.process_time() - cpu_before
    return {
        "cpu_seconds": cpu_seconds,
        "clients": [c.result() for c in clients],
        "collections": sum(s["collections"] for s in gc.get_stats()) - collections_before,
    }


def main() -> None:
    job = json.loads(sys.argv[1])
    print(json.dumps(run(job)), flush=True)


if __name__ == "__main__":
    main()

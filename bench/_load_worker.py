"""One process of the under-load generator: many kept-alive clients of one Unix socket.

``python bench/_load_worker.py JOB`` (``JOB`` a JSON document, see :func:`run`) prints one JSON
line: each client's latencies, failures and the daemon pids its ``ensure`` answers named.
Standard library only, so that it costs no more than it must.

Why it is built this way (docs/performance.md, "Under load, session 5"): the first generator,
threads over four processes, had a p99 of its own of 7.5 ms against a server that answered at
once, above the 5 ms it was meant to judge. Threads waiting on the GIL and the collector of
each process were its own tail. Here every client is a connection driven by callbacks of one
asyncio loop: a timer sends ``status`` at the client's scheduled instant, its answer sends
``ensure`` in the same callback, and that answer schedules the next round. No thread, no task
per request, and the collector is off once the connections are made (what a client allocates
per request holds no reference cycle; refcounting frees it).

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

import asyncio
import gc
import json
import selectors
import sys
import time
from collections.abc import Callable
from typing import Any

#: A call slower than this (from its due instant) is listed with its timestamps, so that it
#: can be laid beside what the server was doing then.
SLOW_MS = 5.0
_MAX_SLOW = 5000


class AnswerReader:
    """Whole HTTP/1.1 answers out of the bytes of one connection, as they arrive.

    Each answer must carry ``content-length`` (the supervisor's always do); anything else is
    a ``ValueError``, counted as a failure by the caller.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        answers = []
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self._buffer) > 65536:
                    raise ValueError("an answer whose head exceeds 64 KiB")
                return answers
            status_line, *lines = self._buffer[:head_end].split(b"\r\n")
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
            length = None
            for line in lines:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = value.strip()
            if length is None or not length.isdigit():
                raise ValueError("an answer without content-length")
            end = head_end + 4 + int(length)
            if len(self._buffer) < end:
                return answers
            answers.append((int(parts[1]), self._buffer[head_end + 4 : end]))
            self._buffer = self._buffer[end:]


def due_at(start: float, round_: int, phase: float, rate: float) -> float:
    """The instant round ``round_`` of a client at ``phase`` (a fraction of the period) is due."""
    return start + (round_ + phase) / rate


class Client(asyncio.Protocol):
    """One client: one connection, ``status`` then ``ensure`` each round, on its schedule."""

    def __init__(self, job: dict[str, Any], phase: float, on_finished: Callable[[], None]) -> None:
        self.requests = {
            name: job["requests"][name].encode("latin-1") for name in ("health", "status", "ensure")
        }
        self.start: float = job["start"]
        self.seconds: float = job["seconds"]
        self.rate: float = job["rate"]
        self.phase = phase
        self.on_finished = on_finished
        self.reader = AnswerReader()
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.round = 0
        self.call = "health"
        self.due = 0.0
        self.sent = 0.0
        self.from_due: list[float] = []
        self.from_send: list[float] = []
        self.lateness: list[float] = []
        self.slow: list[tuple[str, float, float, float]] = []
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self.done = 0
        self.finished = False
        self.ended_at = 0.0

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send("health", time.monotonic())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        try:
            answers = self.reader.feed(data)
        except ValueError as exc:
            self._fail(f"{self.call}: {exc}")
            return
        for status, body in answers:
            self._answered(now, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._fail(f"{self.call}: the connection closed ({exc!r})")
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed before its first answer"))

    # the schedule

    def begin_round(self) -> None:
        """Send this round's first call (``status``, or ``ensure`` flat out)."""
        if self.finished:
            return
        now = time.monotonic()
        if self.rate:
            self.lateness.append(now - self.due)
            self._send("status", self.due)
        else:
            if now - self.start >= self.seconds:
                self._finish(now)
                return
            self._send("ensure", now)

    def schedule_round(self) -> None:
        """Wait for the next round's instant; a late round starts at once (it is not skipped)."""
        if self.round / self.rate >= self.seconds:
            self._finish(time.monotonic())
            return
        self.due = due_at(self.start, self.round, self.phase, self.rate)
        loop = asyncio.get_running_loop()
        loop.call_at(self.due, self.begin_round)

    def _send(self, call: str, due: float) -> None:
        assert self.transport is not None
        self.call, self.due = call, due
        self.sent = time.monotonic()
        self.transport.write(self.requests[call])

    def _answered(self, now: float, status: int, body: bytes) -> None:
        call = self.call
        if call == "health":
            if not self.connected.done():
                self.connected.set_result(None)
            return
        from_due = now - self.due
        self.from_due.append(from_due)
        self.from_send.append(now - self.sent)
        if from_due * 1e3 > SLOW_MS and len(self.slow) < _MAX_SLOW:
            self.slow.append((call, self.due, self.sent, now))
        self.done += 1
        if status != 200:
            self.failures.append(f"{call}: HTTP {status}: {body[:200]!r}")
        elif call == "ensure":
            self._check_ensure(body)
        if call == "status":
            self._send("ensure", now)
        elif self.rate:
            self.round += 1
            self.schedule_round()
        else:
            self.begin_round()

    def _check_ensure(self, body: bytes) -> None:
        try:
            answer = json.loads(body)
            self.pids.add(int(answer["daemon"]["pid"]))
            if answer["action"] != "reused":
                self.failures.append("action " + str(answer["action"]))
        except (ValueError, KeyError, TypeError) as exc:
            self.failures.append(f"ensure: an unreadable answer ({exc!r}): {body[:200]!r}")

    def _fail(self, reason: str) -> None:
        self.failures.append(reason[:300])
        self._finish(time.monotonic())
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, now: float) -> None:
        if not self.finished:
            self.finished, self.ended_at = True, now
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


async def run(job: dict[str, Any]) -> dict[str, Any]:
    """Connect every client, wait for ``job["start"]``, drive the schedule, report."""
    loop = asyncio.get_running_loop()
    all_finished = loop.create_future()
    clients: list[Client] = []

    def finished() -> None:
        if all(c.finished for c in clients) and not all_finished.done():
            all_finished.set_result(None)

    for phase in job["phases"]:
        client = Client(job, phase, finished)
        clients.append(client)
        await loop.create_unix_connection(lambda c=client: c, job["socket"])  # type: ignore[misc]
    await asyncio.gather(*(c.connected for c in clients))
    # From here on a client allocates nothing that outlives a request but its samples.
    gc.collect()
    gc.freeze()
    gc.disable()
    collections_before = sum(s["collections"] for s in gc.get_stats())
    cpu_before = time.process_time()
    if job["start"] <= time.monotonic():
        raise RuntimeError("the start instant passed before every client was connected")
    for client in clients:
        if job["rate"]:
            client.schedule_round()
        else:
            loop.call_at(job["start"], client.begin_round)
    grace = job["seconds"] + job["grace_seconds"]
    try:
        await asyncio.wait_for(all_finished, timeout=job["start"] + grace - time.monotonic())
    except TimeoutError:
        for client in clients:
            if not client.finished:
                client.failures.append(
                    f"{client.call}: no answer {grace:g} s after the start (round {client.round})"
                )
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    cpu_seconds = time.process_time() - cpu_before
    return {
        "cpu_seconds": cpu_seconds,
        "clients": [c.result() for c in clients],
        "collections": sum(s["collections"] for s in gc.get_stats()) - collections_before,
    }


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire to the microsecond.

    The default selector (epoll) rounds its timeout up to the next millisecond, so a round would
    be sent up to 1 ms after it was due, and that lateness would be counted in its latency;
    ``select`` takes microseconds (the worker's few dozen descriptors are all below 1024).
    """
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def main() -> None:
    job = json.loads(sys.argv[1])
    with asyncio.Runner(loop_factory=precise_loop) as runner:
        report = runner.run(run(job))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

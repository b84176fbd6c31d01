"""Under load: 100 concurrent clients of one supervisor (ours only; upstream has no server).

Each client is one kept-alive connection of its own, sending exactly the bytes
``SupervisorClient`` sends. The clients are spread over a few worker processes
(``bench/_load_worker.py``), each one hand-written ``select`` loop driving its clients'
non-blocking sockets, with its collector off once connected: the first generator (a thread per
client over four processes) had a p99 of its own above the 5 ms it judged, and every
microsecond of CPU the generator spends per call lengthens the queues when the guest slows.
Paced: each client calls ``status`` then ``ensure`` ten times a second for 20 s, on a fixed
schedule (a late round is not skipped).
Real clients are not synchronised, so client ``i`` of ``n`` starts at ``i/n`` of the 100 ms
period (the judged row); worker ``w`` takes clients ``w, w + W, ...`` so that each worker's
load is spread over the period too. The same schedule with every client in phase (200
requests in a burst every 100 ms) is reported as information: its p99 is the time to drain a
burst, not a client's wait. Flat out: the same clients call ``ensure`` back to back for 10 s;
the throughput is the answers per second. Every answer of ``ensure`` must be ``reused`` of the
same daemon; anything else, an error or a connection lost is a failure.

Latencies are measured from the instant each call was due (its scheduled instant; for
``ensure``, the arrival of the ``status`` answer before it), so that a stall delays every call
it held back (no coordinated omission); from the request's write to its answer is kept beside
it. The same spread schedule against a canned-answer server gives the generator's own share.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from sks_harness import spec_kitty_python
from spec_kitty_supervisor_client._client import _body, _ensure_request
from spec_kitty_supervisor_client._one_call import ensure_request_body
from spec_kitty_supervisor_client._wire import (
    _REQUEST_HEADERS,
    PROTOCOL_HEADER,
    Connection,
    ensure_private_dir,
    resolve_daemon_root,
    socket_path_for_root,
)

from ._common import (
    CLIENT_VERSION,
    SAAS_SYNC,
    BenchContext,
    BenchError,
    Row,
    median,
    percentile,
    run_ours_ensure,
)

NAME = "under_load"
CLIENTS = 100
#: Two processes of the select loop for the paced schedules: fewer contend less with each
#: other and the server for the two CPUs; one serialises every client. Flat out, where the
#: clients never wait, two processes held the throughput back, so that phase keeps four
#: (docs/performance.md, "Under load, session 7").
WORKERS = 2
FLAT_OUT_WORKERS = 4
RATE_PER_SECOND = 10.0
PACED_SECONDS = 20.0
FLAT_OUT_SECONDS = 10.0
MAX_P99_MS = 5.0
SETTLE_SECONDS = 2.0
#: Time for every worker to start and connect its clients before the schedule begins.
CONNECT_SECONDS = 3.0
#: How long after its last round a worker waits for answers still outstanding (failures).
GRACE_SECONDS = 30.0
_WORKER = Path(__file__).with_name("_load_worker.py")

# argv: socket path; stdin: the recorded answers as JSON {"METHOD PATH": answer bytes (latin-1)}.
_CANNED = """
import asyncio, gc, json, sys
gc.disable()
answers = {key.encode(): value.encode("latin-1") for key, value in json.load(sys.stdin).items()}

class Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\\r\\n\\r\\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            length = 0
            for line in head.split(b"\\r\\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            method, target = head.split(b" ")[:2]
            self.buffer = self.buffer[end:]
            self.transport.write(answers[method + b" " + target])

async def main():
    server = await asyncio.get_running_loop().create_unix_server(Canned, sys.argv[1])
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def _recorded_answers(socket_path: Path, python: str) -> dict[str, str]:
    """The supervisor's own answers to what the load's clients ask, whole (head and body)."""
    body = ensure_request_body(python, None, "/")
    requests = {
        "GET /v1/health": b"",
        "GET /v1/status": b"",
        "POST /v1/sync/ensure": body,
    }
    answers = {}
    for key, payload in requests.items():
        connection = Connection(socket_path, 30.0)
        try:
            method, path = key.split(" ")
            reply = connection.request(method, path, payload or None)
        finally:
            connection.close()
        if reply.status != 200:
            raise BenchError(f"{key} answered {reply.status}: {reply.body[:200]!r}")
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            f"{PROTOCOL_HEADER}: {reply.protocol}\r\ncontent-length: {len(reply.body)}\r\n\r\n"
        )
        answers[key] = head + reply.body.decode("latin-1")
    return answers


@contextlib.contextmanager
def _canned_server(root: Path, answers: dict[str, str]) -> Iterator[None]:
    """A server that answers every request at once with the supervisor's recorded answer."""
    socket_path = socket_path_for_root(root)
    ensure_private_dir(socket_path.parent)
    server = subprocess.Popen(
        [sys.executable, "-c", _CANNED, str(socket_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdin is not None
        assert server.stdout is not None
        server.stdin.write(json.dumps(answers))
        server.stdin.close()
        if server.stdout.readline().strip() != "ready":
            raise BenchError("the canned-answer server did not start")
        yield
    finally:
        server.terminate()  # our own child, by its Popen
        server.wait(timeout=30)


def client_phases(clients: int, workers: int, *, spread: bool) -> list[list[float]]:
    """Each worker's clients' offsets into the period: ``i/clients`` for client ``i`` overall
    (spread), or all 0 (in phase). Worker ``w`` takes clients ``w, w + workers, ...``, so each
    worker's clients are spread over the whole period too."""
    return [
        [i / clients if spread else 0.0 for i in range(first, clients, workers)]
        for first in range(min(workers, clients))
    ]


def request_bytes(method: str, path: str, body: bytes | None = None) -> bytes:
    """A request exactly as a kept-alive ``_wire.Connection`` (``SupervisorClient``) writes it."""
    head = f"{method} {path} HTTP/1.1\r\n{_REQUEST_HEADERS}"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + (body or b"")


def _drive(
    socket_path: Path,
    requests: dict[str, bytes],
    seconds: float,
    rate: float,
    *,
    spread: bool,
    workers: int = WORKERS,
    worker_path: Path = _WORKER,
) -> list[dict[str, Any]]:
    """Run the workers; every client's result, and each worker's collections (must be 0)."""
    start = time.monotonic() + CONNECT_SECONDS  # every worker's clients connected by then
    processes = []
    for phases in client_phases(CLIENTS, workers, spread=spread):
        job = {
            "socket": str(socket_path),
            "requests": {name: data.decode("latin-1") for name, data in requests.items()},
            "start": start,
            "seconds": seconds,
            "rate": rate,
            "phases": phases,
            "grace_seconds": GRACE_SECONDS,
        }
        worker = subprocess.Popen(
            [sys.executable, str(worker_path), json.dumps(job)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(worker)
    results: list[dict[str, Any]] = []
    for worker in processes:
        out, err = worker.communicate(timeout=CONNECT_SECONDS + seconds + GRACE_SECONDS + 60)
        if worker.returncode != 0 or not out.strip():
            raise BenchError(f"a load worker failed ({worker.returncode}): {err[-2000:]}")
        report = json.loads(out)
        if report["collections"]:
            raise BenchError(f"a load worker collected garbage {report['collections']} times")
        for client in report["clients"]:
            # Each client carries its worker's CPU share, so that the generator's own cost
            # per answer can be reported beside the latencies.
            client["worker_cpu_seconds"] = report["cpu_seconds"] / len(report["clients"])
        results.extend(report["clients"])
    return results


def _cpu_share(process: psutil.Process, before: Any, since: float) -> float:
    """The process's CPU (user + system) since ``before``, as a share of one core."""
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / (time.monotonic() - since)


def _latency_details(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles of both measures, the rounds' lateness and the slow calls (ms)."""
    from_due = [t * 1e3 for r in results for t in r["from_due"]]
    from_send = [t * 1e3 for r in results for t in r["from_send"]]
    lateness = [t * 1e3 for r in results for t in r["lateness"]]
    return {
        "measured_from": "each call's due instant (its schedule; ensure: the status answer)",
        "answers": len(from_due),
        "p50_ms": median(from_due),
        "p90_ms": percentile(from_due, 0.9),
        "p99_ms": percentile(from_due, 0.99),
        "max_ms": max(from_due),
        "from_send_p50_ms": median(from_send),
        "from_send_p90_ms": percentile(from_send, 0.9),
        "from_send_p99_ms": percentile(from_send, 0.99),
        "generator_cpu_ms_per_answer": 1e3
        * sum(r["worker_cpu_seconds"] for r in results)
        / max(1, len(from_due)),
        "round_lateness_p50_ms": median(lateness) if lateness else None,
        "round_lateness_p99_ms": percentile(lateness, 0.99) if lateness else None,
        "slow_calls": sorted(s for r in results for s in r["slow"]),
        "samples_ms": from_due,
        "samples_from_send_ms": from_send,
    }


class Served(NamedTuple):
    """A supervisor serving its one daemon, and what the load's clients send it."""

    supervisor_pid: int
    daemon_pid: int
    socket_path: Path
    requests: dict[str, bytes]
    python: str


@contextlib.contextmanager
def serving(context: BenchContext) -> Iterator[Served]:
    """A supervisor started for a fresh sandbox, its daemon spawned by a first ``ensure`` and
    settled; every process of it stopped by pid on exit."""
    python = str(spec_kitty_python(CLIENT_VERSION))
    with context.supervisors(context.sandbox()) as sut:
        supervisor_pid = sut.start()
        spawned = run_ours_ensure(sut, spec_kitty_python(CLIENT_VERSION), CLIENT_VERSION, 1)
        if spawned.actions != ("spawned",):
            raise BenchError(f"our first ensure did {spawned.actions}, not a spawn")
        time.sleep(SETTLE_SECONDS)
        # What SupervisorClient(root).status() and .ensure(python) send, from the clients'
        # environment (the generator itself runs in the bench's).
        ensure_body = _body(_ensure_request(python, None, os.getcwd(), sut.env(SAAS_SYNC)))
        requests = {
            "health": request_bytes("GET", "/v1/health"),
            "status": request_bytes("GET", "/v1/status"),
            "ensure": request_bytes("POST", "/v1/sync/ensure", ensure_body),
        }
        socket_path = socket_path_for_root(resolve_daemon_root(sut.root))
        yield Served(supervisor_pid, spawned.pid, socket_path, requests, python)


def run(context: BenchContext) -> list[Row]:
    load_at_start = list(os.getloadavg())
    with serving(context) as served:
        python, socket_path, requests = served.python, served.socket_path, served.requests
        supervisor = psutil.Process(served.supervisor_pid)
        # The supervisor's own CPU over each phase: one core busy means it is the bottleneck.
        phases: dict[str, tuple[list[dict[str, Any]], float]] = {}
        for name, seconds, rate, spread, workers in (
            ("paced", PACED_SECONDS, RATE_PER_SECOND, True, WORKERS),
            ("in_phase", PACED_SECONDS, RATE_PER_SECOND, False, WORKERS),
            ("flat_out", FLAT_OUT_SECONDS, 0.0, True, FLAT_OUT_WORKERS),
        ):
            cpu = supervisor.cpu_times()
            began = time.monotonic()
            results = _drive(socket_path, requests, seconds, rate, spread=spread, workers=workers)
            phases[name] = (results, _cpu_share(supervisor, cpu, began))
        answers = _recorded_answers(socket_path, python)
    # The generator's own share: the same spread schedule, against a server that answers each
    # request at once with the supervisor's recorded answer (one asyncio process).
    canned_sandbox = context.sandbox()
    with _canned_server(canned_sandbox.root, answers):
        canned = _drive(
            socket_path_for_root(resolve_daemon_root(canned_sandbox.root)),
            requests,
            PACED_SECONDS,
            RATE_PER_SECOND,
            spread=True,
        )
    load = {"loadavg_at_start": load_at_start, "loadavg_at_end": list(os.getloadavg())}
    paced, paced_cpu = phases["paced"]
    in_phase, in_phase_cpu = phases["in_phase"]
    flat, flat_cpu = phases["flat_out"]
    everything = paced + in_phase + flat
    failures = [f for r in everything for f in r["failures"]]
    pids = {pid for r in everything for pid in r["pids"]}
    if pids - {served.daemon_pid}:
        failures.append(f"ensure answered other daemons: {sorted(pids - {served.daemon_pid})}")
    flat_done = sum(r["done"] for r in flat)
    flat_elapsed = median([r["elapsed"] for r in flat])
    generator = {
        "clients": CLIENTS,
        "workers": WORKERS,
        "worker": "one select loop a process, a connection a client, collector off",
        "rate_per_client": RATE_PER_SECOND,
        "seconds": PACED_SECONDS,
    }
    details = {
        **generator,
        "schedule": "client i of n starts at i/n of the period",
        **_latency_details(paced),
        "failures": failures[:50],
        "failure_count": len(failures),
        "supervisor_cpu_share_of_one_core": paced_cpu,
        **load,
    }
    in_phase_details = {
        "schedule": "every client at the same instant (200 requests a burst every 100 ms)",
        **_latency_details(in_phase),
        "supervisor_cpu_share_of_one_core": in_phase_cpu,
    }
    canned_failures = [f for r in canned for f in r["failures"]]
    canned_details = {
        "server": "one asyncio process (collector off) answering each request at once with "
        "the supervisor's recorded answer",
        **_latency_details(canned),
        "failures": canned_failures[:20],
    }
    calls = details["answers"] + in_phase_details["answers"] + flat_done
    rate = f"{RATE_PER_SECOND:g}/s"
    return [
        Row(
            benchmark=NAME,
            metric=f"{CLIENTS} clients, status+ensure {rate} each (spread), p99 from due",
            unit="ms",
            upstream=None,
            ours=details["p99_ms"],
            target=f"< {MAX_P99_MS:g} ms, no failure",
            passed=details["p99_ms"] < MAX_P99_MS and not failures,
            details=details,
        ),
        Row(
            benchmark=NAME,
            metric="  the same, from each request's write to its answer, p99",
            unit="ms",
            upstream=None,
            ours=details["from_send_p99_ms"],
            target="(info)",
            passed=None,
        ),
        Row(
            benchmark=NAME,
            metric="  the same, every client in phase (bursts of 200), p99 from due",
            unit="ms",
            upstream=None,
            ours=in_phase_details["p99_ms"],
            target="(info)",
            passed=None,
            details=in_phase_details,
        ),
        Row(
            benchmark=NAME,
            metric="  the same against a canned-answer server (the generator's own), p99",
            unit="ms",
            upstream=None,
            ours=canned_details["p99_ms"],
            target="(info)",
            passed=None,
            details=canned_details,
        ),
        Row(
            benchmark=NAME,
            metric=f"  failures (of {calls} calls)",
            unit="",
            upstream=None,
            ours=float(len(failures)),
            target="0",
            passed=not failures,
        ),
        Row(
            benchmark=NAME,
            metric=f"{CLIENTS} clients flat out: ensure throughput",
            unit="/s",
            upstream=None,
            ours=flat_done / flat_elapsed,
            target="(reported)",
            passed=None,
            details={
                "answers": flat_done,
                "elapsed_s": flat_elapsed,
                "supervisor_cpu_share_of_one_core": flat_cpu,
                "workers": FLAT_OUT_WORKERS,
            },
        ),
    ]

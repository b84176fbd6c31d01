"""Under load: 100 concurrent clients of one supervisor (ours only; upstream has no server).

Each client is a thread with its own ``SupervisorClient`` (one kept-alive connection), spread
over a few worker processes so that one interpreter's GIL is not what is measured. Paced: each
client calls ``status`` then ``ensure`` ten times a second for 20 s, on a fixed schedule (a
late call is not skipped, so a stall shows in the latencies). Real clients are not
synchronised, so each client's schedule starts at its own phase of the 100 ms period (client
``i`` of ``n`` at ``i/n`` of it): that is the judged row. The same schedule with every client
in phase (all 100 asking at the same instant, 200 requests in a burst every 100 ms) is run too
and reported as information: its p99 is the time to drain a burst, not a client's wait.
Flat out: the same clients call ``ensure`` back to back for 10 s, and the throughput is the
answers per second. Every answer of ``ensure`` must be ``reused`` of the same daemon; anything
else, or an exception, is a failure.
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
from typing import Any

import psutil

from sks_harness import spec_kitty_python
from spec_kitty_supervisor_client._one_call import ensure_request_body
from spec_kitty_supervisor_client._wire import (
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
WORKERS = 4
RATE_PER_SECOND = 10.0
PACED_SECONDS = 20.0
FLAT_OUT_SECONDS = 10.0
MAX_P99_MS = 5.0
SETTLE_SECONDS = 2.0
_MARK = "@@sks-load@@"

# argv: root, python, clients, seconds, rate (0 = flat out), start (time.time() to begin at),
# phases: each client's offset into the period, as a fraction of it (comma-separated)
_WORKER = f"""
import json, sys, threading, time
from spec_kitty_supervisor_client import SupervisorClient
root, python = sys.argv[1], sys.argv[2]
clients = int(sys.argv[3])
seconds, rate, start = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
phases = [float(p) for p in sys.argv[7].split(",")]
results = []

def client(phase):
    latencies, failures, pids, done = [], [], set(), 0
    with SupervisorClient(root, autostart=False, timeout=30) as c:
        c.health()  # the connection is made before the clock starts
        while time.time() < start:
            time.sleep(0.001)
        began = time.perf_counter()
        k = 0
        while True:
            due = began + (k + phase) / rate if rate else time.perf_counter()
            if k / rate >= seconds if rate else due - began >= seconds:
                break
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            for call in ("status", "ensure") if rate else ("ensure",):
                t = time.perf_counter()
                try:
                    answer = c.status() if call == "status" else c.ensure(python)
                    latencies.append(time.perf_counter() - t)
                    if call == "ensure":
                        pids.add(answer.daemon.pid)
                        if answer.action != "reused":
                            failures.append("action " + answer.action)
                    done += 1
                except Exception as exc:
                    failures.append(type(exc).__name__ + ": " + str(exc)[:200])
            k += 1
        elapsed = time.perf_counter() - began
    results.append({{"latencies": latencies, "failures": failures, "pids": sorted(pids),
                     "done": done, "elapsed": elapsed}})

threads = [threading.Thread(target=client, args=(phases[i],)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print({_MARK!r} + json.dumps(results), flush=True)
"""


# argv: socket path; stdin: the recorded answers as JSON {"METHOD PATH": answer bytes (latin-1)}.
_CANNED = """
import asyncio, json, sys
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
    (spread), or all 0 (in phase). Workers take consecutive clients."""
    per_worker = [clients // workers + (1 if i < clients % workers else 0) for i in range(workers)]
    phases, first = [], 0
    for count in per_worker:
        phases.append([(first + i) / clients if spread else 0.0 for i in range(count)])
        first += count
    return phases


def _drive(
    env: dict[str, str], root: str, python: str, seconds: float, rate: float, *, spread: bool
) -> list[dict[str, Any]]:
    start = time.time() + 2.0  # every worker's clients connected by then
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                root,
                python,
                str(len(phases)),
                str(seconds),
                str(rate),
                str(start),
                ",".join(f"{phase:.6f}" for phase in phases),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for phases in client_phases(CLIENTS, WORKERS, spread=spread)
    ]
    results: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=seconds + 120)
        lines = [line for line in out.splitlines() if line.startswith(_MARK)]
        if worker.returncode != 0 or not lines:
            raise BenchError(f"a load worker failed ({worker.returncode}): {err[-2000:]}")
        results.extend(json.loads(lines[-1][len(_MARK) :]))
    return results


def _cpu_share(process: psutil.Process, before: Any, since: float) -> float:
    """The process's CPU (user + system) since ``before``, as a share of one core."""
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / (time.monotonic() - since)


def run(context: BenchContext) -> list[Row]:
    python = str(spec_kitty_python(CLIENT_VERSION))
    load_at_start = list(os.getloadavg())
    with context.supervisors(context.sandbox()) as sut:
        supervisor = psutil.Process(sut.start())
        spawned = run_ours_ensure(sut, spec_kitty_python(CLIENT_VERSION), CLIENT_VERSION, 1)
        if spawned.actions != ("spawned",):
            raise BenchError(f"our first ensure did {spawned.actions}, not a spawn")
        time.sleep(SETTLE_SECONDS)
        env = sut.env(SAAS_SYNC)
        # The supervisor's own CPU over each phase: one core busy means it is the bottleneck.
        phases: dict[str, tuple[list[dict[str, Any]], float]] = {}
        for name, seconds, rate, spread in (
            ("paced", PACED_SECONDS, RATE_PER_SECOND, True),
            ("in_phase", PACED_SECONDS, RATE_PER_SECOND, False),
            ("flat_out", FLAT_OUT_SECONDS, 0.0, True),
        ):
            cpu = supervisor.cpu_times()
            began = time.monotonic()
            results = _drive(env, str(sut.root), python, seconds, rate, spread=spread)
            phases[name] = (results, _cpu_share(supervisor, cpu, began))
        answers = _recorded_answers(socket_path_for_root(resolve_daemon_root(sut.root)), python)
    # The generator's own share: the same spread schedule, against a server that answers each
    # request at once with the supervisor's recorded answer (one asyncio process).
    canned_sandbox = context.sandbox()
    with _canned_server(canned_sandbox.root, answers):
        canned = _drive(
            canned_sandbox.env(SAAS_SYNC),
            str(canned_sandbox.root),
            python,
            PACED_SECONDS,
            RATE_PER_SECOND,
            spread=True,
        )
    load = {"loadavg_at_start": load_at_start, "loadavg_at_end": list(os.getloadavg())}
    paced, paced_cpu = phases["paced"]
    in_phase, in_phase_cpu = phases["in_phase"]
    flat, flat_cpu = phases["flat_out"]
    latencies_ms = [t * 1e3 for r in paced for t in r["latencies"]]
    in_phase_ms = [t * 1e3 for r in in_phase for t in r["latencies"]]
    everything = paced + in_phase + flat
    failures = [f for r in everything for f in r["failures"]]
    pids = {pid for r in everything for pid in r["pids"]}
    if pids - {spawned.pid}:
        failures.append(f"ensure answered other daemons: {sorted(pids - {spawned.pid})}")
    p99 = percentile(latencies_ms, 0.99)
    in_phase_p99 = percentile(in_phase_ms, 0.99)
    flat_done = sum(r["done"] for r in flat)
    flat_elapsed = median([r["elapsed"] for r in flat])
    details = {
        "clients": CLIENTS,
        "workers": WORKERS,
        "rate_per_client": RATE_PER_SECOND,
        "seconds": PACED_SECONDS,
        "schedule": "client i of n starts at i/n of the period",
        "answers": len(latencies_ms),
        "p50_ms": median(latencies_ms),
        "p90_ms": percentile(latencies_ms, 0.9),
        "max_ms": max(latencies_ms),
        "failures": failures[:50],
        "failure_count": len(failures),
        "supervisor_cpu_share_of_one_core": paced_cpu,
        "samples_ms": latencies_ms,
        **load,
    }
    in_phase_details = {
        "schedule": "every client at the same instant (200 requests a burst every 100 ms)",
        "answers": len(in_phase_ms),
        "p50_ms": median(in_phase_ms),
        "p90_ms": percentile(in_phase_ms, 0.9),
        "max_ms": max(in_phase_ms),
        "supervisor_cpu_share_of_one_core": in_phase_cpu,
        "samples_ms": in_phase_ms,
    }
    calls = len(latencies_ms) + len(in_phase_ms) + flat_done
    canned_ms = [t * 1e3 for r in canned for t in r["latencies"]]
    canned_failures = [f for r in canned for f in r["failures"]]
    canned_details = {
        "server": "one asyncio process answering each request at once with a recorded answer",
        "answers": len(canned_ms),
        "p50_ms": median(canned_ms),
        "p90_ms": percentile(canned_ms, 0.9),
        "max_ms": max(canned_ms),
        "failures": canned_failures[:20],
        "samples_ms": canned_ms,
    }
    return [
        Row(
            benchmark=NAME,
            metric=f"{CLIENTS} clients, status+ensure {RATE_PER_SECOND:g}/s each (spread), p99",
            unit="ms",
            upstream=None,
            ours=p99,
            target=f"< {MAX_P99_MS:g} ms, no failure",
            passed=p99 < MAX_P99_MS and not failures,
            details=details,
        ),
        Row(
            benchmark=NAME,
            metric="  the same, every client in phase (bursts of 200), p99",
            unit="ms",
            upstream=None,
            ours=in_phase_p99,
            target="(info)",
            passed=None,
            details=in_phase_details,
        ),
        Row(
            benchmark=NAME,
            metric="  the same against a canned-answer server (the generator's own), p99",
            unit="ms",
            upstream=None,
            ours=percentile(canned_ms, 0.99),
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
            },
        ),
    ]

"""``status`` while many clients hold idle kept-alive connections (ours only; upstream has no
control socket).

The supervisor serves each connection in its own task and keeps at most
``min(512, soft fd limit - 64)`` open, so 500 idle clients must cost a ``status`` nothing
noticeable. Each idle client made one ``GET /v1/health`` and then holds its connection; the
timed client asks ``GET /v1/status`` on its own kept-alive connection, alternating rounds with
and without the idle clients.
"""

from __future__ import annotations

import os
import resource
import socket
import time

from spec_kitty_supervisor_client import SupervisorClient, socket_path_for_root

from ._common import BenchContext, BenchError, Row, percentile

NAME = "idle_connections"
IDLE_CLIENTS = 500
#: The target of issue 14: status p50 under 5 ms with 500 idle connections held.
TARGET_MS = 5.0


def _hold_idle(path: str, count: int) -> list[socket.socket]:
    held: list[socket.socket] = []
    for _ in range(count):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(30)
        held.append(client)
        client.connect(path)
        client.sendall(b"GET /v1/health HTTP/1.1\r\nHost: s\r\n\r\n")
        if not client.recv(65536).startswith(b"HTTP/1.1 200"):
            raise BenchError("an idle client's health request was not answered")
    return held


def _time_status(client: SupervisorClient, count: int) -> list[float]:
    timings = []
    client.status()  # the connection itself is not what is measured
    for _ in range(count):
        start = time.perf_counter()
        client.status()
        timings.append(time.perf_counter() - start)
    return timings


def run(context: BenchContext) -> list[Row]:
    samples = 2000 if context.full else 500
    rounds = 5 if context.full else 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < IDLE_CLIENTS + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    quiet: list[float] = []
    crowded: list[float] = []
    load_at_start = list(os.getloadavg())
    with context.supervisors(context.sandbox()) as sut:
        sut.start()
        path = str(socket_path_for_root(sut.root))
        with SupervisorClient(sut.root, autostart=False) as client:
            for _ in range(rounds):
                quiet.extend(_time_status(client, samples))
                held = _hold_idle(path, IDLE_CLIENTS)
                try:
                    crowded.extend(_time_status(client, samples))
                finally:
                    for idle in held:
                        idle.close()
    details = {
        "idle_clients": IDLE_CLIENTS,
        "samples_per_side": len(crowded),
        "rounds": rounds,
        "quiet_p50_ms": percentile(quiet, 0.5) * 1e3,
        "quiet_p99_ms": percentile(quiet, 0.99) * 1e3,
        "crowded_p99_ms": percentile(crowded, 0.99) * 1e3,
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": list(os.getloadavg()),
        "quiet_samples_s": quiet,
        "crowded_samples_s": crowded,
    }
    p50 = percentile(crowded, 0.5) * 1e3
    return [
        Row(
            benchmark=NAME,
            metric=f"status p50 with {IDLE_CLIENTS} idle connections",
            unit="ms",
            upstream=None,
            ours=p50,
            target=f"< {TARGET_MS:g} ms",
            passed=p50 < TARGET_MS,
            details=details,
        )
    ]

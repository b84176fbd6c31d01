"""The per-request floor of three minimal servers on a Unix socket (ADR 0008's measurement).

``python -m bench.server_floor``: one kept-alive client (the client's own ``_wire.Connection``)
asks ``GET /v1/health`` 2000 times per round, 5 rounds, round-robin over three servers, each a
separate process answering a fixed 15-byte JSON body:

- ``asyncio_protocol``: an ``asyncio.Protocol`` that answers when a request head is complete;
- ``anyio_stream``: what the supervisor does before HTTP, an anyio Unix listener and a task per
  connection that receives and sends on the stream;
- ``anyio_stream_h11``: the same with h11 parsing the request and writing the answer, as
  ``supervisor/_api.py`` does, and the body from ``json.dumps``.

It prints p50, p90 and p99 per server and the load average. Not part of ``python -m bench``:
there is no upstream side to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spec_kitty_supervisor_client._wire import Connection

from ._common import percentile

_BODY = b'{"status":"ok"}'
_REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_BODY),
    _BODY,
)
_PROTOCOL = """
import asyncio, sys
REPLY = REPLY_BYTES
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\\r\\n\\r\\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\\r\\n\\r\\n", 1)
            self.transport.write(REPLY)
async def main():
    server = await asyncio.get_running_loop().create_unix_server(Answer, sys.argv[1])
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""
_STREAM = """
import anyio, sys
REPLY = REPLY_BYTES
async def serve(stream):
    buffer = b""
    async with stream:
        while True:
            try:
                buffer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            while b"\\r\\n\\r\\n" in buffer:
                _, buffer = buffer.split(b"\\r\\n\\r\\n", 1)
                await stream.send(REPLY)
async def main():
    listener = await anyio.create_unix_listener(sys.argv[1])
    print("ready", flush=True)
    await listener.serve(serve)
anyio.run(main)
"""
_STREAM_H11 = """
import anyio, h11, json, sys
async def serve(stream):
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            elif isinstance(event, h11.EndOfMessage):
                body = json.dumps({"status": "ok"}).encode()
                headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
                out = conn.send(h11.Response(status_code=200, headers=headers))
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                await stream.send(out)
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
async def main():
    listener = await anyio.create_unix_listener(sys.argv[1])
    print("ready", flush=True)
    await listener.serve(serve)
anyio.run(main)
"""
SERVERS = {"asyncio_protocol": _PROTOCOL, "anyio_stream": _STREAM, "anyio_stream_h11": _STREAM_H11}


def _measure(path: Path, count: int) -> list[float]:
    connection = Connection(path, 10.0)
    try:
        connection.request("GET", "/v1/health")
        timings = []
        for _ in range(count):
            began = time.perf_counter()
            connection.request("GET", "/v1/health")
            timings.append(time.perf_counter() - began)
        return timings
    finally:
        connection.close()


def main(rounds: int = 5, count: int = 2000) -> None:
    results: dict[str, list[float]] = {name: [] for name in SERVERS}
    with tempfile.TemporaryDirectory(prefix="sks-floor-") as folder:
        servers: dict[str, tuple[subprocess.Popen[str], Path]] = {}
        try:
            for name, code in SERVERS.items():
                path = Path(folder) / f"{name}.sock"
                process = subprocess.Popen(
                    [sys.executable, "-c", code.replace("REPLY_BYTES", repr(_REPLY)), str(path)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                servers[name] = (process, path)
                if process.stdout is None or process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the {name} server did not start")
            for _ in range(rounds):
                for name, (_, path) in servers.items():
                    results[name].extend(_measure(path, count))
        finally:
            for process, _ in servers.values():
                process.terminate()  # our own child, by its Popen
                process.wait()
    for name, timings in results.items():
        figures = "  ".join(
            f"p{round(q * 100)} {percentile(timings, q) * 1e3:.3f} ms" for q in (0.5, 0.9, 0.99)
        )
        print(f"{name:18s} {figures}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""The sync daemon's contract, spoken by the harness: the spawn argv and the loopback HTTP API.

Read from the contract document of the real daemons (spec-kitty-cli 3.2.x), not from the
supervisor: a harness that shared the code under test could not catch its bugs. What a daemon
is, for every upstream tool:

- argv ``[PYTHON, "-c", SCRIPT, "--spec-kitty-daemon-root=<R>", "--spec-kitty-daemon-exec=<PY>"]``
  where SCRIPT sets ``SPEC_KITTY_SYNC_MINIMAL_IMPORT`` and calls ``run_sync_daemon(PORT, 'TOKEN')``;
  other tools recognise it by a ``-c`` followed by a script containing ``run_sync_daemon``;
- a stdlib ``HTTPServer`` on ``127.0.0.1:PORT`` speaking HTTP/1.0, whose answers end when the
  connection closes: ``GET /api/health`` (no auth) and ``POST /api/shutdown {"token": T}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = [
    "DAEMON_EXEC_MARKER",
    "DAEMON_ROOT_MARKER",
    "DaemonArgv",
    "DaemonHealth",
    "daemon_argv",
    "daemon_script",
    "parse_daemon_argv",
    "post_shutdown",
    "probe_health",
]

DAEMON_ROOT_MARKER = "--spec-kitty-daemon-root="
DAEMON_EXEC_MARKER = "--spec-kitty-daemon-exec="
_PORT = re.compile(r"run_sync_daemon\(\s*(\d+)")
_TOKEN = re.compile(r"run_sync_daemon\(\s*\d+\s*,\s*'([0-9a-f]{32})'")
_MAX_ANSWER = 256 * 1024


def daemon_script(port: int, token: str) -> str:
    """The four lines upstream spawners pass after ``-c``."""
    return (
        "import os\n"
        'os.environ["SPEC_KITTY_SYNC_MINIMAL_IMPORT"] = "1"\n'
        "from specify_cli.sync.daemon import run_sync_daemon\n"
        f"run_sync_daemon({port}, '{token}')\n"
    )


def daemon_argv(python: str, resolved_python: str, root: str, port: int, token: str) -> list[str]:
    """The production argv: the interpreter as invoked, the script, the root and exec markers."""
    return [
        python,
        "-c",
        daemon_script(port, token),
        f"{DAEMON_ROOT_MARKER}{root}",
        f"{DAEMON_EXEC_MARKER}{resolved_python}",
    ]


def first_daemon_argv(python: str, port: int, token: str) -> list[str]:
    """How a 3.1.x CLI spawns its daemon (its ``_background_script``): two lines, no markers."""
    script = (
        f"from specify_cli.sync.daemon import run_sync_daemon\nrun_sync_daemon({port}, {token!r})\n"
    )
    return [python, "-c", script]


def spawns_without_marker(version: str) -> bool:
    """3.1.x daemons carry no root marker (read from their wheels)."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return numbers == (3, 1)


@dataclass(frozen=True)
class DaemonArgv:
    """What a spawn-shaped argv says: its port, token and markers (None when absent)."""

    port: int
    token: str
    root: str | None
    exec_path: str | None


def parse_daemon_argv(argv: Sequence[str]) -> DaemonArgv | None:
    """The daemon an argv starts, or None when it is not spawn-shaped with a port and token."""
    script = next(
        (
            argv[i + 1]
            for i in range(len(argv) - 1)
            if argv[i] == "-c" and "run_sync_daemon" in argv[i + 1]
        ),
        None,
    )
    if script is None:
        return None
    port = _PORT.search(script)
    token = _TOKEN.search(script)
    if port is None or token is None:
        return None
    root = next(
        (a[len(DAEMON_ROOT_MARKER) :] for a in argv if a.startswith(DAEMON_ROOT_MARKER)), None
    )
    exec_path = next(
        (a[len(DAEMON_EXEC_MARKER) :] for a in argv if a.startswith(DAEMON_EXEC_MARKER)), None
    )
    return DaemonArgv(port=int(port.group(1)), token=token.group(1), root=root, exec_path=exec_path)


def _marker(argv: Sequence[str], prefix: str) -> str | None:
    return next((a[len(prefix) :] for a in argv if a.startswith(prefix)), None)


@dataclass(frozen=True)
class DaemonHealth:
    """A ``GET /api/health`` answer; None where the daemon's release lacks the field.

    ``daemon_family`` and ``singleton_scope_id`` exist from 3.2.4; in 3.2.2/3.2.3 ``owner`` is
    read from a shared file and may describe another daemon.
    """

    payload: dict[str, Any]

    def _text(self, key: str) -> str | None:
        value = self.payload.get(key)
        return value if isinstance(value, str) else None

    @property
    def status(self) -> str | None:
        return self._text("status")

    @property
    def token(self) -> str | None:
        return self._text("token")

    @property
    def daemon_family(self) -> str | None:
        return self._text("daemon_family")

    @property
    def singleton_scope_id(self) -> str | None:
        return self._text("singleton_scope_id")

    @property
    def package_version(self) -> str | None:
        return self._text("package_version")

    @property
    def protocol_version(self) -> int | None:
        value = self.payload.get("protocol_version")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def owner(self) -> dict[str, Any] | None:
        value = self.payload.get("owner")
        return value if isinstance(value, dict) else None

    @property
    def sync_running(self) -> bool:
        """``sync.running``: the daemon's background sync service is started."""
        sync = self.payload.get("sync")
        return isinstance(sync, dict) and sync.get("running") is True


async def _exchange(port: int, request: bytes, timeout: float) -> tuple[int, bytes] | None:
    """Send one HTTP/1.0 request and read the answer to EOF; None when nothing answered."""
    with anyio.move_on_after(timeout):
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(request)
                answer = bytearray()
                while len(answer) <= _MAX_ANSWER:
                    try:
                        answer += await stream.receive(65536)
                    except anyio.EndOfStream:
                        break
        except (OSError, anyio.BrokenResourceError):
            return None
        head, separator, body = bytes(answer).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if not separator or len(status_line) < 2 or not status_line[1].isdigit():
            return None
        return int(status_line[1]), body
    return None


async def probe_health(port: int, timeout: float) -> DaemonHealth | None:
    """``GET /api/health`` on ``127.0.0.1:port``; None unless a JSON object came with 200."""
    request = f"GET /api/health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    answer = await _exchange(port, request, timeout)
    if answer is None or answer[0] != 200:
        return None
    try:
        payload = json.loads(answer[1])
    except (ValueError, UnicodeDecodeError):
        return None
    return DaemonHealth(payload) if isinstance(payload, dict) else None


async def post_shutdown(port: int, token: str, timeout: float) -> bool:
    """``POST /api/shutdown`` with the token; True when the daemon said it is stopping."""
    body = json.dumps({"token": token}).encode()
    request = (
        f"POST /api/shutdown HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    answer = await _exchange(port, request, timeout)
    return answer is not None and answer[0] == 200

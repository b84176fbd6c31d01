"""Discovery against real processes: listeners are found by the kernel's table, not by connects.

Every process here is started by the test on a port checked free right now, and stopped by
its pid (``Popen.kill``) at the end, whatever happened.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import psutil
import pytest

from sks_harness import DEFAULT_TIMEOUT, NoFreePortsError, PortRange, eventually, port_is_free
from spec_kitty_supervisor import _discovery
from spec_kitty_supervisor._classification import SupervisorFacts
from spec_kitty_supervisor._daemon_shape import DAEMON_EXEC_MARKER, DAEMON_ROOT_MARKER
from spec_kitty_supervisor._discovery import (
    Listener,
    find_family_listeners,
    observe_listeners,
    read_process_facts,
)

pytestmark = [
    pytest.mark.real_ports,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals"),
]

#: The slice of the family range these tests listen in.
TEST_PORTS = PortRange(9440, 9450)
READY_TIMEOUT = DEFAULT_TIMEOUT

# A stand-in sync daemon: the production spawn shape (``-c`` and a script calling
# ``run_sync_daemon(PORT, 'TOKEN')``) answering health the way 3.2.2/3.2.3 do, without
# needing spec-kitty installed.
FAKE_DAEMON_SCRIPT = """\
import http.server, json, os

def run_sync_daemon(port, token):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{
                "status": "ok", "token": token, "protocol_version": 1,
                "package_version": "3.2.2", "sync": {{"running": False}},
                "owner": {{"pid": os.getpid(), "port": port, "token": "<redacted>"}},
            }}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    print("ready", flush=True)
    server.serve_forever()

run_sync_daemon({port}, '{token}')
"""

PLAIN_HTTP_SERVER = """\
import http.server, sys
# BaseHTTPRequestHandler answers every GET with 501: a web server, but not a daemon.
handler = http.server.BaseHTTPRequestHandler
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
print("ready", flush=True)
server.serve_forever()
"""

# Listens and never accepts: a connect completes (the kernel queues it) but nothing answers.
SILENT_LISTENERS = """\
import socket, sys, time
held = []
for port in map(int, sys.argv[1:]):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        if family == socket.AF_INET6 and not socket.has_ipv6:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            if family == socket.AF_INET:
                raise
            continue
        sock.listen(64)
        held.append(sock)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


class Processes:
    """Starts listeners on free test ports; ends each one by its pid."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[str]] = []
        self._promised: set[int] = set()

    def start(
        self, argv_for: Callable[[list[int]], list[str]], *, ports: int = 1
    ) -> tuple[subprocess.Popen[str], list[int]]:
        """Run ``argv_for(ports)`` on free ports until one run binds them (another process
        may take a port between our check and the child's bind)."""
        for _ in range(3):
            chosen = TEST_PORTS.free(ports, exclude=self._promised)
            process = subprocess.Popen(
                argv_for(chosen),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._started.append(process)
            if self._ready(process):
                self._promised.update(chosen)
                return process, chosen
            self._end(process)
        raise NoFreePortsError(f"no process could bind {ports} port(s) in {TEST_PORTS}")

    @staticmethod
    def _ready(process: subprocess.Popen[str]) -> bool:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
        return bool(readable) and process.stdout.readline().strip() == "ready"

    @staticmethod
    def _end(process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            # Popen.kill signals its own pid and never one it has already reaped.
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    def start_with_output(
        self, argv_for: Callable[[list[int]], list[str]], *, output: Path, home: Path
    ) -> tuple[subprocess.Popen[str], int]:
        """As :meth:`start`, but the way upstream spawns: output appended to ``output``,
        ``HOME`` set, and readiness read from that file."""
        for _ in range(3):
            chosen = TEST_PORTS.free(1, exclude=self._promised)
            offset = output.stat().st_size if output.exists() else 0
            with output.open("ab") as log:
                process = subprocess.Popen(
                    argv_for(chosen),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "HOME": str(home)},
                    text=True,
                )
            self._started.append(process)

            def ready_or_exited(process: subprocess.Popen[str] = process, at: int = offset) -> str:
                if b"ready" in output.read_bytes()[at:]:
                    return "ready"
                return "exited" if process.poll() is not None else ""

            if eventually(ready_or_exited, what=f"{argv_for(chosen)[:2]} ready") == "ready":
                self._promised.update(chosen)
                return process, chosen[0]
            self._end(process)  # it lost a bind race: try other ports
        raise NoFreePortsError(f"no process could bind a port in {TEST_PORTS}")

    def stop_all(self) -> None:
        for process in self._started:
            self._end(process)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def daemon_root(tmp_path: Path) -> str:
    root = tmp_path / "home" / ".spec-kitty"
    root.mkdir(parents=True)
    return str(root.resolve())


def fake_daemon_argv(
    root: str, token: str = "0123456789abcdef0123456789abcdef"
) -> Callable[[list[int]], list[str]]:
    def argv(ports: list[int]) -> list[str]:
        return [
            sys.executable,
            "-c",
            FAKE_DAEMON_SCRIPT.format(port=ports[0], token=token),
            f"{DAEMON_ROOT_MARKER}{root}",
            f"{DAEMON_EXEC_MARKER}{sys.executable}",
        ]

    return argv


def first_daemon_argv(token: str) -> Callable[[list[int]], list[str]]:
    """A stand-in for a 3.1.x daemon as its CLI spawns it: ``-c`` and no marker at all."""

    def argv(ports: list[int]) -> list[str]:
        return [sys.executable, "-c", FAKE_DAEMON_SCRIPT.format(port=ports[0], token=token)]

    return argv


def plain_http_server_argv(ports: list[int]) -> list[str]:
    return [sys.executable, "-c", PLAIN_HTTP_SERVER, str(ports[0])]


# Accepts on every port and never answers; writes to argv[1] the most connections it ever
# held open at once. Probes that run together hold one each until their own timeout.
COUNTING_LISTENERS = """\
import selectors, socket, sys
report = sys.argv[1]
selector = selectors.DefaultSelector()
for port in map(int, sys.argv[2:]):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ, "listener")
print("ready", flush=True)
open_now = most = 0
while True:
    for key, _ in selector.select():
        if key.data == "listener":
            connection, _ = key.fileobj.accept()
            connection.setblocking(False)
            selector.register(connection, selectors.EVENT_READ, "connection")
            open_now += 1
            if open_now > most:
                most = open_now
                with open(report, "w") as out:
                    out.write(str(most))
            continue
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:
            selector.unregister(key.fileobj)
            key.fileobj.close()
            open_now -= 1
"""


# Listens, then forks: parent and child both hold the listening socket. The child prints its
# pid and lives until the parent dies (its end of a pipe then reads EOF).
SHARED_LISTENER = """\
import os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(8)
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.close(write_end)
    os.read(read_end, 1)
    os._exit(0)
os.close(read_end)
print("ready", flush=True)
print(child, flush=True)
os.wait()  # until killed
"""


def shared_listener_argv(ports: list[int]) -> list[str]:
    return [sys.executable, "-c", SHARED_LISTENER, str(ports[0])]


def silent_listeners_argv(ports: list[int]) -> list[str]:
    return [sys.executable, "-c", SILENT_LISTENERS, *map(str, ports)]


def listener_on(port: int, listeners: list[Listener]) -> Listener:
    matches = [listener for listener in listeners if listener.port == port]
    assert len(matches) == 1, f"port {port}: {matches}"
    return matches[0]


def wait_until_stopped(pid: int) -> None:
    eventually(
        lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, what=f"pid {pid} to stop"
    )


# -------------------------------------------------------------------------------------------


def test_listeners_are_found_with_the_pid_and_uid_holding_them(
    processes: Processes, daemon_root: str
) -> None:
    server, (server_port,) = processes.start(plain_http_server_argv)
    daemon, (daemon_port,) = processes.start(fake_daemon_argv(daemon_root))

    found = find_family_listeners()

    assert listener_on(server_port, found) == Listener(server_port, server.pid, os.getuid())
    assert listener_on(daemon_port, found) == Listener(daemon_port, daemon.pid, os.getuid())
    assert all(9400 <= listener.port < 9450 for listener in found)


def test_a_stopped_processs_listener_is_still_found(processes: Processes, daemon_root: str) -> None:
    daemon, (port,) = processes.start(fake_daemon_argv(daemon_root))
    os.kill(daemon.pid, signal.SIGSTOP)
    wait_until_stopped(daemon.pid)

    assert listener_on(port, find_family_listeners()).pid == daemon.pid


def test_listeners_are_found_process_by_process_when_the_system_table_is_denied(
    processes: Processes, daemon_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on macOS: no kernel tables to read, and listing every socket needs root.
    def denied(kind: str = "inet") -> list[object]:
        raise psutil.AccessDenied()

    daemon, (port,) = processes.start(fake_daemon_argv(daemon_root))
    monkeypatch.setattr(_discovery, "linux_listen_sockets", lambda low, high: None)
    monkeypatch.setattr(psutil, "net_connections", denied)

    assert listener_on(port, find_family_listeners()) == Listener(port, daemon.pid, os.getuid())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's /proc tables")
def test_on_linux_the_kernel_tables_name_the_listeners_without_psutil(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, (port,) = processes.start(silent_listeners_argv)
    walks: list[frozenset[int]] = []
    walk = _discovery.linux_socket_owners

    def counted(inodes: Collection[int]) -> dict[int, int]:
        walks.append(frozenset(inodes))
        return walk(inodes)

    def not_psutil(kind: str = "inet") -> list[object]:
        raise AssertionError("psutil's system-wide listing was used")

    monkeypatch.setattr(_discovery, "linux_socket_owners", counted)
    monkeypatch.setattr(psutil, "net_connections", not_psutil)
    empty = (port + 1, port + 1)  # half-open: no port at all, so nothing can listen in it

    assert find_family_listeners(empty) == []
    assert walks == []  # nothing listens there: no process is read
    # With a listener in the range, its sockets' holder is looked for, and named.
    holder = listener_on(port, find_family_listeners((port, port + 1)))
    assert holder.pid is not None
    assert holder.uid == os.getuid()
    assert len(walks) == 1
    assert len(walks[0]) >= 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's /proc tables")
def test_the_kernel_tables_name_what_psutil_names(
    processes: Processes, daemon_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, (daemon_port,) = processes.start(fake_daemon_argv(daemon_root))
    both, (both_port,) = processes.start(silent_listeners_argv)
    parent, (shared_port,) = processes.start(shared_listener_argv)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    ours = {daemon_port, both_port, shared_port}

    from_kernel = [entry for entry in find_family_listeners() if entry.port in ours]
    monkeypatch.setattr(_discovery, "linux_listen_sockets", lambda low, high: None)
    from_psutil = [entry for entry in find_family_listeners() if entry.port in ours]

    # psutil, without the kernel's tables, cannot say whose a socket is: the pids must agree.
    assert [(e.port, e.pid) for e in from_kernel] == [(e.port, e.pid) for e in from_psutil]
    assert {e.port: e.pid for e in from_kernel} == {
        daemon_port: daemon.pid,
        both_port: both.pid,
        # The socket is held by the parent and its forked child: the last, as psutil says.
        shared_port: max(parent.pid, child_pid),
    }
    assert {e.uid for e in from_kernel} == {os.getuid()}


def test_a_port_held_on_ipv4_and_ipv6_is_one_listener(processes: Processes) -> None:
    holder, (port,) = processes.start(silent_listeners_argv)

    assert listener_on(port, find_family_listeners()).pid == holder.pid


def test_listeners_outside_the_asked_range_are_not_reported(processes: Processes) -> None:
    _, (port,) = processes.start(silent_listeners_argv)

    assert port not in {listener.port for listener in find_family_listeners((9400, 9440))}


def test_process_facts_of_a_daemon_name_its_start_and_spawn_shape(
    processes: Processes, daemon_root: str
) -> None:
    daemon, (port,) = processes.start(fake_daemon_argv(daemon_root))

    identity, cmdline = read_process_facts(daemon.pid)

    assert identity is not None
    assert (identity.pid, identity.uid) == (daemon.pid, os.getuid())
    assert cmdline is not None
    assert cmdline.spawn_shape
    assert (cmdline.argv_port, cmdline.root_marker) == (port, daemon_root)


def test_process_facts_of_an_exited_process_are_unknown() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)

    assert read_process_facts(child.pid) == (None, None)


@pytest.mark.anyio
async def test_observed_listeners_are_classified(
    processes: Processes, daemon_root: str, tmp_path: Path
) -> None:
    other_root = tmp_path / "other" / ".spec-kitty"
    other_root.mkdir(parents=True)
    ours, (our_port,) = processes.start(fake_daemon_argv(daemon_root))
    theirs, (their_port,) = processes.start(fake_daemon_argv(str(other_root)))
    server, (server_port,) = processes.start(plain_http_server_argv)
    supervisor = SupervisorFacts(daemon_root=daemon_root, uid=os.getuid())

    records = {record.port: record for record in await observe_listeners(supervisor)}

    assert (records[our_port].pid, records[our_port].cleanup_class) == (ours.pid, "safe_auto")
    assert records[our_port].identity_source == "argv_token"
    assert records[our_port].package_version == "3.2.2"
    assert records[our_port].process_start is not None
    assert (records[their_port].pid, records[their_port].skip_reason) == (theirs.pid, "cross_root")
    assert (records[server_port].pid, records[server_port].skip_reason) == (
        server.pid,
        "not_spec_kitty",
    )


@pytest.mark.anyio
async def test_a_stopped_daemon_of_this_root_is_found_and_operator_required(
    processes: Processes, daemon_root: str
) -> None:
    daemon, (port,) = processes.start(fake_daemon_argv(daemon_root))
    os.kill(daemon.pid, signal.SIGSTOP)
    wait_until_stopped(daemon.pid)
    supervisor = SupervisorFacts(daemon_root=daemon_root, uid=os.getuid())

    records = {r.port: r for r in await observe_listeners(supervisor, health_timeout=0.3)}

    assert records[port].pid == daemon.pid
    assert (records[port].cleanup_class, records[port].skip_reason) == (
        "operator_required",
        "unresponsive",
    )


@pytest.mark.anyio
async def test_silent_listeners_are_probed_in_parallel(
    processes: Processes, daemon_root: str, tmp_path: Path
) -> None:
    free_now = [port for port in TEST_PORTS if port_is_free(port)]
    if len(free_now) < 4:
        pytest.skip(f"fewer than 4 free ports in {TEST_PORTS}: {free_now}")
    report = tmp_path / "most-open.txt"
    _, ports = processes.start(
        lambda chosen: [sys.executable, "-c", COUNTING_LISTENERS, str(report), *map(str, chosen)],
        ports=min(6, len(free_now)),
    )
    supervisor = SupervisorFacts(daemon_root=daemon_root, uid=os.getuid())

    # A generous timeout: the proof of parallelism is the overlap, not a duration.
    records = await observe_listeners(supervisor, health_timeout=3.0)

    assert set(ports) <= {record.port for record in records}
    # One after another, each probe would close its connection before the next opened one.
    assert int(report.read_text()) == len(ports)


@pytest.mark.anyio
async def test_a_daemon_without_marker_is_this_roots_only_by_the_kernels_word(
    processes: Processes, tmp_path: Path
) -> None:
    # Two HOMEs, each with a markerless daemon writing to its own root's log, as 3.1.x CLIs
    # leave them. Only the one whose HOME holds this root, and whose output is this root's
    # log (compared as files), is this root's.
    ours_home, their_home = tmp_path / "ada", tmp_path / "bob"
    for home in (ours_home, their_home):
        (home / ".spec-kitty").mkdir(parents=True)
    root = (ours_home / ".spec-kitty").resolve()
    ours, our_port = processes.start_with_output(
        first_daemon_argv("0123456789abcdef0123456789abcdef"),
        output=root / "sync-daemon.log",
        home=ours_home,
    )
    theirs, their_port = processes.start_with_output(
        first_daemon_argv("fedcba9876543210fedcba9876543210"),
        output=their_home / ".spec-kitty" / "sync-daemon.log",
        home=their_home,
    )
    supervisor = SupervisorFacts(daemon_root=str(root), uid=os.getuid())

    records = {record.port: record for record in await observe_listeners(supervisor)}

    if sys.platform.startswith("linux"):
        assert (records[our_port].pid, records[our_port].cleanup_class) == (ours.pid, "safe_auto")
        assert records[our_port].identity_source == "kernel_root"
        assert records[our_port].daemon_root == str(root)
    else:
        # No /proc: the kernel's facts are not read, so no daemon without marker is proven.
        assert records[our_port].skip_reason == "pre_marker"
    assert (records[their_port].pid, records[their_port].cleanup_class) == (
        theirs.pid,
        "operator_required",
    )
    assert records[their_port].skip_reason == "pre_marker"
    if sys.platform.startswith("linux"):
        assert "its HOME is not" in records[their_port].why

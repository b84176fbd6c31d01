"""The supervisor under a service manager, without a running systemd: a real notify socket, the
real ``systemd-socket-activate``, and real spec-kitty daemons."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    DaemonFleet,
    PortRange,
    SupervisorUnderTest,
    daemon_pids,
    read_identity,
    spec_kitty_python,
)
from spec_kitty_supervisor_client import SupervisorClient, socket_path_for_root

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


@pytest.fixture
def sup(fleet: DaemonFleet) -> Iterator[SupervisorUnderTest]:
    with SupervisorUnderTest(fleet.sandbox()) as harness:
        yield harness


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; records every message."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[tuple[float, str]] = []

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, message: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in self.messages:
                if line == message:
                    return at
            self.drain(0.1)
        raise AssertionError(f"no {message} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(sup: SupervisorUnderTest) -> Iterator[NotifySocket]:
    listener = NotifySocket(sup.sandbox.base)
    yield listener
    listener.close()


def _run_service(
    sup: SupervisorUnderTest, notify: NotifySocket, *, watchdog_usec: int | None = None
) -> subprocess.Popen[bytes]:
    extra = {"NOTIFY_SOCKET": str(notify.path)}
    if watchdog_usec is not None:
        extra["WATCHDOG_USEC"] = str(watchdog_usec)
    popen = subprocess.Popen(
        [*SUPERVISOR, "run", "--root", str(sup.root), "--service"],
        env=sup.env(extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sup.remember()
    return popen


def test_ready_watchdog_and_stopping_are_sent_to_the_notify_socket(
    sup: SupervisorUnderTest, notify: NotifySocket
) -> None:
    popen = _run_service(sup, notify, watchdog_usec=1_000_000)
    try:
        notify.wait_for("READY=1", 15)
        # READY=1 means it serves: a client is answered at once.
        assert sup.cli("status").returncode == 0
        notify.drain(4.0)
        pings = [at for at, line in notify.messages if line == "WATCHDOG=1"]
        # Half of WATCHDOG_USEC: one ping every 0.5 s, so 4 s hold about eight.
        assert 5 <= len(pings) <= 11, pings
        assert any(line.startswith("STATUS=owns 0 sync daemons") for _, line in notify.messages)
        popen.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 10)
        assert popen.wait(timeout=10) == 0
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def test_daemons_do_not_inherit_the_service_managers_variables(
    sup: SupervisorUnderTest, notify: NotifySocket
) -> None:
    popen = _run_service(sup, notify, watchdog_usec=10_000_000)
    try:
        notify.wait_for("READY=1", 15)
        daemon = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))["daemon"]
        environ = Path(f"/proc/{daemon['pid']}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"}
        assert "SPEC_KITTY_HOME" in names
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=15)


def test_a_service_started_supervisor_takes_over_from_an_auto_started_one(
    sup: SupervisorUnderTest, notify: NotifySocket
) -> None:
    daemon = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))["daemon"]
    (auto_started,) = sup.pids()
    popen = _run_service(sup, notify)
    try:
        notify.wait_for("READY=1", 30)
        assert popen.poll() is None  # it did not exit early (that would fail a notify unit)
        deadline = time.monotonic() + 10
        while read_identity(auto_started) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_identity(auto_started) is None
        assert sup.pids() == [popen.pid]
        status = sup.cli_json("status")
        assert status["supervisor"]["pid"] == popen.pid
        assert [d["pid"] for d in status["daemons"]] == [daemon["pid"]]
        assert daemon_pids(sup.root) == [daemon["pid"]]
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=15)


@contextmanager
def socket_activated(sup: SupervisorUnderTest) -> Iterator[subprocess.Popen[bytes]]:
    """``run --service`` behind the real ``systemd-socket-activate`` on the root's socket path.

    It execs the service on the first connection, so the service's pid is the manager's.
    """
    assert SOCKET_ACTIVATE is not None, "CI must install systemd-socket-activate"
    path = socket_path_for_root(sup.root)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = sup.env()
    manager = subprocess.Popen(
        [
            SOCKET_ACTIVATE,
            f"--listen={path}",
            "--fdname=control",
            # It gives its children only the variables it is told to.
            *[f"--setenv={name}" for name in env],
            *SUPERVISOR,
            "run",
            "--root",
            str(sup.root),
            "--service",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield manager
    finally:
        if manager.poll() is None:
            manager.send_signal(signal.SIGTERM)
        try:
            manager.wait(timeout=15)
        finally:
            if manager.poll() is None:
                manager.kill()
            manager.communicate()


@pytest.mark.skipif(
    SOCKET_ACTIVATE is None and os.environ.get("CI") != "true",
    reason="systemd-socket-activate is not installed (Debian package: systemd)",
)
def test_a_socket_activated_supervisor_serves_and_spawns_and_no_second_one_starts(
    sup: SupervisorUnderTest,
) -> None:
    path = socket_path_for_root(sup.root)
    with socket_activated(sup) as manager:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert manager.poll() is None, manager.communicate()
            assert time.monotonic() < deadline, "systemd-socket-activate never listened"
            time.sleep(0.02)
        # The first connection starts the supervisor on the passed socket.
        with SupervisorClient(sup.root, autostart=False) as client:
            health = client.health()
            assert health.pid == manager.pid
            answer = client.ensure(str(spec_kitty_python("3.2.4")), "3.2.4", env=sup.env())
        assert answer.action == "spawned"
        # A second client finds the socket answering and starts nothing.
        second = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))
        assert second["action"] == "reused"
        sup.remember()
        assert sup.pids() == [manager.pid]
        assert daemon_pids(sup.root) == [answer.daemon.pid]


@pytest.mark.skipif(
    SOCKET_ACTIVATE is None and os.environ.get("CI") != "true",
    reason="systemd-socket-activate is not installed (Debian package: systemd)",
)
def test_enabling_the_socket_while_an_auto_started_supervisor_runs_hands_the_root_over(
    sup: SupervisorUnderTest,
) -> None:
    """systemd unlinks a socket path in use and binds its own; the old supervisor must fence
    itself out (it no longer owns its path) so the activated one can take the lock."""
    daemon = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))["daemon"]
    (auto_started,) = sup.pids()
    path = socket_path_for_root(sup.root)
    old_inode = path.stat().st_ino
    with socket_activated(sup) as manager:
        deadline = time.monotonic() + 10
        while not path.exists() or path.stat().st_ino == old_inode:
            assert time.monotonic() < deadline, "systemd-socket-activate never took the path"
            time.sleep(0.02)
        with SupervisorClient(sup.root, autostart=False, timeout=60) as client:
            health = client.health()  # waits in the backlog while the root changes hands
        assert health.pid == manager.pid
        # The old one released the root before its process ended; it ends right after.
        deadline = time.monotonic() + 5
        while read_identity(auto_started) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_identity(auto_started) is None
        status = sup.cli_json("status")
        assert [d["pid"] for d in status["daemons"]] == [daemon["pid"]]
        assert daemon_pids(sup.root) == [daemon["pid"]]
        sup.remember()
        assert sup.pids() == [manager.pid]

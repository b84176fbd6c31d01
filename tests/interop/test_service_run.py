"""The supervisor under a service manager, without a running systemd: a real notify socket, the
real ``systemd-socket-activate``, and real spec-kitty daemons."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    PortRange,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    read_identity,
    spec_kitty_python,
)
from spec_kitty_supervisor_client import SupervisorClient, socket_path_for_root

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; records every message."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def drain(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` (a bounded read, not a pause)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            self.messages.extend(data.decode().splitlines())
            self.sock.settimeout(0)  # then take only what is already queued

    def wait_for(self, message: str, count: int = 1) -> None:
        def arrived() -> bool:
            self.drain(0.1)
            return self.messages.count(message) >= count

        eventually(arrived, what=f"{count} x {message} on the notify socket")

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
        notify.wait_for("READY=1")
        # READY=1 means it serves: a client is answered at once.
        assert sup.cli("status").returncode == 0
        # Pings keep coming while it serves (their interval, half of WATCHDOG_USEC, is a unit
        # test of _sd_notify: a busy machine must not make a rate fail here).
        notify.wait_for("WATCHDOG=1", count=3)
        assert any(line.startswith("STATUS=owns 0 sync daemons") for line in notify.messages)
        popen.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
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
        notify.wait_for("READY=1")
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
        notify.wait_for("READY=1")
        assert popen.poll() is None  # it did not exit early (that would fail a notify unit)
        eventually(lambda: read_identity(auto_started) is None, what="the auto-started one to exit")
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

        def listening() -> bool:
            assert manager.poll() is None, manager.communicate()
            return path.exists()

        eventually(listening, what="systemd-socket-activate to listen")
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
        eventually(
            lambda: path.exists() and path.stat().st_ino != old_inode,
            what="systemd-socket-activate to take the path",
        )
        with SupervisorClient(sup.root, autostart=False, timeout=60) as client:
            health = client.health()  # waits in the backlog while the root changes hands
        assert health.pid == manager.pid
        # The old one released the root before its process ended; it ends right after.
        eventually(lambda: read_identity(auto_started) is None, what="the old one to exit")
        status = sup.cli_json("status")
        assert [d["pid"] for d in status["daemons"]] == [daemon["pid"]]
        assert daemon_pids(sup.root) == [daemon["pid"]]
        sup.remember()
        assert sup.pids() == [manager.pid]

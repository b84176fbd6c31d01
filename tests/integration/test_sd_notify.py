"""The service manager protocol against real sockets: sd_notify datagrams and socket activation.

Notifications go to an AF_UNIX datagram socket the test binds and reads, as systemd's would.
Socket activation runs a small program under the real ``systemd-socket-activate``, which passes
it a listening socket exactly as a ``.socket`` unit does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sks_harness import eventually
from spec_kitty_supervisor._sd_notify import Notifier

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None and os.environ.get("CI") != "true",
    reason="systemd-socket-activate is not installed (Debian/Ubuntu package: systemd)",
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sks-") as name:
        yield Path(name)


@pytest.fixture
def manager_socket(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket, and its address."""
    path = short_dir / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    yield receiver, str(path)
    receiver.close()


def received(receiver: socket.socket) -> bytes:
    return receiver.recv(4096)


# sd_notify --------------------------------------------------------------------------------------


def test_ready_is_sent_as_a_datagram_to_notify_socket(
    manager_socket: tuple[socket.socket, str],
) -> None:
    receiver, address = manager_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})

    assert notifier.ready() is True
    assert received(receiver) == b"READY=1"
    notifier.close()


def test_watchdog_stopping_and_status_each_send_one_message(
    manager_socket: tuple[socket.socket, str],
) -> None:
    receiver, address = manager_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})

    notifier.watchdog()
    notifier.status("2 daemons\nhealthy")
    notifier.stopping()

    assert [received(receiver) for _ in range(3)] == [
        b"WATCHDOG=1",
        b"STATUS=2 daemons healthy",
        b"STOPPING=1",
    ]
    notifier.close()


def test_abstract_notify_socket_is_reached_by_its_at_name() -> None:
    name = f"sks-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(f"\0{name}")
    receiver.settimeout(5)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})

    assert notifier.ready() is True
    assert received(receiver) == b"READY=1"
    notifier.close()
    receiver.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PASSCRED is Linux only")
def test_notifications_come_from_this_process_as_notify_access_main_requires(
    manager_socket: tuple[socket.socket, str],
) -> None:
    receiver, address = manager_socket
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})

    notifier.ready()
    message, ancillary, _flags, _addr = receiver.recvmsg(4096, socket.CMSG_SPACE(12))

    assert message == b"READY=1"
    ((level, kind, data),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, uid, _gid = struct.unpack("iII", data[:12])
    assert (pid, uid) == (os.getpid(), os.getuid())
    notifier.close()


def test_a_vanished_notify_socket_is_logged_and_ignored_then_recovers(short_dir: Path) -> None:
    address = str(short_dir / "notify")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})

    assert notifier.watchdog() is False  # nothing listens: no exception, just False
    assert notifier.watchdog() is False

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(5)
    assert notifier.watchdog() is True
    assert received(receiver) == b"WATCHDOG=1"
    notifier.close()
    receiver.close()


# Socket activation ------------------------------------------------------------------------------

ACTIVATED_PROGRAM = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys
    from spec_kitty_supervisor._sd_notify import SocketActivationError, listen_fds_from_env

    report_path = sys.argv[1]
    report = {"pid": os.getpid()}
    try:
        activated = listen_fds_from_env()
    except SocketActivationError as exc:
        report["error"] = str(exc)
        activated = []
    report["names"] = [a.name for a in activated]
    report["fds"] = [a.sock.fileno() for a in activated]
    report["kinds"] = [[a.sock.family == socket.AF_UNIX, a.sock.type == socket.SOCK_STREAM]
                       for a in activated]
    report["inheritable"] = [os.get_inheritable(a.sock.fileno()) for a in activated]
    report["listen_env_left"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    # A child that is handed every descriptor (close_fds=False) must still not get the socket.
    probe = "import os, sys; print(any(k.startswith('LISTEN_') for k in os.environ)); " \\
            "print(os.path.exists('/proc/self/fd/3'))"
    out = subprocess.run([sys.executable, "-c", probe], close_fds=False, capture_output=True,
                         text=True, check=True).stdout.split()
    report["grandchild_sees_listen_env"] = out[0] == "True"
    report["grandchild_has_fd_3"] = out[1] == "True"
    if activated:
        connection, _ = activated[0].sock.accept()
        connection.sendall(b"accepted by the activated service")
        connection.close()
    with open(report_path, "w") as handle:
        json.dump(report, handle)
    """
)


def run_activated(
    short_dir: Path, *extra_args: str, trigger: str = "stream"
) -> tuple[dict[str, Any], bytes]:
    """Run ACTIVATED_PROGRAM under systemd-socket-activate, trigger it, return its report."""
    assert SOCKET_ACTIVATE is not None
    program = short_dir / "activated.py"
    program.write_text(ACTIVATED_PROGRAM)
    report_path = short_dir / "report.json"
    control = short_dir / "control.sock"
    service = [sys.executable, str(program), str(report_path)]
    manager = subprocess.Popen(
        [SOCKET_ACTIVATE, "--listen", str(control), *extra_args, *service],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        def listening() -> bool:
            assert manager.poll() is None, manager.communicate()
            return control.exists()

        eventually(listening, what="systemd-socket-activate to listen")
        reply = b""
        if trigger == "stream":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(10)
                client.connect(str(control))
                reply = client.recv(4096)
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.sendto(b"wake up", str(control))
        manager.wait(timeout=10)
    finally:
        if manager.poll() is None:
            manager.kill()
        manager.communicate()
    assert manager.returncode == 0
    return json.loads(report_path.read_text()), reply


@needs_socket_activate
def test_socket_activated_service_gets_the_listening_socket_as_fd_3(short_dir: Path) -> None:
    report, reply = run_activated(short_dir, "--fdname=control")

    assert report["names"] == ["control"]
    assert report["fds"] == [3]
    assert report["kinds"] == [[True, True]]
    assert reply == b"accepted by the activated service"


@needs_socket_activate
def test_activated_socket_and_listen_variables_are_not_inherited(short_dir: Path) -> None:
    report, _reply = run_activated(short_dir, "--fdname=control")

    assert report["listen_env_left"] == []
    assert report["inheritable"] == [False]
    assert report["grandchild_sees_listen_env"] is False
    assert report["grandchild_has_fd_3"] is False


@needs_socket_activate
def test_unnamed_activated_socket_is_still_returned(short_dir: Path) -> None:
    report, reply = run_activated(short_dir)

    assert report["fds"] == [3]
    assert len(report["names"]) == 1
    assert reply == b"accepted by the activated service"


@needs_socket_activate
def test_a_datagram_socket_is_refused_as_a_configuration_error(short_dir: Path) -> None:
    report, _reply = run_activated(short_dir, "--datagram", trigger="datagram")

    assert "not a listening AF_UNIX SOCK_STREAM socket" in report["error"]
    assert "ListenStream=" in report["error"]
    assert report["listen_env_left"] == []


PASSED_BY_HAND = textwrap.dedent(
    """
    import os, socket, sys
    from spec_kitty_supervisor._sd_notify import SocketActivationError, listen_fds_from_env

    kind = sys.argv[1]
    if kind == "pipe":
        read_end, _write_end = os.pipe()
        os.dup2(read_end, 3)
    else:  # a stream socket that was never put in the listening state
        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.dup2(unbound.fileno(), 3)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
    try:
        listen_fds_from_env()
    except SocketActivationError as exc:
        print(exc)
    """
)


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [("pipe", "is not a socket"), ("idle-socket", "listening=False")],
)
def test_a_passed_descriptor_that_is_not_a_listening_socket_is_refused(
    kind: str, complaint: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PASSED_BY_HAND, kind],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert "file descriptor 3" in result.stdout
    assert complaint in result.stdout

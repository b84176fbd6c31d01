"""Issue 8 on real processes: a supervisor keeps serving after running out of descriptors, a
supervisor that cannot serve gives the root up (its daemon is re-adopted), and no file at
``state.json`` can hang or stop a start-up.

Descriptor exhaustion is real in both cases: a supervisor started with a soft and hard limit
of 256 and flooded with idle clients, and a supervisor whose limit is lowered under it with
``prlimit(2)`` (as an operator or a resource manager can), so that no new descriptor can
ever be opened again.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    PortRange,
    Sandbox,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    spec_kitty_python,
)
from spec_kitty_supervisor_client import SupervisorClient, socket_path_for_root

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


@pytest.fixture
def sup(sandbox: Sandbox) -> Iterator[SupervisorUnderTest]:
    with SupervisorUnderTest(sandbox) as harness:
        yield harness


def _ensure(sup: SupervisorUnderTest, version: str = "3.2.4") -> dict[str, object]:
    answer: dict[str, object] = sup.cli_json("ensure", "--python", str(spec_kitty_python(version)))
    return answer


def _status_pid(sup: SupervisorUnderTest) -> int | None:
    try:
        with SupervisorClient(sup.root, autostart=False, timeout=5) as client:
            status = client.status()
    except Exception:
        return None
    assert status.supervisor is not None
    return status.supervisor.pid


def _flood(path: Path, count: int) -> list[socket.socket]:
    """Open ``count`` idle connections, waiting for room whenever the backlog is full."""
    held: list[socket.socket] = []

    def connect_while_there_is_room() -> bool:
        while len(held) < count:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            try:
                client.connect(str(path))
            except BlockingIOError:
                client.close()
                return False  # the backlog is full until the supervisor accepts more
            held.append(client)
        return True

    eventually(connect_while_there_is_room, what=f"{count} connections held", timeout=60)
    return held


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room in this test process for a few hundred sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048 if hard == resource.RLIM_INFINITY else min(hard, 2048)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_peer(client: socket.socket) -> bool:
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except OSError:
        return True


def test_a_supervisor_flooded_past_its_descriptor_limit_keeps_answering(
    sup: SupervisorUnderTest, many_descriptors: None
) -> None:
    # A soft and hard limit of 256, as an auto-started supervisor on macOS may have: at most
    # 256 - 64 = 192 client connections; the longest idle makes room for a newcomer.
    pid = sup.start(nofile=(256, 256), extra_env={"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "30"})
    assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (256, 256)
    held = _flood(socket_path_for_root(sup.root), 300)
    try:
        # Answered while 300 idle clients hold connections, by the same supervisor.
        assert eventually(lambda: _status_pid(sup), what="status answered", timeout=60) == pid
        eventually(
            lambda: sum(_closed_by_peer(client) for client in held) >= 300 - 192,
            what="the longest-idle connections closed to stay within 192",
        )
        assert psutil.Process(pid).num_fds() < 256
        # The flood lasts a few seconds: a duration of the scenario, nothing waits on it.
        time.sleep(3)
        assert _status_pid(sup) == pid
    finally:
        for client in held:
            client.close()
    assert _ensure(sup)["action"] == "spawned"
    assert sup.cli_json("status")["supervisor"]["pid"] == pid
    assert not sup.log_events("accept_failed")  # the bound kept it from running out


def test_the_accept_loop_survives_running_out_of_descriptors(
    sup: SupervisorUnderTest, many_descriptors: None
) -> None:
    # A long heartbeat: this test is about the accept loop, not about giving up the root.
    pid = sup.start(extra_env={"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "30"})
    process = psutil.Process(pid)
    soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
    # Below the connection bound (512): the kernel refuses descriptors before the bound does.
    process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds() + 40, hard))
    held = _flood(socket_path_for_root(sup.root), 100)
    try:
        failed = eventually(lambda: sup.log_events("accept_failed"), what="accept_failed logged")
        assert failed[0]["error"] == "EMFILE"
        assert failed[0]["resource_exhausted"] is True
        time.sleep(3)  # the flood lasts a few seconds: a duration, nothing waits on it
        assert psutil.pid_exists(pid)
    finally:
        for client in held:
            client.close()
    # Served again by itself once the clients let go, the limit still lowered.
    assert eventually(lambda: _status_pid(sup), what="status answered", timeout=60) == pid
    assert sup.log_events("accept_recovered")
    assert len(failed) == len(sup.log_events("accept_failed"))  # logged once, not per attempt
    process.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    assert _ensure(sup)["action"] == "spawned"


def test_status_answers_with_500_idle_kept_alive_connections_held(
    sup: SupervisorUnderTest, many_descriptors: None
) -> None:
    pid = sup.start()
    path = socket_path_for_root(sup.root)
    held = []
    try:
        for _ in range(500):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(30)
            held.append(client)
            client.connect(str(path))
            client.sendall(b"GET /v1/health HTTP/1.1\r\nHost: s\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        assert _status_pid(sup) == pid
        # All 500 were kept: below the bound, nothing is closed to make room.
        for client in held:
            client.setblocking(False)
        assert not any(_closed_by_peer(client) for client in held)
    finally:
        for client in held:
            client.close()


def test_an_auto_started_supervisor_raises_its_limit_and_its_daemon_gets_the_clients_back(
    sup: SupervisorUnderTest,
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip("needs a hard descriptor limit of 8192")
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 8192))\n"
        "from spec_kitty_supervisor_client import ensure_sync_daemon\n"
        "print(ensure_sync_daemon(python=sys.argv[1], version='3.2.4', root=sys.argv[2])"
        ".daemon.pid)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(spec_kitty_python("3.2.4")), str(sup.root)],
        env=sup.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    sup.remember()
    assert result.returncode == 0, result.stderr
    daemon_pid = int(result.stdout)
    (supervisor_pid,) = sup.pids()
    assert psutil.Process(supervisor_pid).rlimit(psutil.RLIMIT_NOFILE) == (4096, 8192)
    assert psutil.Process(daemon_pid).rlimit(psutil.RLIMIT_NOFILE) == (256, 8192)
    raised = sup.log_events("fd_limit_raised")
    assert raised[0]["inherited_soft"] == 256


def test_a_supervisor_that_cannot_serve_gives_up_the_root_and_its_daemon_is_readopted(
    sup: SupervisorUnderTest,
) -> None:
    pid = sup.start()
    daemon = _ensure(sup)["daemon"]
    assert isinstance(daemon, dict)
    # From now on the supervisor can open no descriptor: no accept, no connection.
    psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE, (1, 1))
    assert sup.wait_exit(pid, timeout=60) == 1
    failed = sup.log_events("serving_failed")
    assert "3 self-probes" in failed[0]["reason"]
    assert "EMFILE" in failed[0]["reason"]
    with open(sup.root / "supervisor" / "supervisor.lock", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert daemon_pids(sup.root) == [daemon["pid"]]
    # A client finds no supervisor and starts one, which keeps the same daemon.
    script = (
        "import sys\n"
        "from spec_kitty_supervisor_client import ensure_sync_daemon\n"
        "print(ensure_sync_daemon(python=sys.argv[1], version='3.2.4', root=sys.argv[2])"
        ".daemon.pid)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(spec_kitty_python("3.2.4")), str(sup.root)],
        env=sup.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    sup.remember()
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == daemon["pid"]
    (successor,) = sup.pids()
    assert successor != pid
    assert daemon_pids(sup.root) == [daemon["pid"]]


def test_no_watchdog_ping_follows_a_failed_self_probe(sup: SupervisorUnderTest) -> None:
    notify_path = sup.sandbox.base / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    popen = subprocess.Popen(
        [*SUPERVISOR, "run", "--root", str(sup.root), "--service"],
        env=sup.env({"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sup.remember()
    messages: list[str] = []

    def receive(block: bool) -> bool:
        notify.settimeout(0.5 if block else 0)
        try:
            data = notify.recv(4096)
        except (TimeoutError, BlockingIOError):
            return False
        messages.extend(data.decode().splitlines())
        return True

    try:

        def two_pings() -> bool:
            receive(block=True)
            return messages.count("WATCHDOG=1") >= 2

        eventually(two_pings, what="two watchdog pings")
        psutil.Process(popen.pid).rlimit(psutil.RLIMIT_NOFILE, (1, 1))
        while receive(block=False):
            pass
        before = len(messages)
        assert popen.wait(timeout=60) == 1
        while receive(block=False):
            pass
        after = messages[before:]
        # A probe that had its connection before the limit fell may still succeed once.
        assert after.count("WATCHDOG=1") <= 1, after
        assert "STOPPING=1" in after
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGKILL)
            popen.wait()
        notify.close()


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink_to_a_fifo(path: Path) -> None:
    target = path.with_name("elsewhere.fifo")
    os.mkfifo(target, 0o600)
    path.symlink_to(target)


def _deeply_nested(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    ("make", "is_kind", "aside"),
    [
        (_fifo, stat.S_ISFIFO, "refused"),
        (_directory, stat.S_ISDIR, "refused"),
        (_symlink_to_a_fifo, stat.S_ISLNK, "refused"),
        (_deeply_nested, stat.S_ISREG, "corrupt"),
    ],
    ids=["fifo", "directory", "symlink", "deeply-nested"],
)
def test_a_state_json_that_is_not_a_file_is_moved_aside_and_the_daemon_kept(
    sup: SupervisorUnderTest,
    make: Callable[[Path], None],
    is_kind: Callable[[int], bool],
    aside: str,
) -> None:
    daemon = _ensure(sup)["daemon"]
    assert isinstance(daemon, dict)
    (first,) = sup.pids()
    os.kill(first, signal.SIGKILL)  # no chance to rewrite its journal on the way out
    eventually(lambda: not psutil.pid_exists(first), what="the killed supervisor gone")
    state = sup.root / "supervisor" / "state.json"
    state.unlink()
    make(state)
    sup.start()
    status = sup.cli_json("status")
    current = [d for d in status["daemons"] if d["role"] == "current"]
    assert [d["pid"] for d in current] == [daemon["pid"]]
    moved = sup.root / "supervisor" / f"state.json.{aside}-0"
    assert is_kind(moved.lstat().st_mode)
    assert stat.S_ISREG(state.lstat().st_mode)  # the journal is written afresh
    corrupt = [e for e in sup.cli_json("events")["events"] if e["kind"] == "state_corrupt"]
    assert f"moved to {moved}" in corrupt[-1]["reason"]
    again = _ensure(sup)
    assert again["daemon"]["pid"] == daemon["pid"]
    assert daemon_pids(sup.root) == [daemon["pid"]]
    assert json.loads(state.read_text())["daemons"][0]["pid"] == daemon["pid"]

"""The one place that signals: it re-checks identity, uid and the family port every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sks_harness import DEFAULT_TIMEOUT, eventually
from spec_kitty_supervisor import _signals
from spec_kitty_supervisor._identity import ProcessIdentity, read_identity
from spec_kitty_supervisor._signals import (
    ProcessGone,
    SignalRefused,
    SignalTarget,
    send_signal,
    stop_gracefully,
    wait_gone,
)

FAMILY_PORT = 9449
SUPERVISOR_SOURCES = Path(__file__).resolve().parents[2] / "supervisor"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def _identity(process: subprocess.Popen[bytes]) -> ProcessIdentity:
    identity = read_identity(process.pid)
    assert identity is not None
    return identity


@pytest.mark.parametrize("port", [9399, 9450, 9300, 8080])
def test_a_process_not_tied_to_a_family_port_is_never_signalled(
    sleeper: subprocess.Popen[bytes], port: int
) -> None:
    with pytest.raises(SignalRefused, match="outside the sync family range"):
        send_signal(SignalTarget(_identity(sleeper), port), signal.SIGTERM)
    assert sleeper.poll() is None


def test_a_reused_pid_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    recorded = ProcessIdentity(pid=sleeper.pid, start="another-boot:1", uid=os.getuid())
    with pytest.raises(SignalRefused, match="now belongs to another process"):
        send_signal(SignalTarget(recorded, FAMILY_PORT), signal.SIGKILL)
    assert sleeper.poll() is None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start another user's process")
def test_another_users_process_is_never_signalled() -> None:
    stranger = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"]
    )
    try:
        deadline_identity = None
        for _ in range(100):
            deadline_identity = read_identity(stranger.pid)
            if deadline_identity is not None and deadline_identity.uid == 65534:
                break
            subprocess.run(["sleep", "0.02"], check=True)
        assert deadline_identity is not None
        assert deadline_identity.uid == 65534
        with pytest.raises(SignalRefused, match="uid 65534"):
            send_signal(SignalTarget(deadline_identity, FAMILY_PORT), signal.SIGKILL)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_an_exited_process_is_gone_not_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    identity = _identity(sleeper)
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(ProcessGone):
        send_signal(SignalTarget(identity, FAMILY_PORT), signal.SIGTERM)


@pytest.mark.anyio
async def test_without_a_token_the_stop_starts_with_sigterm(
    sleeper: subprocess.Popen[bytes],
) -> None:
    path = await stop_gracefully(SignalTarget(_identity(sleeper), FAMILY_PORT), None, grace=30)
    assert path == "terminate"
    assert sleeper.wait() == -signal.SIGTERM


@pytest.mark.anyio
async def test_a_process_that_dies_of_sigterm_before_it_is_continued_was_terminated(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race a busy machine loses: the SIGTERM ends the process before the SIGCONT that
    # follows it finds it. That is the SIGTERM's success, not a process gone before the stop.
    real_send = _signals.send_signal

    def send_then_let_it_die(target: SignalTarget, signum: int) -> None:
        real_send(target, signum)
        if signum == signal.SIGTERM:
            eventually(lambda: read_identity(sleeper.pid) is None, what="sleep to die")

    monkeypatch.setattr(_signals, "send_signal", send_then_let_it_die)
    path = await stop_gracefully(SignalTarget(_identity(sleeper), FAMILY_PORT), None, grace=30)
    assert path == "terminate"
    assert sleeper.wait() == -signal.SIGTERM


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the platform has no pidfds")
def test_the_pidfd_is_opened_before_the_identity_is_checked_and_carries_the_signal(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = _identity(sleeper)
    calls: list[str] = []
    real_open, real_read = os.pidfd_open, _signals.read_identity

    def pidfd_open(pid: int, flags: int = 0) -> int:
        calls.append("pidfd_open")
        return real_open(pid, flags)

    def read(pid: int) -> ProcessIdentity | None:
        calls.append("read_identity")
        return real_read(pid)

    def kill_by_pid(pid: int, signum: int) -> None:
        calls.append("os.kill")

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    monkeypatch.setattr(_signals, "read_identity", read)
    monkeypatch.setattr(os, "kill", kill_by_pid)
    send_signal(SignalTarget(identity, FAMILY_PORT), signal.SIGTERM)
    monkeypatch.undo()
    assert calls == ["pidfd_open", "read_identity"]
    assert sleeper.wait() == -signal.SIGTERM


@pytest.mark.anyio
async def test_a_stopped_process_is_continued_so_sigterm_ends_it(
    sleeper: subprocess.Popen[bytes],
) -> None:
    os.kill(sleeper.pid, signal.SIGSTOP)
    path = await stop_gracefully(SignalTarget(_identity(sleeper), FAMILY_PORT), None, grace=3)
    assert path == "terminate"


STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ok', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def stubborn() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.anyio
async def test_a_process_that_ignores_sigterm_gets_sigkill_after_the_grace(
    stubborn: subprocess.Popen[bytes],
) -> None:
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ok\n"  # the handler is in place
    identity = read_identity(stubborn.pid)
    assert identity is not None
    path = await stop_gracefully(SignalTarget(identity, FAMILY_PORT), None, grace=0.5)
    assert path == "kill"
    assert stubborn.wait(timeout=1) == -signal.SIGKILL


@pytest.mark.anyio
async def test_a_process_gone_before_anything_is_already_gone(
    sleeper: subprocess.Popen[bytes],
) -> None:
    identity = _identity(sleeper)
    sleeper.kill()
    sleeper.wait()

    path = await stop_gracefully(SignalTarget(identity, FAMILY_PORT), None, grace=3)

    assert path == "already_gone"


# --------------------------------------------------------------------------------------------
# Waiting for a death: the kernel's word where there are pidfds


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the platform has no pidfds")
@pytest.mark.anyio
async def test_a_death_is_heard_on_the_pidfd_and_the_pidfd_is_closed_after(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = _identity(sleeper)
    waited_on: list[int] = []
    real_wait = _signals.anyio.wait_readable

    async def spy(fd: int) -> None:
        waited_on.append(fd)
        sleeper.kill()  # dies (a zombie: nobody reaps it yet) while the wait is under way
        await real_wait(fd)

    monkeypatch.setattr(_signals.anyio, "wait_readable", spy)
    before = _open_fds()

    assert await wait_gone(identity, timeout=DEFAULT_TIMEOUT)

    assert len(waited_on) == 1
    assert _open_fds() == before  # the pidfd is closed again
    assert read_identity(sleeper.pid) is None


@pytest.mark.anyio
async def test_a_pid_that_now_names_another_process_is_gone_without_a_wait(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    meant = ProcessIdentity(pid=sleeper.pid, start="another-boot:1", uid=os.getuid())
    waits: list[int] = []

    async def no_wait(fd: int) -> None:
        waits.append(fd)

    monkeypatch.setattr(_signals.anyio, "wait_readable", no_wait)
    assert await wait_gone(meant, timeout=DEFAULT_TIMEOUT)
    assert waits == []  # the live stranger's pidfd is never waited on
    assert sleeper.poll() is None


@pytest.mark.anyio
async def test_a_live_process_is_not_gone_when_the_wait_runs_out(
    sleeper: subprocess.Popen[bytes],
) -> None:
    assert not await wait_gone(_identity(sleeper), timeout=0.05)
    assert sleeper.poll() is None


@pytest.mark.anyio
async def test_without_pidfds_a_death_is_seen_by_looking(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_signals, "_open_pidfd", lambda pid: None)
    identity = _identity(sleeper)
    looks = 0
    real_is_gone = _signals.is_gone

    def looking(seen: ProcessIdentity) -> bool:
        nonlocal looks
        looks += 1
        if looks == 2:
            sleeper.kill()
            sleeper.wait()
        return real_is_gone(seen)

    monkeypatch.setattr(_signals, "is_gone", looking)
    assert await wait_gone(identity, timeout=DEFAULT_TIMEOUT)
    assert looks == 2  # alive at the first look, gone at the next

"""The one place that signals a process, and the graceful stop sequence built on it.

Every signal the supervisor sends goes through :func:`send_signal`, which re-checks the target
right before the syscall: the same pid with the same process start, our own uid, and a port
inside the sync family range. A pidfd taken before that check carries the signal, so a pid
reused in between is never hit. A process that fails any check is not signalled; the caller
is told why. No other module signals (``tests/unit/test_walls.py`` checks every file).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

import anyio

from spec_kitty_supervisor_client._terms import FAMILY_PORT_RANGE, StopPath, in_family_range

from ._identity import ProcessIdentity, read_identity
from ._probe import post_shutdown

__all__ = [
    "ProcessGone",
    "SignalRefused",
    "SignalTarget",
    "check_family_boundary",
    "is_gone",
    "send_signal",
    "stop_gracefully",
    "wait_gone",
]


class SignalRefused(PermissionError):
    """Raised when a target fails the identity, uid or family-range check at signal time."""


class ProcessGone(ProcessLookupError):
    """Raised when the target has already exited (or is a zombie awaiting its reaper)."""


@dataclass(frozen=True)
class SignalTarget:
    """A process we may signal, and the port that ties it to the sync family.

    ``port`` is the recorded port for a daemon we spawned (it may not listen yet, or any
    more) and the listening port for anything else.
    """

    identity: ProcessIdentity
    port: int
    pidfd: int | None = None


def check_family_boundary(port: int) -> None:
    """Refuse (:class:`SignalRefused`) to act on a process not tied to a sync family port."""
    if not in_family_range(port):
        raise SignalRefused(
            f"port {port} is outside the sync family range (half-open {FAMILY_PORT_RANGE})"
        )


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` where the platform has them; None elsewhere."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessGone(f"pid {pid} has exited") from None
    except OSError:
        return None  # a kernel without pidfds (ENOSYS) or a sandbox that forbids them


def send_signal(target: SignalTarget, signum: int) -> None:
    """Signal ``target`` after proving, right now, that it is still the process we mean.

    The pidfd (held since spawn, or opened here) is taken *before* the identity is re-read:
    when the identity then matches, the fd names that very process, and the signal cannot
    reach a process that reused the pid between the check and the syscall. Only where the
    platform has no pidfds does the signal go by pid.
    """
    check_family_boundary(target.port)
    pid = target.identity.pid
    pidfd = target.pidfd if target.pidfd is not None else _open_pidfd(pid)
    try:
        now = read_identity(pid)
        if now is None:
            raise ProcessGone(f"pid {pid} has exited")
        if not target.identity.same_process(now):
            raise SignalRefused(
                f"pid {pid} now belongs to another process "
                f"(started {now.start}, expected {target.identity.start})"
            )
        if now.uid != os.getuid():
            raise SignalRefused(f"pid {pid} belongs to uid {now.uid}, not to us")
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        raise ProcessGone(f"pid {pid} has exited") from None
    finally:
        if pidfd is not None and pidfd != target.pidfd:
            os.close(pidfd)


def is_gone(identity: ProcessIdentity) -> bool:
    return not identity.same_process(read_identity(identity.pid))


async def wait_gone(identity: ProcessIdentity, timeout: float) -> bool:
    """Wait until the process has exited, judged by pid and start, never by a closed port.

    Where the platform has pidfds the kernel says when: a pidfd turns readable once its
    process has exited (a sweep asks the next orphan the moment one is gone). Elsewhere the
    process is looked at every 20 ms.
    """
    try:
        pidfd = _open_pidfd(identity.pid)
    except ProcessGone:
        return True
    try:
        with anyio.move_on_after(timeout):
            # Opened first, then checked: when the process is still the one we mean, the
            # pidfd names it, and a pid reused later cannot answer for it.
            if pidfd is not None and not is_gone(identity):
                await anyio.wait_readable(pidfd)
            while not is_gone(identity):
                await anyio.sleep(0.02)
            return True
        return is_gone(identity)
    finally:
        if pidfd is not None:
            os.close(pidfd)


async def stop_gracefully(
    target: SignalTarget,
    token: str | None,
    grace: float,
    http_timeout: float = 1.0,
) -> StopPath:
    """Token shutdown, then SIGTERM, then SIGKILL, each with a bounded wait.

    Returns the step that ended the process. Raises :class:`SignalRefused` when the target
    stops being provably ours part-way (it is then left alone).
    """
    # Even the token shutdown is an act on the process: refused outside the family, too.
    check_family_boundary(target.port)
    if is_gone(target.identity):
        return "already_gone"
    if (
        token is not None
        and await post_shutdown(target.port, token, http_timeout)
        and await wait_gone(target.identity, grace)
    ):
        return "http_shutdown"
    try:
        send_signal(target, signal.SIGTERM)
    except ProcessGone:
        return "already_gone"
    # A stopped (SIGSTOP) process holds SIGTERM pending until it runs again. A process that
    # has already died of the SIGTERM needs no continuing: that is the SIGTERM's success,
    # not a process that was gone before we acted.
    with contextlib.suppress(ProcessGone):
        send_signal(target, signal.SIGCONT)
    if await wait_gone(target.identity, grace):
        return "terminate"
    try:
        send_signal(target, signal.SIGKILL)
    except ProcessGone:
        return "terminate"  # it died of the SIGTERM right after the grace ran out
    if await wait_gone(target.identity, grace):
        return "kill"
    raise TimeoutError(f"pid {target.identity.pid} survived SIGKILL for {grace} s")

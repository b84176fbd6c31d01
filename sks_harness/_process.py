"""Who a pid is, and the one way the harness signals a process.

Written apart from the supervisor's own identity and signalling code on purpose: a harness
that shared the code under test could not catch its bugs. The facts are the kernel's. On Linux
a process is its pid plus its start in clock ticks since boot (field 22 of ``/proc/PID/stat``)
and the boot id, compared exactly: the number survives clock changes, and a pid reused by a
later process has a later start. Elsewhere psutil's start time is the best the OS offers.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ._errors import HarnessError

__all__ = ["ProcessIdentity", "is_alive", "read_identity", "signal_if_same"]


@dataclass(frozen=True)
class ProcessIdentity:
    """A live process as it was seen once: pid, start and owner."""

    pid: int
    start: str
    uid: int

    def same_process(self, other: ProcessIdentity | None) -> bool:
        return other is not None and other.pid == self.pid and other.start == self.start


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _from_proc(pid: int) -> ProcessIdentity | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        uid = os.stat(f"/proc/{pid}").st_uid
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2, the command name, is parenthesised and may hold spaces and parentheses itself:
    # the fields that follow start after the last ")".
    after_name = raw[raw.rindex(b")") + 2 :].split()
    if after_name[0] in (b"Z", b"X"):
        return None  # exited; only waits for its parent to reap it
    return ProcessIdentity(pid=pid, start=f"{_boot_id()}:{int(after_name[19])}", uid=uid)


def _from_psutil(pid: int) -> ProcessIdentity | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return ProcessIdentity(
            pid=pid, start=f"created:{process.create_time():.6f}", uid=process.uids().real
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def read_identity(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid`` now; None when none lives (zombies are dead)."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        return _from_proc(pid)
    return _from_psutil(pid)


def is_alive(identity: ProcessIdentity) -> bool:
    """True while the very process ``identity`` names still runs (not its pid's successor)."""
    return identity.same_process(read_identity(identity.pid))


def signal_if_same(identity: ProcessIdentity, signum: int) -> bool:
    """Send ``signum`` only if the pid still is that process; False when it is gone.

    The pidfd is opened *before* the identity is re-read, so when the identity matches the fd
    names that very process and the signal cannot reach a successor that reused the pid.
    Refuses (HarnessError) a process of another user: the harness never needs to touch one.
    """
    pidfd: int | None = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(identity.pid)
        except ProcessLookupError:
            return False
        except OSError:
            pidfd = None  # a kernel without pidfds
    try:
        now = read_identity(identity.pid)
        if now is None or not identity.same_process(now):
            return False
        if now.uid != os.getuid():
            raise HarnessError(f"pid {now.pid} belongs to uid {now.uid}: not signalling it")
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(identity.pid, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)

"""Process identity: who a pid is, proven so that PID reuse can never fool a signal.

A pid alone names a process only until it exits; the kernel then hands the number to someone
else. So an identity is the pid **and** its start: on Linux the raw start time in clock ticks
since boot (field 22 of ``/proc/PID/stat``) together with the boot id, compared exactly. We do
not use psutil's ``create_time()`` on Linux: it is derived from the wall clock and drifts when
the clock is adjusted. Elsewhere (macOS) psutil's start time is the best the OS offers.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

__all__ = ["ProcessIdentity", "boot_id", "read_identity"]


class ProcessIdentity:
    """A process, named so that no later process can be mistaken for it.

    Immutable (read-only properties), compared and hashed by its fields. A value class, not a
    dataclass: the supervisor's first stage imports this module before its early spawn, and
    ``dataclasses`` imports ``inspect`` (``tests/unit/test_lazy_imports.py``).
    """

    __slots__ = ("_pid", "_start", "_uid")

    def __init__(self, pid: int, start: str, uid: int) -> None:
        self._pid = pid
        self._start = start
        self._uid = uid

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def start(self) -> str:
        """``"<boot id>:<start ticks>"`` on Linux; ``"psutil:<create_time>"`` elsewhere."""
        return self._start

    @property
    def uid(self) -> int:
        return self._uid

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcessIdentity) or other.__class__ is not self.__class__:
            return NotImplemented
        return other._pid == self._pid and other._start == self._start and other._uid == self._uid

    def __hash__(self) -> int:
        return hash((self._pid, self._start, self._uid))

    def __repr__(self) -> str:
        return f"ProcessIdentity(pid={self._pid!r}, start={self._start!r}, uid={self._uid!r})"

    def same_process(self, other: ProcessIdentity | None) -> bool:
        return other is not None and other.pid == self.pid and other.start == self.start


@cache
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "no-boot-id"


def _linux_identity(pid: int) -> ProcessIdentity | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        uid = os.stat(f"/proc/{pid}").st_uid
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) sits in parentheses and may itself contain spaces or
    # parentheses, so split after the last ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    state = fields[0]
    if state in (b"Z", b"X"):
        # A zombie has exited; it only waits to be reaped, and is nobody to signal.
        return None
    start_ticks = int(fields[19])
    return ProcessIdentity(pid=pid, start=f"{boot_id()}:{start_ticks}", uid=uid)


def _psutil_identity(pid: int) -> ProcessIdentity | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return ProcessIdentity(
            pid=pid, start=f"psutil:{process.create_time():.6f}", uid=process.uids().real
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def read_identity(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid`` now; None when none lives (zombies are dead)."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        return _linux_identity(pid)
    return _psutil_identity(pid)

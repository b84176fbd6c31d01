"""A stand-in process that records every signal it receives: the witness for "never touched".

The chaos suite puts stand-ins where a supervisor could mistake them for its own (a journal
row naming their pid, a port of the family range, a daemon-shaped argv) and afterwards asks
them what happened to them. The counters come from the stand-in's own record, not from the
supervisor's: each catchable signal is appended to its log file by the stand-in itself
(and then ignored, so that it stays to record the next one); SIGKILL and SIGSTOP, which no
process can catch, show as the process gone or stopped, read from the kernel by identity.

``listen`` makes it hold a loopback port: ``answer`` is the body it returns to any HTTP
request (a plain server, or a liar with a spec-kitty-shaped health), ``None`` accepts and
never answers. ``user`` (a uid and gid, see :func:`nobody`) runs it as another user, as
root may. Stop it with :meth:`StandIn.stop` (SIGKILL by identity) or use it as a context
manager.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from sks_harness import ProcessIdentity, eventually, is_alive, read_identity, signal_if_same

__all__ = ["StandIn", "nobody"]

# Standard library only, and nothing that a signal could interrupt half-way into a lie: the
# handler writes one line with os.write (atomic for short lines) and returns.
_SCRIPT = r"""
import os, signal, socket, sys, threading
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def record(signum, frame):
    os.write(log, (signal.Signals(signum).name + "\n").encode())
for s in signal.Signals:
    if s in (signal.SIGKILL, signal.SIGSTOP):
        continue
    try:
        signal.signal(s, record)
    except (OSError, ValueError, RuntimeError):
        pass
port, answer = int(sys.argv[2]), sys.argv[3]
held = []
def serve(listener):
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        if answer == "-":
            held.append(conn)  # accept and never answer
            continue
        try:
            conn.settimeout(5)
            conn.recv(65536)
            body = answer.encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                + body
            )
        except OSError:
            pass
        finally:
            conn.close()
if port:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
sys.stdout.write("ready\n")
sys.stdout.flush()
while True:
    signal.pause()
"""


def nobody() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when this process may run a stand-in as it (root), else None."""
    if os.getuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


class StandIn:
    """One recording stand-in process, started by :meth:`start`."""

    def __init__(
        self, popen: subprocess.Popen[bytes], identity: ProcessIdentity, log: Path
    ) -> None:
        self.popen = popen
        self.identity = identity
        self.log = log

    @property
    def pid(self) -> int:
        return self.identity.pid

    @classmethod
    def start(
        cls,
        *,
        extra_argv: Sequence[str] = (),
        listen: int | None = None,
        answer: str | None = None,
        directory: Path | None = None,
        user: tuple[int, int] | None = None,
        disguise: str | None = None,
    ) -> StandIn:
        """Start one and return once its handlers are installed (and its port listens).

        ``extra_argv`` is appended to its command line and ``disguise`` to its ``-c`` script
        (as a comment), to make it look like something: a daemon's script with a port and
        token, a root marker. Only what it *is* must protect it.
        """
        log = Path(
            tempfile.mkstemp(prefix="standin-", suffix=".signals", dir=directory)[1]
        ).resolve()
        prefix: list[str] = []
        if user is not None:
            # Its log is its own to append to. setpriv execs the interpreter as that user, so
            # its /proc entries are that user's (a setuid() inside it would leave them root's).
            os.chown(log, *user)
            prefix = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
        argv = [
            *prefix,
            sys.executable,
            "-c",
            _SCRIPT if disguise is None else _SCRIPT + "# " + disguise.replace("\n", "\n# "),
            str(log),
            str(listen or 0),
            "-" if answer is None else answer,
            *extra_argv,
        ]
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
            cwd="/" if user is not None else None,
        )
        assert popen.stdout is not None
        ready = popen.stdout.readline()
        identity = read_identity(popen.pid)
        if ready != b"ready\n" or identity is None:
            popen.kill()
            popen.wait()
            raise RuntimeError(f"the stand-in did not start (said {ready!r})")
        return cls(popen, identity, log)

    # -- what happened to it ---------------------------------------------------------------------
    def signals(self) -> list[str]:
        """The catchable signals it received, in order, by name (``SIGTERM``, ...)."""
        try:
            return self.log.read_text().split()
        except FileNotFoundError:
            return []

    def stopped(self) -> bool:
        """True while the kernel shows it stopped (SIGSTOP, SIGTSTP... or traced)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_bytes()
        except OSError:
            return False
        return is_alive(self.identity) and stat[stat.rindex(b")") + 2 :][:1] in (b"T", b"t")

    def touched(self) -> list[str]:
        """Everything done to it: received signals, plus ``killed`` or ``stopped``."""
        found = self.signals()
        if self.popen.poll() is not None or not is_alive(self.identity):
            found.append(f"gone (exit {self.popen.returncode})")
        elif self.stopped():
            found.append("stopped")
        return found

    # -- cleaning up -----------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGKILL it by identity (it ignores everything else by design) and reap it."""
        if self.identity.uid == os.getuid():
            signal_if_same(self.identity, signal.SIGKILL)
        else:
            # signal_if_same refuses other users' processes by design; this one is the test's
            # own: the pidfd is opened before the identity is re-read, as there.
            with contextlib.suppress(ProcessLookupError):
                pidfd = os.pidfd_open(self.pid)
                try:
                    if is_alive(self.identity):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                finally:
                    os.close(pidfd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=30)
        eventually(lambda: not is_alive(self.identity), what=f"stand-in {self.pid} to exit")
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""The service manager's side channel, spoken without libsystemd: sd_notify and socket activation.

systemd hands a service three things through its environment (sd-daemon(3)):

- ``NOTIFY_SOCKET``: a datagram socket (a path, or ``@name`` in the abstract namespace) that
  takes ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` and ``STATUS=...`` messages (sd_notify(3));
- ``WATCHDOG_USEC`` / ``WATCHDOG_PID``: how often the manager wants ``WATCHDOG=1``
  (sd_watchdog_enabled(3));
- ``LISTEN_PID`` / ``LISTEN_FDS`` / ``LISTEN_FDNAMES``: already-listening sockets, passed as file
  descriptors from 3 upwards (sd_listen_fds(3)).

Everything here is best effort for notifications (a lost datagram must never take the supervisor
down) and strict for activation (a socket of the wrong kind is a configuration error). Sync
daemons the supervisor spawns must inherit none of it: :func:`child_environment_scrub`.

```
SocketActivationError (RuntimeError)   a passed descriptor is not a listening unix stream socket
```
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, NamedTuple

__all__ = [
    "CONTROL_FD_NAME",
    "SD_LISTEN_FDS_START",
    "SERVICE_MANAGER_VARIABLES",
    "ActivatedSocket",
    "Notifier",
    "SocketActivationError",
    "child_environment_scrub",
    "listen_fds_from_env",
]


class _Log:
    """``structlog.get_logger(__name__)``, imported when something is first logged.

    :func:`child_environment_scrub` is needed by the supervisor's light first stage
    (``_early_spawn``), which spawns a daemon before structlog is imported.
    """

    def __getattr__(self, name: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(__name__), name)


log = _Log()

#: The first file descriptor a service manager passes (``SD_LISTEN_FDS_START`` in sd-daemon.h).
SD_LISTEN_FDS_START: Final = 3

#: The ``FileDescriptorName=`` our socket unit gives the control socket.
CONTROL_FD_NAME: Final = "control"

#: Variables a service manager sets for *this* process only. A child that inherited them could
#: answer the manager in the supervisor's name (``NOTIFY_SOCKET``), believe it was socket-activated
#: (``LISTEN_*``), or write into the supervisor's journal stream (``JOURNAL_STREAM``).
SERVICE_MANAGER_VARIABLES: Final = frozenset(
    {
        # sd_notify(3), sd_watchdog_enabled(3), sd_listen_fds(3)
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        # systemd.exec(5), "Environment Variables Set or Propagated by the Service Manager"
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "MANAGERPID",
        "MAINPID",
        "SYSTEMD_EXEC_PID",
        "LOG_NAMESPACE",
        "PIDFILE",
        "SERVICE_RESULT",
        "EXIT_CODE",
        "EXIT_STATUS",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
        "MEMORY_PRESSURE_WATCH",
        "MEMORY_PRESSURE_WRITE",
        # launchd names the job a process belongs to.
        "XPC_SERVICE_NAME",
        "XPC_FLAGS",
    }
)

#: Families of the same (``TRIGGER_UNIT``, ``MONITOR_EXIT_CODE``, ...).
_SERVICE_MANAGER_PREFIXES: Final = ("TRIGGER_", "MONITOR_")

# A full notification queue must not stall the event loop for long, yet READY=1 should not be
# dropped at the first hiccup either.
_SEND_TIMEOUT_SECONDS: Final = 2.0


def child_environment_scrub(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the service manager's per-process variables.

    Apply it to every environment handed to a spawned sync daemon::

        child_env = child_environment_scrub(allow_listed_env)
    """
    return {
        name: value
        for name, value in env.items()
        if name not in SERVICE_MANAGER_VARIABLES and not name.startswith(_SERVICE_MANAGER_PREFIXES)
    }


class Notifier:
    """Sends sd_notify(3) messages; without ``NOTIFY_SOCKET`` every method quietly does nothing.

    Build it once at start-up, before anything is spawned::

        notifier = Notifier.from_environment()
        ...  # bind, adopt, become able to answer
        notifier.ready()
        interval = notifier.watchdog_interval()  # ping notifier.watchdog() this often, if not None

    Every method returns whether a message was handed to the manager; failures are logged, never
    raised: the supervisor keeps its daemons whether or not the manager hears about it.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """``address`` is ``NOTIFY_SOCKET``'s value; ``watchdog_usec`` is the manager's timeout."""
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID`` (default: ``os.environ``).

        With ``unset`` (the default) the variables are removed from ``environ`` afterwards, as
        ``sd_notify(1, ...)`` does, so that nothing started later inherits them by accident.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = _watchdog_usec(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(name, None)
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens; ``False`` outside systemd (so always on macOS)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half the manager's timeout), or ``None``.

        ``None`` when the manager set no watchdog, or set it for another process
        (``WATCHDOG_PID`` names someone else).
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self) -> bool:
        """Start-up is complete: the control socket answers."""
        return self._send("READY=1")

    def watchdog(self) -> bool:
        """The supervisor is alive and its loop is turning."""
        return self._send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun; the manager should expect the process to exit."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line status, shown by ``systemctl --user status``."""
        # Assignments are newline-separated: a newline in the text would start a new one.
        one_line = " ".join(text.splitlines())
        return self._send(f"STATUS={one_line}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, state: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0)
                )
                self._socket.settimeout(_SEND_TIMEOUT_SECONDS)
            self._socket.sendto(state.encode(), self._address)
        except OSError as exc:
            # Log the first failure of a run at warning, repeats at debug: a watchdog ping that
            # fails every 30 s must not flood the journal.
            emit = log.debug if self._failing else log.warning
            emit("sd_notify_failed", state=state.split("=", 1)[0], error=str(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify_recovered")
            self._failing = False
        return True


def _socket_address(notify_socket: str) -> bytes | None:
    # sd_notify(3): an absolute path, or "@name" for the abstract namespace (Linux), which has
    # no file and is named by a leading NUL byte.
    if notify_socket.startswith("@"):
        return b"\0" + os.fsencode(notify_socket[1:])
    if notify_socket.startswith("/"):
        return os.fsencode(notify_socket)
    log.warning("sd_notify_unsupported_address", notify_socket=notify_socket)
    return None


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("watchdog_usec_invalid", watchdog_usec=usec)
        return None
    return value if value > 0 else None


class SocketActivationError(RuntimeError):
    """Raised when a socket passed by the service manager is not a listening unix stream socket."""


class ActivatedSocket(NamedTuple):
    """One socket the service manager passed, with its ``FileDescriptorName=`` (or ``unknown``).

    A named tuple, not a dataclass: the early spawn imports this module for
    :func:`child_environment_scrub`, and ``dataclasses`` imports ``inspect``."""

    name: str
    sock: socket.socket


def listen_fds_from_env(
    environ: MutableMapping[str, str] | None = None,
) -> list[ActivatedSocket]:
    """The listening sockets a service manager passed to this process (socket activation).

    Empty when the variables are absent, malformed or meant for another process
    (``LISTEN_PID`` is not ours). ``LISTEN_*`` are removed from ``environ`` (``os.environ`` by
    default) in every case, and the descriptors are made close-on-exec, so no daemon inherits
    the control socket. Raises :class:`SocketActivationError` when a descriptor is not an
    ``AF_UNIX`` ``SOCK_STREAM`` socket in the listening state::

        control = next((s.sock for s in listen_fds_from_env() if s.name == CONTROL_FD_NAME), None)
    """
    env = os.environ if environ is None else environ
    listen_pid = env.pop("LISTEN_PID", "")
    listen_fds = env.pop("LISTEN_FDS", "")
    listen_fdnames = env.pop("LISTEN_FDNAMES", None)
    if not listen_pid or not listen_fds:
        return []
    try:
        pid, count = int(listen_pid), int(listen_fds)
    except ValueError:
        log.warning("listen_fds_invalid", listen_pid=listen_pid, listen_fds=listen_fds)
        return []
    if pid != os.getpid():
        log.info("listen_fds_for_another_process", listen_pid=pid)
        return []
    names = listen_fdnames.split(":") if listen_fdnames is not None else []
    if len(names) != count:
        names = ["unknown"] * count
    activated = []
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        os.set_inheritable(fd, False)
        activated.append(ActivatedSocket(name, _listening_unix_stream(fd)))
    return activated


def _listening_unix_stream(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketActivationError(f"file descriptor {fd} is not a socket: {exc}") from exc
    accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not accepting:
        description = f"family={sock.family!r}, type={sock.type!r}, listening={bool(accepting)}"
        sock.detach()  # the descriptor is the manager's; leave it open for whoever owns it
        raise SocketActivationError(
            f"file descriptor {fd} is not a listening AF_UNIX SOCK_STREAM socket ({description}); "
            "check ListenStream= in the socket unit"
        )
    return sock

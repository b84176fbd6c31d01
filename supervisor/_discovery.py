"""Finding what listens in the sync family range, and reading the facts classification needs.

Listeners come from the kernel's socket table, never from whether a connect succeeds: a
stopped process keeps its listening socket, but once its backlog fills its port looks closed
while it is alive. Everything decided about a listener is decided by ``_classification``;
this module only observes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.to_thread

from spec_kitty_supervisor_client._models import ListenerRecord
from spec_kitty_supervisor_client._terms import FAMILY_PORT_RANGE

from ._classification import (
    FileId,
    KernelRootFacts,
    ListenerFacts,
    RootFiles,
    SupervisorFacts,
    classify,
    port_boundary_reason,
)
from ._daemon_shape import CmdlineFacts, parse_cmdline
from ._health import HealthAnswer
from ._identity import ProcessIdentity, read_identity
from ._listen_table import (
    KernelListener,
    linux_listen_sockets,
    linux_socket_owners,
    port_uids,
)
from ._probe import probe_health

__all__ = [
    "Listener",
    "Observation",
    "find_family_listeners",
    "observe",
    "observe_listeners",
    "read_kernel_root",
    "read_process_facts",
    "read_root_files",
    "split_proc_cmdline",
]


class Listener(NamedTuple):
    """A listening TCP socket on a loopback or wildcard address."""

    port: int
    pid: int | None  # None when the socket table does not say (another user's, hidepid)
    uid: int | None


def find_family_listeners(family_range: tuple[int, int] = FAMILY_PORT_RANGE) -> list[Listener]:
    """Every listening port in ``family_range`` reachable on loopback, one entry per port."""
    low, high = family_range
    kernel = linux_listen_sockets(low, high) if sys.platform.startswith("linux") else None
    if kernel is not None:
        # On Linux the kernel's tables say everything: the sockets, and (through each
        # process's descriptors) who holds them. With no listener in the range there is
        # nobody to name, and every sweep of a clean root ends here.
        return _choose(_from_kernel_tables(kernel), port_uids(kernel))
    # psutil is imported here, not at the top: on Linux the doctor never needs it.
    import psutil

    try:
        candidates = _from_system_table(low, high)
    except psutil.AccessDenied:
        # macOS lists system-wide sockets only to root; each of our own processes can
        # still show its own, and another user's processes are not ours anyway.
        candidates = _from_each_process(low, high)
    return _choose(candidates, {})


_Candidate = tuple[int, int | None, int | None, bool]  # port, pid, uid, is IPv4


def _choose(candidates: Iterable[_Candidate], known_uids: dict[int, int]) -> list[Listener]:
    chosen: dict[int, tuple[tuple[bool, bool], Listener]] = {}
    for port, pid, uid, is_ipv4 in candidates:
        listener = Listener(
            port=port, pid=pid, uid=uid if uid is not None else known_uids.get(port)
        )
        # IPv4 and IPv6 sockets may share a port, even in different processes. The health
        # probe goes to 127.0.0.1, so keep the IPv4 socket's process: pairing one process's
        # argv with another's answer would prove nothing. Then prefer an entry naming its pid.
        preference = (is_ipv4, pid is not None)
        if port not in chosen or preference > chosen[port][0]:
            chosen[port] = (preference, listener)
    return [chosen[port][1] for port in sorted(chosen)]


def _from_kernel_tables(sockets: list[KernelListener]) -> list[_Candidate]:
    reachable = [socket for socket in sockets if _is_loopback_or_any(socket.address)]
    if not reachable:
        return []  # nobody to name: no process is read (every sweep of a clean root)
    owners = linux_socket_owners({socket.inode for socket in reachable})
    return [
        (socket.port, owners.get(socket.inode), None, _is_ipv4(socket.address))
        for socket in reachable
    ]


def _from_system_table(low: int, high: int) -> list[_Candidate]:
    # The kernel's socket table did not answer (not Linux, or no /proc): psutil's.
    import psutil

    return [
        (conn.laddr.port, conn.pid, None, _is_ipv4(conn.laddr.ip))
        for conn in psutil.net_connections(kind="tcp")
        if _is_reachable_listener(conn, low, high)
    ]


def _from_each_process(low: int, high: int) -> list[_Candidate]:
    import psutil

    candidates: list[_Candidate] = []
    for process in psutil.process_iter():
        try:
            # psutil 6 renamed ``connections`` to ``net_connections``; accept both.
            connections_of = getattr(process, "net_connections", None) or process.connections
            connections = connections_of(kind="tcp")
            uid = process.uids().real
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        candidates.extend(
            (conn.laddr.port, process.pid, uid, _is_ipv4(conn.laddr.ip))
            for conn in connections
            if _is_reachable_listener(conn, low, high)
        )
    return candidates


def _is_reachable_listener(conn: Any, low: int, high: int) -> bool:
    import psutil

    if conn.status != psutil.CONN_LISTEN or not conn.laddr:
        return False
    if not low <= conn.laddr.port < high:
        return False
    return _is_loopback_or_any(conn.laddr.ip)


def _is_loopback_or_any(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _is_ipv4(ip: str) -> bool:
    return ":" not in ip


def read_process_facts(pid: int) -> tuple[ProcessIdentity | None, CmdlineFacts | None]:
    """The identity and argv facts of ``pid`` now; (None, None) when it is gone or unreadable."""
    identity = read_identity(pid)
    if identity is None:
        return None, None
    argv = _linux_argv(pid) if sys.platform.startswith("linux") else _psutil_argv(pid)
    if argv is None:
        return identity, None
    # The pid may have exited and been reused between the two reads; the argv is only
    # this identity's if the same process is still there afterwards.
    if not identity.same_process(read_identity(pid)):
        return None, None
    return identity, parse_cmdline(argv)


def _linux_argv(pid: int) -> list[str] | None:
    """``/proc/PID/cmdline`` as psutil reads it on Linux; None when unreadable."""
    try:
        return split_proc_cmdline(os.fsdecode(Path(f"/proc/{pid}/cmdline").read_bytes()))
    except OSError:
        return None


def split_proc_cmdline(data: str) -> list[str]:
    """The arguments in ``/proc/PID/cmdline``'s text, split as psutil splits them on Linux.

    Arguments end with NUL bytes, but a process that rewrote its title (setproctitle) may
    separate them with spaces instead. Empty for a kernel thread, or a process exiting (the
    identity's re-check then tells).
    """
    if not data:
        return []
    separator = "\0" if data.endswith("\0") else " "
    if data.endswith(separator):
        data = data[:-1]
    argv = data.split(separator)
    if separator == "\0" and len(argv) == 1 and " " in data:
        argv = data.split(" ")
    return argv


def _psutil_argv(pid: int) -> list[str] | None:
    import psutil

    try:
        argv: list[str] = psutil.Process(pid).cmdline()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return argv


def _file_id(path: str) -> FileId | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _environ_home(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"HOME="):
            return os.fsdecode(entry[len(b"HOME=") :])
    return None


def read_kernel_root(identity: ProcessIdentity) -> KernelRootFacts | None:
    """What the kernel says of a process's root: its stdout's file and its HOME's directory.

    Linux only: ``/proc/PID/fd/1`` names the open file itself (a deleted log included), and
    ``/proc/PID/environ`` is the environment the process was started with. macOS has neither
    without privileges, so there a daemon without a root marker stays unproven.
    """
    if not sys.platform.startswith("linux"):
        return None
    pid = identity.pid
    stdout_file = _file_id(f"/proc/{pid}/fd/1")
    home = _environ_home(pid)
    home_dir = _file_id(os.path.realpath(home)) if home else None
    # The pid may have been reused while we read; the facts are only this identity's if the
    # same process is still there afterwards.
    if not identity.same_process(read_identity(pid)):
        return None
    return KernelRootFacts(stdout_file=stdout_file, home_dir=home_dir)


def read_root_files(daemon_root: str) -> RootFiles:
    """The root as files: its ``sync-daemon.log`` and, for a ``$HOME/.spec-kitty``, its HOME."""
    root = Path(daemon_root)
    return RootFiles(
        daemon_log=_file_id(str(root / "sync-daemon.log")),
        home_dir=_file_id(str(root.parent)) if root.name == ".spec-kitty" else None,
    )


class _Observed(NamedTuple):
    listener: Listener
    identity: ProcessIdentity | None
    cmdline: CmdlineFacts | None
    kernel_root: KernelRootFacts | None


def _read_processes(listeners: list[Listener]) -> list[_Observed]:
    observed: list[_Observed] = []
    for listener in listeners:
        identity, cmdline = (
            read_process_facts(listener.pid) if listener.pid is not None else (None, None)
        )
        kernel_root = None
        # Only a daemon without a root marker needs the kernel's word for its root.
        if identity is not None and cmdline is not None and cmdline.spawn_shape:
            kernel_root = read_kernel_root(identity) if cmdline.root_marker is None else None
        observed.append(_Observed(listener, identity, cmdline, kernel_root))
    return observed


class Observation(NamedTuple):
    """One classified listener, with what acting on it needs beyond its record.

    ``identity`` is the process seen listening (pid, start, uid), which every signal
    re-checks; ``health_token`` is the raw token its health answer gave, for the token
    shutdown. Neither goes over the wire: the record is what reports show.
    """

    record: ListenerRecord
    identity: ProcessIdentity | None
    health_token: str | None

    @property
    def port(self) -> int:
        return self.record.port


async def observe(supervisor: SupervisorFacts, health_timeout: float = 0.5) -> list[Observation]:
    """Find, probe (all at once) and classify every listener in the supervisor's range."""
    # /proc (and psutil) reads block; keep them off the event loop.
    listeners = await anyio.to_thread.run_sync(find_family_listeners, supervisor.family_range)
    answers: dict[int, HealthAnswer | None] = {}

    async def probe(port: int) -> None:
        answers[port] = await probe_health(port, timeout=health_timeout)

    async with anyio.create_task_group() as task_group:
        # The daemons answer (each an interpreter of its own, on another core when there is
        # one) while their processes are read here: neither waits for the other.
        for port in _ports_to_probe(listeners, supervisor):
            task_group.start_soon(probe, port)
        observed = await anyio.to_thread.run_sync(_read_processes, listeners)
        if supervisor.root_files is None and any(item.kernel_root for item in observed):
            root_files = await anyio.to_thread.run_sync(read_root_files, supervisor.daemon_root)
            supervisor = dataclasses.replace(supervisor, root_files=root_files)
    observations: list[Observation] = []
    for item in observed:
        health = answers.get(item.listener.port)
        classified = classify(
            ListenerFacts(
                port=item.listener.port,
                pid=item.listener.pid,
                uid=item.identity.uid if item.identity is not None else item.listener.uid,
                process_start=item.identity.start if item.identity is not None else None,
                cmdline=item.cmdline,
                health=health,
                kernel_root=item.kernel_root,
            ),
            supervisor,
        )
        observations.append(
            Observation(
                # Every field is a scalar: a shallow copy (asdict copies deeply, for nothing).
                record=ListenerRecord(**classified._asdict()),
                identity=item.identity,
                health_token=health.token if health is not None else None,
            )
        )
    return observations


async def observe_listeners(
    supervisor: SupervisorFacts, health_timeout: float = 0.5
) -> list[ListenerRecord]:
    """The records of :func:`observe`: what a report shows, without what acting needs."""
    return [item.record for item in await observe(supervisor, health_timeout)]


def _ports_to_probe(listeners: Iterable[Listener], supervisor: SupervisorFacts) -> list[int]:
    # Ports outside the family, and the dashboard's above all, are never_touch whatever
    # they would answer; sync cleanup does not even knock.
    return [
        listener.port
        for listener in listeners
        if port_boundary_reason(listener.port, supervisor) is None
    ]

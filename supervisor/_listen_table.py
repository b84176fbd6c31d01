"""Which ports of a range have a listening TCP socket, and who holds it, from the kernel's tables.

Standard library only, and apart from :mod:`._discovery` (classification, the protocol's
models): the supervisor's first look at a clean root, where nothing listens in the range,
needs nothing else, so a start never imports the doctor's modules for nothing. On Linux the
doctor names each listener's process from here too (:func:`linux_socket_owners`) rather than
through psutil, whose listing builds every socket of the system and then walks every
descriptor of every process before it answers.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "KernelListener",
    "linux_listen_sockets",
    "linux_listen_uids",
    "linux_socket_owners",
    "parse_listen_table",
    "port_uids",
]

_TCP_LISTEN = "0A"
_TABLES = (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6))


class KernelListener(NamedTuple):
    """One listening socket as ``/proc/net/tcp{,6}`` lists it."""

    port: int
    address: str  # as ``inet_ntop`` writes it: "127.0.0.1", "::", "::ffff:127.0.0.1"
    uid: int  # who created the socket
    inode: int  # the socket's inode: ``/proc/PID/fd/N`` of its holders reads ``socket:[inode]``


def _address(hex_address: str, family: int) -> str:
    # The kernel prints the address as 32-bit words, each in the host's byte order.
    raw = b"".join(
        int(hex_address[at : at + 8], 16).to_bytes(4, sys.byteorder)
        for at in range(0, len(hex_address), 8)
    )
    return socket.inet_ntop(family, raw)


def parse_listen_table(
    lines: Iterable[str], family: int, low: int, high: int
) -> list[KernelListener]:
    """The listening sockets of a table's lines (its header excluded), ports in ``[low, high)``."""
    found: list[KernelListener] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        hex_address, _, hex_port = fields[1].rpartition(":")
        port = int(hex_port, 16)
        if low <= port < high:
            found.append(
                KernelListener(port, _address(hex_address, family), int(fields[7]), int(fields[9]))
            )
    return found


def linux_listen_sockets(low: int, high: int) -> list[KernelListener] | None:
    """Every listening TCP socket (IPv4, then IPv6) with a port in ``[low, high)``; None if
    neither table is readable."""
    found: list[KernelListener] = []
    readable = False
    for table, family in _TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        found += parse_listen_table(lines, family, low, high)
    return found if readable else None


def port_uids(sockets: Iterable[KernelListener]) -> dict[int, int]:
    """Port → the uid of its listening socket; of two owners on one port, the foreign one."""
    uids: dict[int, set[int]] = {}
    for listener in sockets:
        uids.setdefault(listener.port, set()).add(listener.uid)
    own_uid = os.getuid()
    # Two owners on one port (IPv4 and IPv6 by different users): name the foreign one, the
    # cautious answer.
    return {port: max(owners, key=lambda uid: uid != own_uid) for port, owners in uids.items()}


def linux_listen_uids(low: int, high: int) -> dict[int, int] | None:
    """Port → uid of its listening socket, from ``/proc/net/tcp{,6}``; None if unreadable.

    psutil does not report a socket's owner, and cannot name the pid of another user's
    socket; the kernel table still says whose it is, which keeps such a listener
    ``other_user`` instead of a pid-less mystery.
    """
    sockets = linux_listen_sockets(low, high)
    return port_uids(sockets) if sockets is not None else None


def linux_socket_owners(inodes: Collection[int]) -> dict[int, int]:
    """Socket inode → the pid holding it, for those of ``inodes`` a readable process holds.

    The walk psutil makes for every socket of the system, made for these sockets only: every
    process in ``/proc`` (ascending pids), each one's descriptors. A socket held by several
    processes (inherited across a fork) is named by the last of them, the highest pid, as
    psutil names it. Processes we may not read (another user's, ``hidepid``) or that exit
    meanwhile are skipped: their sockets stay unnamed, as with psutil.
    """
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    if not wanted:
        return owners
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        folder = f"/proc/{entry}/fd"
        try:
            descriptors = os.listdir(folder)
        except OSError:  # gone, or not ours to read
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"{folder}/{descriptor}")
            except OSError:  # closed meanwhile
                continue
            inode = wanted.get(target)
            if inode is not None:
                owners[inode] = int(entry)
    return owners

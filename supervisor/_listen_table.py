"""Which ports of a range have a listening TCP socket, from the kernel's own tables.

Standard library only, and apart from :mod:`._discovery` (psutil, classification, the
protocol's models): the supervisor's first look at a clean root, where nothing listens in the
range, needs nothing else, so a start never imports the doctor's modules for nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["linux_listen_uids"]

_TCP_LISTEN = "0A"


def linux_listen_uids(low: int, high: int) -> dict[int, int] | None:
    """Port → uid of its listening socket, from ``/proc/net/tcp{,6}``; None if unreadable.

    psutil does not report a socket's owner, and cannot name the pid of another user's
    socket; the kernel table still says whose it is, which keeps such a listener
    ``other_user`` instead of a pid-less mystery.
    """
    uids: dict[int, set[int]] = {}
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _TCP_LISTEN:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if low <= port < high:
                uids.setdefault(port, set()).add(int(fields[7]))
    if not readable:
        return None
    own_uid = os.getuid()
    # Two owners on one port (IPv4 and IPv6 by different users): name the foreign one, the
    # cautious answer.
    return {port: max(owners, key=lambda uid: uid != own_uid) for port, owners in uids.items()}

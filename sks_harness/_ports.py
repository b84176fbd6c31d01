"""Loopback ports for tests that start real listeners in the sync family range.

Real sync daemons must listen inside ``[9400, 9450)`` for any spec-kitty tool (and the
supervisor) to recognise them, so tests cannot use ephemeral ports. Nothing guarantees that
range is free on a developer's machine either: a real spec-kitty may be running there. So a
port is handed out only after it was checked *now*, the way upstream spawners check it (a
connect is refused and a bind succeeds), and different parts of the suite draw from disjoint
sub-ranges so that, say, the supervisor under test never takes the port a test meant for an
orphan.

The sub-ranges are overridable from the environment as half-open ``LO-HI`` strings:
``SKS_TEST_ORPHAN_PORTS`` (default ``9400-9425``) and ``SKS_TEST_SPAWN_PORTS`` (default
``9425-9450``).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "FAMILY_RANGE",
    "ORPHAN_PORTS",
    "SPAWN_PORTS",
    "TEST_PORT_RANGES",
    "NoFreePortsError",
    "PortRange",
    "free_ports",
    "parse_port_range",
    "port_is_free",
]

_HOST = "127.0.0.1"
_CONNECT_TIMEOUT = 0.2


class NoFreePortsError(RuntimeError):
    """Raised when a sub-range has fewer usable ports than a test asked for."""


@dataclass(frozen=True)
class PortRange:
    """A half-open range of loopback ports, ``[lo, hi)``."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi <= 65536:
            raise ValueError(f"not a port range: {self.lo}-{self.hi} (want 0 < LO < HI <= 65536)")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port < self.hi

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.lo, self.hi))

    def __len__(self) -> int:
        return self.hi - self.lo

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"

    def free(self, count: int, *, exclude: Iterable[int] = ()) -> list[int]:
        """``count`` ports of this range that are free right now (see :func:`free_ports`)."""
        return free_ports(count, self.lo, self.hi, exclude=exclude)


#: The sync daemons' family range: only listeners here are seen as sync daemons.
FAMILY_RANGE = PortRange(9400, 9450)


def parse_port_range(text: str) -> PortRange:
    """``"LO-HI"`` (half-open) to a :class:`PortRange`; ValueError on anything else."""
    lo_text, sep, hi_text = text.strip().partition("-")
    if not sep:
        raise ValueError(f"not a port range: {text!r} (want LO-HI, half-open)")
    try:
        return PortRange(int(lo_text), int(hi_text))
    except ValueError as exc:
        raise ValueError(f"not a port range: {text!r} (want LO-HI, half-open): {exc}") from exc


def _family_sub_range(variable: str, default: PortRange) -> PortRange:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    chosen = parse_port_range(raw)
    if not (FAMILY_RANGE.lo <= chosen.lo and chosen.hi <= FAMILY_RANGE.hi):
        raise ValueError(
            f"{variable}={raw!r} leaves the sync family range {FAMILY_RANGE}: "
            "daemons outside it are not recognised as sync daemons"
        )
    return chosen


#: Ports for daemons that tests spawn themselves (orphans, upstream-style daemons).
ORPHAN_PORTS = _family_sub_range("SKS_TEST_ORPHAN_PORTS", PortRange(9400, 9425))
#: Ports the supervisor under test is told to spawn its own daemons on.
SPAWN_PORTS = _family_sub_range("SKS_TEST_SPAWN_PORTS", PortRange(9425, 9450))
#: Every test sub-range by purpose.
TEST_PORT_RANGES: Mapping[str, PortRange] = MappingProxyType(
    {"orphans": ORPHAN_PORTS, "spawns": SPAWN_PORTS}
)


def _connect_refused(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(_CONNECT_TIMEOUT)
        try:
            probe.connect((_HOST, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            # A timeout (a full listen queue, a stopped listener) means someone is there.
            return False
        return False


def _bind_succeeds(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as trial:
        # The daemons' stdlib HTTPServer sets SO_REUSEADDR, so a port whose only trace is
        # connections in TIME_WAIT is as usable for them as it is here.
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            trial.bind((_HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
        return True


def port_is_free(port: int) -> bool:
    """True when ``127.0.0.1:port`` refuses a connect and accepts a bind right now."""
    return _connect_refused(port) and _bind_succeeds(port)


def free_ports(count: int, lo: int, hi: int, *, exclude: Iterable[int] = ()) -> list[int]:
    """The first ``count`` ports of ``[lo, hi)`` that are free right now, lowest first.

    Free "right now" only: between this check and the daemon's own bind another process may
    take the port, which a daemon reports by exiting (the harness then says so). ``exclude``
    names ports already promised to something that is not listening yet.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    span = PortRange(lo, hi)
    skipped = set(exclude)
    chosen: list[int] = []
    busy: list[int] = []
    for port in span:
        if len(chosen) == count:
            break
        if port in skipped:
            continue
        if port_is_free(port):
            chosen.append(port)
        else:
            busy.append(port)
    if len(chosen) < count:
        raise NoFreePortsError(
            f"wanted {count} free port(s) in [{lo}, {hi}), found {len(chosen)}; "
            f"busy: {busy or 'none'}, excluded: {sorted(skipped & set(span)) or 'none'}. "
            "Something else listens there (`ss -ltnp` shows who); choose another sub-range "
            "with SKS_TEST_ORPHAN_PORTS / SKS_TEST_SPAWN_PORTS=LO-HI."
        )
    return chosen

"""Bounds on what clients can hold: how many connections, and for how long.

One supervisor serves every local client of a root, so no client may hold it, by mistake or on
purpose. At most ``max_connections`` are open: by default ``min(512, soft fd limit - 64)``,
which leaves descriptors for daemons, probes and files. A client that comes while all are
taken makes room by closing the connection that has been idle the longest (waiting for a
request that has not begun, so nothing is lost: a kept-alive client reconnects and sends it
again); only when every connection is in the middle of a request is the newcomer closed. A
request's head must arrive within ``head_timeout`` (counted from its first byte, or from the
accept for a connection's first request), its body within ``body_timeout``, the answer must
be taken within ``reply_timeout``, and a kept-alive connection idle for ``idle_timeout`` is
closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import anyio
import structlog

__all__ = ["ConnectionLimits", "ConnectionPool", "ConnectionSlot"]

log = structlog.get_logger("spec_kitty_supervisor.api")

#: Descriptors kept for everything that is not a client connection.
RESERVED_DESCRIPTORS = 64


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 512
    head_timeout: float = 5.0
    body_timeout: float = 10.0
    reply_timeout: float = 10.0
    idle_timeout: float = 60.0

    def for_descriptor_limit(self, soft_limit: int) -> ConnectionLimits:
        """These limits with ``max_connections`` lowered to what ``soft_limit`` leaves room for."""
        room = max(1, soft_limit - RESERVED_DESCRIPTORS)
        return replace(self, max_connections=min(self.max_connections, room))


@dataclass(eq=False)
class ConnectionSlot:
    """One open connection: idle since when (None while a request is under way)."""

    scope: anyio.CancelScope
    idle_since: float | None
    evicted: bool = False


@dataclass
class ConnectionPool:
    """The open connections, and the choice of which one makes room for a newcomer."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    clock: Callable[[], float] = time.monotonic
    slots: list[ConnectionSlot] = field(default_factory=list)
    refused: int = 0

    def admit(self, scope: anyio.CancelScope) -> ConnectionSlot | None:
        """Take a new connection (idle until its first request begins); None to refuse it."""
        if self.open_count() >= self.limits.max_connections:
            victim = self.longest_idle()
            if victim is None:
                if self.refused == 0:
                    log.warning(
                        "connections_full",
                        max_connections=self.limits.max_connections,
                        reason="every connection is in the middle of a request",
                    )
                self.refused += 1
                return None
            victim.evicted = True
            victim.scope.cancel()
        if self.refused:
            log.info("connections_available", refused=self.refused)
            self.refused = 0
        slot = ConnectionSlot(scope=scope, idle_since=self.clock())
        self.slots.append(slot)
        return slot

    def open_count(self) -> int:
        """Connections that hold a place (one closing to make room no longer does)."""
        return sum(1 for slot in self.slots if not slot.evicted)

    def longest_idle(self) -> ConnectionSlot | None:
        idle = [s for s in self.slots if s.idle_since is not None and not s.evicted]
        return min(idle, key=lambda s: s.idle_since or 0.0, default=None)

    def idle(self, slot: ConnectionSlot) -> None:
        slot.idle_since = self.clock()

    def busy(self, slot: ConnectionSlot) -> None:
        slot.idle_since = None

    def close(self, slot: ConnectionSlot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)

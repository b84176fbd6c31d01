"""The file-descriptor limit: raised for the supervisor, given back to the daemons it spawns.

An auto-started supervisor inherits its client's soft ``RLIMIT_NOFILE``, which is 256 on
macOS: a few hundred idle clients would exhaust it. So at start-up the supervisor raises its
soft limit to ``min(hard, 4096)`` (macOS may report the hard limit as unlimited, which the
kernel would still refuse above ``OPEN_MAX``: hence the cap). The daemons are spec-kitty's
processes, not ours: they get back the limit the supervisor was started with, as they would
have had when spawned by the CLI itself.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["FD_LIMIT_TARGET", "FdLimits", "child_limit_restorer", "raise_fd_limit"]

FD_LIMIT_TARGET = 4096


class _Inherited:
    """What the process was started with, once :func:`raise_fd_limit` changed it."""

    limits: tuple[int, int] | None = None


_inherited = _Inherited()


class FdLimits(NamedTuple):
    # A named tuple, not a dataclass: the first stage imports this module before it serves
    # the socket, and ``dataclasses`` (with ``inspect``) costs it a tenth of its start.
    inherited_soft: int
    hard: int
    soft: int
    error: str | None = None

    @property
    def raised(self) -> bool:
        return self.soft != self.inherited_soft


def _target(hard: int, wanted: int) -> int:
    return wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)


def raise_fd_limit(wanted: int = FD_LIMIT_TARGET) -> FdLimits:
    """Raise the soft limit towards ``wanted`` (never lower it) and remember the original."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _target(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            return FdLimits(inherited_soft=soft, hard=hard, soft=soft, error=str(exc))
        _inherited.limits = (soft, hard)
        return FdLimits(inherited_soft=soft, hard=hard, soft=target)
    return FdLimits(inherited_soft=soft, hard=hard, soft=soft)


def child_limit_restorer() -> Callable[[], None] | None:
    """A ``preexec_fn`` that gives a child the inherited limit back; None when nothing changed.

    Why ``preexec_fn``, which the docs call unsafe with threads: the deadlock it risks comes
    from child code that takes a lock another thread held at ``fork()`` (imports, logging,
    I/O buffers). This one only makes one ``setrlimit`` system call with integers bound
    before the fork, and ``resource`` is imported already. The alternatives are worse:
    ``posix_spawn`` and ``Popen`` cannot set a limit; ``prlimit()`` on the child from the
    parent races the child's own start and does not exist on macOS; lowering our own limit
    around the spawn would make the spawn's own pipes fail with EMFILE exactly when many
    connections are open. Lowering a soft limit never fails, so the child cannot be left
    half-configured.
    """
    if _inherited.limits is None:
        return None
    soft, hard = _inherited.limits
    setrlimit = resource.setrlimit
    nofile = resource.RLIMIT_NOFILE

    def restore() -> None:
        setrlimit(nofile, (soft, hard))

    return restore

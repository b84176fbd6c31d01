"""The lifecycle's one seam to the world: every effect, and time, behind two small protocols.

As httpx hands its client a transport (and its tests a ``MockTransport``), the lifecycle is
handed an :class:`Effects` and a :class:`Clock`. The real ones (:mod:`._real`) are thin
adapters over the modules that spawn, probe, verify, signal and write files; the unit tests
hand it fakes that record what was asked and answer from a script, so restart, quarantine,
watchdog, adoption and retirement rules run in milliseconds without a process.

Everything the lifecycle reads of the world comes back as one of the small values below,
never as a process handle: the real effects keep the ``Popen`` objects and pidfds to
themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from spec_kitty_supervisor_client._models import EnsureRequest, StopPath

from .._identity import ProcessIdentity
from .._legacy_state import LegacyRecord
from .._table import LoadedTable, Table
from .._versions import EstablishedEnsure

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = [
    "Abandoned",
    "Clock",
    "Effects",
    "Health",
    "SpawnContext",
    "SpawnOrder",
    "SpawnedChild",
    "StopRefused",
    "Verification",
]


class StopRefused(PermissionError):
    """Raised by :meth:`Effects.stop` when the process is no longer provably ours to signal."""


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds: idle and watchdog times, which the journal keeps across runs."""
        ...

    def monotonic(self) -> float:
        """Seconds for "how long ago" questions that must ignore clock changes."""
        ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class SpawnContext:
    """What a daemon was started with, kept so that a restart repeats it exactly."""

    env: dict[str, str]
    cwd: str


@dataclass(frozen=True)
class SpawnOrder:
    python: str
    resolved_python: str
    package_version: str
    port: int
    context: SpawnContext


@dataclass(frozen=True)
class SpawnedChild:
    """A daemon process we just started; it is not in the table until it answered healthy."""

    identity: ProcessIdentity
    port: int
    token: str


@dataclass(frozen=True)
class Abandoned:
    """How a spawn that never became healthy ended, and the log lines it wrote."""

    returncode: int | None
    log_tail: str


@dataclass(frozen=True)
class Health:
    """What the lifecycle reads of a ``GET /api/health`` answer."""

    token: str | None
    package_version: str | None


@dataclass(frozen=True)
class Verification:
    """A pid re-proven as this root's daemon (``identity`` set) or not, with why.

    ``answered`` says whether its health answer came with the expected token; a live,
    same-process daemon that does not answer keeps its identity: it is wedged, not a stranger.
    """

    identity: ProcessIdentity | None
    answered: bool
    package_version: str | None
    python: str
    resolved_python: str
    reason: str


class Effects(Protocol):
    # -------------------------------------------------------------- processes

    async def spawn(self, order: SpawnOrder) -> SpawnedChild:
        """Start one daemon; raises :class:`._spawn.SpawnError` when it exits at once."""
        ...

    def take_early_spawn(
        self, python: str, resolved_python: str, package_version: str, context: SpawnContext
    ) -> SpawnedChild | None:
        """The daemon the supervisor's first stage spawned, when it was spawned for exactly
        this interpreter, version, environment and working directory (on the port it took
        then); None otherwise. Taken once: the caller waits for its health as for a spawn."""
        ...

    async def end_early_spawn(self) -> None:
        """Stop the first stage's daemon when nothing took it over, and release the
        ``R/sync-daemon.lock`` held since that spawn. Does nothing when there was none."""
        ...

    async def wait_healthy(self, child: SpawnedChild, timeout: float) -> Health | None:
        """Its health answer with its own token, or None (it exited, or ``timeout`` passed)."""
        ...

    async def abandon(self, child: SpawnedChild) -> Abandoned:
        """Stop a spawn that never became healthy; say how it ended and what it logged."""
        ...

    async def wait_exit(self, pid: int) -> int | None:
        """Return when ``pid`` has ended: its exit status when it was our child, else None."""
        ...

    def release(self, pid: int) -> None:
        """Forget a daemon that left the table (reap it if it was our child)."""
        ...

    def read_identity(self, pid: int) -> ProcessIdentity | None: ...

    async def establish_version(
        self, request: EnsureRequest, resolved_python: str
    ) -> EstablishedEnsure:
        """``request`` with the spec-kitty-cli version its interpreter has installed.

        Learnt from the interpreter itself (once, while its site-packages is unchanged);
        raises ``LifecycleError("version_mismatch")`` when the request claims another.
        """
        ...

    def read_spawn_context(self, pid: int) -> SpawnContext | None:
        """An adopted daemon's environment and directory, so that a restart repeats them."""
        ...

    def default_spawn_context(self, package_version: str) -> SpawnContext:
        """The context for a daemon whose own could not be read: the supervisor's, filtered."""
        ...

    async def probe(self, port: int) -> Health | None: ...

    async def verify(
        self, identity: ProcessIdentity, port: int, expected_token: str | None
    ) -> Verification: ...

    async def stop(self, identity: ProcessIdentity, port: int, token: str | None) -> StopPath:
        """Token shutdown, SIGTERM, SIGKILL (identity re-checked before each).

        Raises :class:`StopRefused` when it stopped being provably ours, and
        :class:`TimeoutError` when it survived SIGKILL.
        """
        ...

    def port_is_free(self, port: int) -> bool: ...

    def owner_record_names(self, pid: int, port: int) -> bool:
        """Whether upstream's ``owner.json`` still names this daemon (see ``classify_exit``)."""
        ...

    # -------------------------------------------------------------- files

    def legacy_lock(self) -> AbstractAsyncContextManager[None]:
        """Hold ``R/sync-daemon.lock``; raises ``LifecycleError("legacy_lock_busy")``."""
        ...

    def read_legacy_state(self) -> LegacyRecord | None: ...

    def legacy_state_exists(self) -> bool: ...

    def write_legacy_state(self, port: int, token: str, pid: int) -> None:
        """Raises ``LifecycleError("state_not_writable")``, as the other writes do."""
        ...

    def remove_legacy_state(self) -> None: ...

    def load_table(self) -> LoadedTable: ...

    def save_table(self, table: Table) -> None: ...

    def record(
        self,
        kind: str,
        *,
        pid: int | None = None,
        port: int | None = None,
        package_version: str | None = None,
        reason: str = "",
    ) -> None:
        """Append to the ledger (never fails: a full disk must not stop the lifecycle).

        An event the ledger's file cannot take is kept in memory (``/v1/events`` serves it)
        and written by :meth:`catch_up_ledger`; :meth:`ledger_behind` says why until then.
        """
        ...

    def ledger_behind(self) -> str | None:
        """Why the ledger's file misses events it should have, or None when it has them all."""
        ...

    def catch_up_ledger(self) -> None:
        """Write the events the ledger's file misses, oldest first (never raises)."""
        ...

    def refused_root_files(self) -> str | None:
        """Which of upstream's files in the root (``R/sync-daemon.lock``, ``R/sync-daemon.log``,
        ``R/sync/daemon/owner.json``) is not a regular file of ours, and what it is; None
        when none is. Such a file is never opened (a spawn or a sweep that needs it is
        refused with ``root_file_refused``)."""
        ...

    # -------------------------------------------------------------- orphans

    async def orphans_to_sweep(self, table: Table) -> bool:
        """Whether a sweep would stop anything now (observes without any lock)."""
        ...

    async def sweep_orphans(
        self,
        table: Table,
        *,
        may_ask: Callable[[], bool] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stop this root's ``safe_auto`` orphans; record them.

        Observes and condemns the orphans under ``R/sync-daemon.lock`` (the state file then
        names none of them), then reports ``task_status.started()`` (the caller's lifecycle
        lock may go) and asks them to stop a few at a time (docs/adr/0024), consulting
        ``may_ask`` (when given) before each, and waits for the deaths, escalating with
        identity-checked signals, without the locks.
        """
        ...

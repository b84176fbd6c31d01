"""Fencing before every act: a supervisor that lost the root's lock changes nothing more.

The lock file ``R/supervisor/supervisor.lock`` is what makes one supervisor the root's only
owner. When it is removed (``rm -rf R/supervisor``) or replaced, a second supervisor can lock a
new one and start; from then on every write of ours would land in *its* ``state.json`` and
``R/sync-daemon``, and every stop or spawn would fight its decisions (split brain). The
periodic check in the runner notices within a heartbeat; this wrapper closes the window: each
act (a spawn, a stop, a write of the table, the state file or the ledger, a sweep) first checks
that the lock file at its path is still the one we hold. When it is not, nothing is done, the
supervisor is told to exit (``on_lost``, once), and the caller gets ``supervisor_exiting``
(503): a client then finds the root's new supervisor. Our daemons are left running for it.

Observations (probes, identity reads, version learning) pass through unchecked: they change
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import anyio

from spec_kitty_supervisor_client._models import EnsureRequest, StopPath

from .._errors import LifecycleError
from .._identity import ProcessIdentity
from .._legacy_state import LegacyRecord
from .._table import LoadedTable, Table
from .._versions import EstablishedEnsure
from ._effects import (
    Abandoned,
    Effects,
    Health,
    SpawnContext,
    SpawnedChild,
    SpawnOrder,
    Verification,
)

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["FencedEffects", "fenced_error"]


def fenced_error() -> LifecycleError:
    return LifecycleError(
        "supervisor_exiting",
        "this supervisor no longer holds the root's lock file (R/supervisor was removed or "
        "replaced); it changes nothing more and exits, leaving its daemons to the next one",
    )


class FencedEffects:
    """An :class:`Effects` that checks ``holds_root()`` before each act of ``inner``."""

    def __init__(
        self, inner: Effects, holds_root: Callable[[], bool], on_lost: Callable[[], None]
    ) -> None:
        self.inner = inner
        self.holds_root = holds_root
        self.on_lost = on_lost
        self.lost = False

    def fence(self) -> None:
        """Raise ``supervisor_exiting`` (and ask for the exit, once) when the lock is not ours."""
        if not self.lost and self.holds_root():
            return
        if not self.lost:
            self.lost = True
            self.on_lost()
        raise fenced_error()

    # -------------------------------------------------------------- acts: fenced

    async def spawn(self, order: SpawnOrder) -> SpawnedChild:
        self.fence()
        return await self.inner.spawn(order)

    def take_early_spawn(
        self, python: str, resolved_python: str, package_version: str, context: SpawnContext
    ) -> SpawnedChild | None:
        self.fence()
        return self.inner.take_early_spawn(python, resolved_python, package_version, context)

    async def end_early_spawn(self) -> None:
        # Like abandon: a fenced supervisor still stops the child nobody can record.
        await self.inner.end_early_spawn()

    async def abandon(self, child: SpawnedChild) -> Abandoned:
        # A spawn nobody can record must still be stopped: it is ours and the next supervisor
        # would never learn about it. Stopping it is the one act a fenced supervisor does.
        return await self.inner.abandon(child)

    async def stop(self, identity: ProcessIdentity, port: int, token: str | None) -> StopPath:
        self.fence()
        return await self.inner.stop(identity, port, token)

    def write_legacy_state(self, port: int, token: str, pid: int) -> None:
        self.fence()
        self.inner.write_legacy_state(port, token, pid)

    def remove_legacy_state(self) -> None:
        self.fence()
        self.inner.remove_legacy_state()

    def save_table(self, table: Table) -> None:
        self.fence()
        self.inner.save_table(table)

    def record(
        self,
        kind: str,
        *,
        pid: int | None = None,
        port: int | None = None,
        package_version: str | None = None,
        reason: str = "",
    ) -> None:
        # The ledger never fails its caller (it follows acts already done); once fenced it
        # is not written, so the next supervisor's events.jsonl has only its own events.
        if self.lost or not self.holds_root():
            return
        self.inner.record(kind, pid=pid, port=port, package_version=package_version, reason=reason)

    def ledger_behind(self) -> str | None:
        return self.inner.ledger_behind()

    def catch_up_ledger(self) -> None:
        if self.lost or not self.holds_root():
            return
        self.inner.catch_up_ledger()

    def refused_root_files(self) -> str | None:
        return self.inner.refused_root_files()

    async def sweep_orphans(
        self,
        table: Table,
        *,
        may_ask: Callable[[], bool] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self.fence()

        # The sweep asks its orphans a few at a time, after the locks are gone: each one
        # asked later is an act of its own, fenced like the first.
        def still_ours() -> bool:
            try:
                self.fence()
            except LifecycleError:
                return False
            return may_ask is None or may_ask()

        await self.inner.sweep_orphans(table, may_ask=still_ours, task_status=task_status)

    # -------------------------------------------------------------- observations: passed on

    async def wait_healthy(self, child: SpawnedChild, timeout: float) -> Health | None:
        return await self.inner.wait_healthy(child, timeout)

    async def wait_exit(self, pid: int) -> int | None:
        return await self.inner.wait_exit(pid)

    def release(self, pid: int) -> None:
        self.inner.release(pid)

    def read_identity(self, pid: int) -> ProcessIdentity | None:
        return self.inner.read_identity(pid)

    async def establish_version(
        self, request: EnsureRequest, resolved_python: str
    ) -> EstablishedEnsure:
        return await self.inner.establish_version(request, resolved_python)

    def read_spawn_context(self, pid: int) -> SpawnContext | None:
        return self.inner.read_spawn_context(pid)

    def default_spawn_context(self, package_version: str) -> SpawnContext:
        return self.inner.default_spawn_context(package_version)

    async def probe(self, port: int) -> Health | None:
        return await self.inner.probe(port)

    async def verify(
        self, identity: ProcessIdentity, port: int, expected_token: str | None
    ) -> Verification:
        return await self.inner.verify(identity, port, expected_token)

    def port_is_free(self, port: int) -> bool:
        return self.inner.port_is_free(port)

    def owner_record_names(self, pid: int, port: int) -> bool:
        return self.inner.owner_record_names(pid, port)

    def legacy_lock(self) -> AbstractAsyncContextManager[None]:
        return self.inner.legacy_lock()

    def read_legacy_state(self) -> LegacyRecord | None:
        return self.inner.read_legacy_state()

    def legacy_state_exists(self) -> bool:
        return self.inner.legacy_state_exists()

    def load_table(self) -> LoadedTable:
        return self.inner.load_table()

    async def orphans_to_sweep(self, table: Table) -> bool:
        return await self.inner.orphans_to_sweep(table)

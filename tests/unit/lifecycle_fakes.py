"""Fakes for the lifecycle's two protocols: a clock that never sleeps, effects that never act.

As httpx tests hand a client a ``MockTransport``, these hand the lifecycle a :class:`FakeEffects`
whose daemons are plain objects: a test kills one (``exit``), wedges one (``responsive =
False``), or has an upstream CLI record one (``record_upstream``), and reads back what the
lifecycle did, in order, from ``acts`` and ``events``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._identity import ProcessIdentity
from spec_kitty_supervisor._legacy_state import LegacyRecord
from spec_kitty_supervisor._lifecycle import Lifecycle, watch_exits
from spec_kitty_supervisor._lifecycle._effects import (
    Abandoned,
    Health,
    SpawnContext,
    SpawnedChild,
    SpawnOrder,
    StopRefused,
    Verification,
)
from spec_kitty_supervisor._spawn import SpawnError
from spec_kitty_supervisor._table import DaemonRecord, LoadedTable, Table
from spec_kitty_supervisor._versions import EstablishedEnsure
from spec_kitty_supervisor_client._models import DaemonRole, EnsureRequest, Settings, StopPath

ROOT = Path("/home/ada/.spec-kitty")


class FakeClock:
    """Time moves only when something sleeps (by exactly that long) or a test advances it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.time = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.time

    def monotonic(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.time += seconds
        await anyio.lowlevel.checkpoint()

    def advance(self, seconds: float) -> None:
        self.time += seconds


@dataclass
class FakeDaemon:
    identity: ProcessIdentity
    port: int
    token: str
    package_version: str
    python: str = "/venv/bin/python"
    responsive: bool = True
    alive: bool = True
    #: None for a daemon that is not our child (its exit status is unknown).
    returncode: int | None = None
    our_child: bool = True
    exited: anyio.Event = field(default_factory=anyio.Event)

    def exit(self, returncode: int | None) -> None:
        self.alive = False
        self.returncode = returncode if self.our_child else None
        self.exited.set()


class FakeEffects:
    def __init__(self) -> None:
        self.daemons: dict[int, FakeDaemon] = {}
        self.next_pid = 4000
        #: What each spawn does, in order: "healthy", "exits_at_once", "never_healthy".
        self.spawn_outcomes: list[str] = []
        self.spawn_orders: list[SpawnOrder] = []
        self.acts: list[str] = []
        self.events: list[tuple[str, int | None, str]] = []
        self.legacy: LegacyRecord | None = None
        self.journal: list[tuple[int, str, str]] | None = None
        self.journal_quarantine: str | None = None
        self.loaded = Table()
        self.journal_fails = False
        #: The ledger's file, by kind, and what it could not take yet.
        self.ledger_fails = False
        self.ledger_file: list[str] = []
        self.ledger_unwritten: list[str] = []
        #: The first stage's daemon, and what it was spawned for (``add_early``).
        self.early: SpawnedChild | None = None
        self.early_for: tuple[str, str, SpawnContext] | None = None
        #: What ``refused_root_files`` answers (a FIFO at R/sync-daemon.lock, ...); while it
        #: is set the legacy lock is refused, as the real one is.
        self.refused_files: str | None = None
        self.legacy_write_fails = False
        self.legacy_lock_busy = False
        self.owner_record: set[int] = set()
        self.taken_ports: set[int] = set()
        self.stop_gate: anyio.Event | None = None
        self.refuse_stop: set[int] = set()
        #: Every health probe, by port, in order.
        self.probes: list[int] = []
        #: When set, a sweep's orphans die only once it is set (after the sweep was started).
        self.sweep_deaths: anyio.Event | None = None

    # -------------------------------------------------------------- test controls

    def add_daemon(
        self, version: str = "3.2.4", *, port: int = 9440, our_child: bool = True
    ) -> FakeDaemon:
        pid = self.next_pid
        self.next_pid += 1
        daemon = FakeDaemon(
            identity=ProcessIdentity(pid=pid, start=f"boot:{pid}", uid=os.getuid()),
            port=port,
            token=f"token-{pid}",
            package_version=version,
            our_child=our_child,
        )
        self.daemons[pid] = daemon
        return daemon

    def record_upstream(self, daemon: FakeDaemon) -> None:
        """An unmodified CLI recorded ``daemon`` in ``R/sync-daemon``."""
        self.legacy = LegacyRecord(
            f"http://localhost:{daemon.port}", daemon.port, daemon.token, daemon.identity.pid
        )

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    # -------------------------------------------------------------- processes

    async def spawn(self, order: SpawnOrder) -> SpawnedChild:
        self.spawn_orders.append(order)
        outcome = self.spawn_outcomes.pop(0) if self.spawn_outcomes else "healthy"
        if outcome == "exits_at_once":
            self.acts.append(f"spawn-failed port {order.port}")
            raise SpawnError("spawn_failed", "the daemon exited at once (exit code 1)")
        daemon = self.add_daemon(order.package_version, port=order.port)
        daemon.python = order.python
        daemon.responsive = outcome == "healthy"
        self.acts.append(f"spawn {daemon.identity.pid}")
        return SpawnedChild(daemon.identity, daemon.port, daemon.token)

    def take_early_spawn(
        self, python: str, resolved_python: str, package_version: str, context: SpawnContext
    ) -> SpawnedChild | None:
        """The first stage's daemon (``early``), when ``early_for`` is this very order."""
        early, wanted = self.early, self.early_for
        if early is None or wanted != (python, package_version, context):
            return None
        self.early = None
        self.acts.append(f"take early {early.identity.pid}")
        return early

    async def end_early_spawn(self) -> None:
        if self.early is not None:
            await self.abandon(self.early)
            self.early = None
        self.acts.append("end early")

    def add_early(self, python: str, package_version: str, context: SpawnContext) -> SpawnedChild:
        """A daemon spawned by the supervisor's first stage for this order, not yet healthy."""
        daemon = self.add_daemon(package_version, port=9440)
        daemon.python = python
        self.early = SpawnedChild(daemon.identity, daemon.port, daemon.token)
        self.early_for = (python, package_version, context)
        return self.early

    async def wait_healthy(self, child: SpawnedChild, timeout: float) -> Health | None:
        daemon = self.daemons[child.identity.pid]
        if daemon.alive and daemon.responsive:
            return Health(daemon.token, daemon.package_version)
        return None

    async def abandon(self, child: SpawnedChild) -> Abandoned:
        self.acts.append(f"abandon {child.identity.pid}")
        self.daemons[child.identity.pid].exit(-15)
        return Abandoned(-15, "Traceback: ModuleNotFoundError: specify_cli")

    async def wait_exit(self, pid: int) -> int | None:
        daemon = self.daemons[pid]
        await daemon.exited.wait()
        return daemon.returncode

    def release(self, pid: int) -> None:
        self.acts.append(f"release {pid}")

    def read_identity(self, pid: int) -> ProcessIdentity | None:
        daemon = self.daemons.get(pid)
        return daemon.identity if daemon is not None and daemon.alive else None

    async def establish_version(
        self, request: EnsureRequest, resolved_python: str
    ) -> EstablishedEnsure:
        installed = request.package_version or "3.2.4"
        return EstablishedEnsure.model_construct(**{**dict(request), "package_version": installed})

    def read_spawn_context(self, pid: int) -> SpawnContext | None:
        return None

    def default_spawn_context(self, package_version: str) -> SpawnContext:
        return SpawnContext(env={"SPEC_KITTY_CLI_VERSION": package_version}, cwd=str(ROOT))

    async def probe(self, port: int) -> Health | None:
        self.probes.append(port)
        for daemon in self.daemons.values():
            if daemon.port == port and daemon.alive and daemon.responsive:
                return Health(daemon.token, daemon.package_version)
        return None

    async def verify(
        self, identity: ProcessIdentity, port: int, expected_token: str | None
    ) -> Verification:
        daemon = self.daemons.get(identity.pid)
        if daemon is None or not daemon.alive or daemon.identity != identity:
            return Verification(None, False, None, "", "", "it has exited")
        if expected_token is not None and expected_token != daemon.token:
            return Verification(None, False, None, "", "", "another token")
        return Verification(
            identity,
            daemon.responsive,
            daemon.package_version,
            daemon.python,
            daemon.python,
            "owner block matches",
        )

    async def stop(self, identity: ProcessIdentity, port: int, token: str | None) -> StopPath:
        self.acts.append(f"stop {identity.pid}")
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        if identity.pid in self.refuse_stop:
            raise StopRefused(f"pid {identity.pid} now belongs to another process")
        self.daemons[identity.pid].exit(0)
        return "http_shutdown"

    def port_is_free(self, port: int) -> bool:
        alive = {d.port for d in self.daemons.values() if d.alive}
        return port not in self.taken_ports | alive

    def owner_record_names(self, pid: int, port: int) -> bool:
        return pid in self.owner_record

    # -------------------------------------------------------------- files

    def legacy_lock(self) -> AbstractAsyncContextManager[None]:
        return self._legacy_lock()

    @asynccontextmanager
    async def _legacy_lock(self) -> AsyncIterator[None]:
        if self.legacy_lock_busy:
            raise LifecycleError("legacy_lock_busy", "an upstream spec-kitty CLI is busy")
        if self.refused_files is not None:
            raise LifecycleError("root_file_refused", self.refused_files)
        yield

    def read_legacy_state(self) -> LegacyRecord | None:
        return self.legacy

    def legacy_state_exists(self) -> bool:
        return self.legacy is not None

    def write_legacy_state(self, port: int, token: str, pid: int) -> None:
        if self.legacy_write_fails:
            raise LifecycleError("state_not_writable", "cannot write sync-daemon: No space left")
        self.acts.append(f"record {pid}")
        self.legacy = LegacyRecord(f"http://localhost:{port}", port, token, pid)

    def remove_legacy_state(self) -> None:
        self.acts.append("unrecord")
        self.legacy = None

    def load_table(self) -> LoadedTable:
        return LoadedTable(self.loaded)

    def save_table(self, table: Table) -> None:
        if self.journal_fails:
            raise LifecycleError("state_not_writable", "cannot write state.json: No space left")
        self.acts.append("journal")
        self.journal = [(d.pid, d.role, d.state) for d in table.daemons]
        self.journal_quarantine = table.quarantine_reason

    def record(
        self,
        kind: str,
        *,
        pid: int | None = None,
        port: int | None = None,
        package_version: str | None = None,
        reason: str = "",
    ) -> None:
        self.events.append((kind, pid, reason))
        self.ledger_unwritten.append(kind)
        self.catch_up_ledger()

    def ledger_behind(self) -> str | None:
        if not self.ledger_unwritten:
            return None
        kept = len(self.ledger_unwritten)
        return f"cannot write events.jsonl: No space left; {kept} kept in memory"

    def catch_up_ledger(self) -> None:
        if not self.ledger_fails:
            self.ledger_file.extend(self.ledger_unwritten)
            self.ledger_unwritten.clear()

    def refused_root_files(self) -> str | None:
        return self.refused_files

    # -------------------------------------------------------------- orphans

    async def orphans_to_sweep(self, table: Table) -> bool:
        return False

    async def sweep_orphans(
        self,
        table: Table,
        *,
        may_ask: Callable[[], bool] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self.acts.append("sweep")
        task_status.started()
        if self.sweep_deaths is not None:
            await self.sweep_deaths.wait()
        # The orphans a real sweep asks after its locks are gone: one more, here.
        if may_ask is None or may_ask():
            self.acts.append("sweep_asked_later")
        self.acts.append("sweep_done")


def make_lifecycle(
    effects: FakeEffects, clock: FakeClock, settings: Settings | None = None
) -> Lifecycle:
    lifecycle = Lifecycle(ROOT, effects, clock, settings or Settings())
    watch_exits(lifecycle)
    return lifecycle


def daemon_record(pid: int = 100, role: DaemonRole = "current") -> DaemonRecord:
    """A healthy spawned 3.2.4 daemon's row, as the table keeps one."""
    return DaemonRecord(
        pid=pid,
        process_start="boot:123",
        uid=1000,
        port=9431,
        token="0" * 32,
        package_version="3.2.4",
        python="/v/bin/python",
        resolved_python="/usr/bin/python3.11",
        origin="spawned",
        state="healthy",
        role=role,
        started_at="2026-11-27T00:00:00+00:00",
    )

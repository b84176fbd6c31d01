"""The supervisor: one owner per daemon root, as the routes and the run loop see it.

It holds what is the supervisor's own (who it is, its clients, its exit) and hands every
question about daemons to the lifecycle (:mod:`._lifecycle`), built here over the real
effects. The loops it runs are short: the heartbeat is :func:`._lifecycle.tick` plus the
supervisor's own idle exit; the sweep loop is :func:`._lifecycle.sweep_orphans_forever`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from spec_kitty_supervisor_client._models import (
    PROTOCOL_VERSION,
    DaemonView,
    EnsureRequest,
    EnsureResponse,
    Settings,
    StatusResponse,
    StopPath,
    SupervisorView,
)

from . import __version__
from ._early_spawn import EarlyChild
from ._layout import RootLayout
from ._ledger import Ledger
from ._lifecycle import (
    LEGACY_LOCK_WAIT,
    Clock,
    Effects,
    FencedEffects,
    Lifecycle,
    RealEffects,
    StepLock,
    SystemClock,
    ensure,
    lift_quarantine,
    recover,
    retire,
    stop_all,
    sweep_orphans_forever,
    take_over_early_spawn,
    tick,
    watch_exits,
)
from ._logging import log_not_written
from ._policy import supervisor_idle_exit_due
from ._table import DaemonRecord, Table

__all__ = ["Supervisor"]

log = structlog.get_logger("spec_kitty_supervisor")


class Supervisor:
    def __init__(
        self,
        layout: RootLayout,
        settings: Settings,
        *,
        auto_started: bool = False,
        service_manager: str | None = None,
        child_umask: int = -1,
        legacy_lock_wait: float = LEGACY_LOCK_WAIT,
        effects: Effects | None = None,
        clock: Clock | None = None,
        holds_root: Callable[[], bool] | None = None,
        early_child: EarlyChild | None = None,
        handed_request: Mapping[str, Any] | None = None,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.auto_started = auto_started
        self.service_manager = service_manager
        self.pid = os.getpid()
        self.version = __version__
        self.ledger = Ledger(layout.events)
        real: RealEffects | None = None
        if effects is None:
            real = RealEffects(layout, settings, self.ledger)
            real.child_umask = child_umask
            real.legacy_lock_wait = legacy_lock_wait
            if early_child is not None:
                real.hold_early_spawn(early_child)
            effects = real
        #: The ensure this supervisor's starter handed over, when the first stage spawned
        #: its daemon (docs/adr/0013): served right after recovery.
        self._handed = handed_request if early_child is not None and real is not None else None
        if holds_root is not None:
            # Fencing before every act (_fencing): once the lock file is not ours, neither the
            # lifecycle nor the ledger writes anything more into the root.
            self.ledger.may_write = holds_root
            effects = FencedEffects(effects, holds_root, on_lost=self.fenced)
        self.clock: Clock = clock or SystemClock()
        self.lifecycle = Lifecycle(layout.daemon_root, effects, self.clock, settings)
        self.started_at = datetime.fromtimestamp(self.clock.now(), UTC).isoformat(
            timespec="seconds"
        )
        self.open_connections = 0
        self.requests_in_flight = 0
        self.last_activity = self.clock.now()
        self._stop_event = anyio.Event()
        self._last_tick = self.clock.monotonic()
        self.heartbeats = 0  # completed ticks, shown in status: proof that a tick has passed
        self._task_group: TaskGroup | None = None
        self.exit_reason = ""

    @property
    def table(self) -> Table:
        return self.lifecycle.table

    @property
    def lifecycle_lock(self) -> StepLock:
        """Held by every step that changes which daemons run; doctor's reset takes it too."""
        return self.lifecycle.lock

    # ------------------------------------------------------------------ running

    def attach(self, task_group: TaskGroup) -> None:
        """Give the supervisor the task group its watchers and background steps run in."""
        self._task_group = task_group
        self.lifecycle.attach(task_group)
        watch_exits(self.lifecycle)

    async def recover(self) -> None:
        """Start-up: re-adopt what the journal or ``R/sync-daemon`` names, then sweep beside.

        The start-up sweep runs beside serving, not before it: a client's first ensure must
        not wait for 18 orphans to be stopped (ADR 0002).
        """
        await recover(self.lifecycle)
        if self._task_group is not None:
            taking_over = self._handed is not None
            if taking_over:
                # Holds the lifecycle lock before serving starts: the starter's request,
                # the sweep and the heartbeat all come after it.
                await self._task_group.start(take_over_early_spawn, self.lifecycle, self._handed)
                self._handed = None
            # After a take-over the start-up sweep's first look waits for its end (ADR 0020).
            self._task_group.start_soon(
                functools.partial(sweep_orphans_forever, self.lifecycle, after_step=taking_over)
            )

    async def wait_exit(self) -> None:
        await self._stop_event.wait()

    def loop_is_alive(self) -> bool:
        """True while heartbeats complete on time (the service watchdog's condition)."""
        return self.clock.monotonic() - self._last_tick < 2 * self.settings.heartbeat_seconds + 5

    def fenced(self) -> None:
        """The root's lock file is no longer ours: exit at once, leaving our daemons running."""
        if not self.exiting:
            log.error("fenced", reason="the lock file was removed or replaced; exiting")
            self.request_exit("lock lost")

    def request_exit(self, reason: str) -> None:
        self.exit_reason = reason
        self._stop_event.set()

    @property
    def exiting(self) -> bool:
        return self._stop_event.is_set()

    def note_activity(self) -> None:
        self.last_activity = self.clock.now()

    # The API's ConnectionTracker: idle exit counts clients, shutdown drains requests.
    def connection_opened(self) -> None:
        self.open_connections += 1
        self.note_activity()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.note_activity()

    def request_started(self) -> None:
        self.requests_in_flight += 1

    def request_finished(self) -> None:
        self.requests_in_flight -= 1

    def persist(self) -> None:
        """Write the table once more on the way out (idle times live only in memory)."""
        self.lifecycle.write_journal()

    # ------------------------------------------------------------------ the loops

    async def heartbeat_forever(self) -> None:
        while True:
            await self.clock.sleep(self.settings.heartbeat_seconds)
            try:
                await self.heartbeat()
            except Exception as exc:
                log.error("heartbeat_failed", error=repr(exc))
            self._last_tick = self.clock.monotonic()
            self.heartbeats += 1

    async def heartbeat(self) -> None:
        """One tick of the lifecycle, then the supervisor's own idle rule."""
        await tick(self.lifecycle)
        if supervisor_idle_exit_due(
            auto_started=self.auto_started,
            daemons=len(self.table.daemons),
            open_connections=self.open_connections,
            last_activity=self.last_activity,
            now=self.clock.now(),
            idle_exit_seconds=self.settings.idle_exit_seconds,
        ):
            self.ledger.record("idle_exit", reason="no daemon and no client")
            self.request_exit("idle")

    # ------------------------------------------------------------------ requests

    async def ensure(self, request: EnsureRequest) -> EnsureResponse:
        self.note_activity()
        return await ensure(self.lifecycle, request)

    async def retire(self, record: DaemonRecord, reason: str) -> StopPath:
        return await retire(self.lifecycle, record, reason)

    async def stop_all(self, reason: str) -> list[int]:
        return await stop_all(self.lifecycle, reason)

    async def lift_quarantine(self, reason: str) -> None:
        async with self.lifecycle.lock:
            lift_quarantine(self.lifecycle, reason)

    # ------------------------------------------------------------------ views

    def view(self) -> SupervisorView:
        """Who this supervisor is, for ``status`` and ``doctor``."""
        return SupervisorView(
            pid=self.pid,
            version=self.version,
            protocol_version=PROTOCOL_VERSION,
            root=str(self.layout.daemon_root),
            socket=str(self.layout.socket),
            started_at=self.started_at,
            auto_started=self.auto_started,
            service_manager=self.service_manager,
            settings=self.settings,
            heartbeats=self.heartbeats,
        )

    def status(self) -> StatusResponse:
        reason = self.table.quarantine_reason
        return StatusResponse(
            supervisor=self.view(),
            root_state="quarantined" if reason is not None else "ok",
            root_state_reason=reason,
            daemons=self.daemon_views(),
            degraded=self._degraded(),
        )

    def _degraded(self) -> str | None:
        return "; ".join(filter(None, [self.lifecycle.degraded, log_not_written()])) or None

    def status_values(self) -> tuple[object, ...]:
        """Every value :meth:`status` is made of: equal values, equal answers.

        What the ``status`` route remembers its JSON by (``_app``, ADR 0023): under load
        ``status`` is asked as often as ``ensure``, and its answer changes at most once a
        heartbeat (the count, a daemon's last health). Read for every request, compared
        whole. ``tests/unit/test_status_answer.py`` changes each field of the answer and
        checks that these values change with it.
        """
        table = self.table
        layout = self.layout
        return (
            self.pid,
            self.version,
            layout.daemon_root,
            layout.socket,
            self.started_at,
            self.auto_started,
            self.service_manager,
            self.settings,
            self.heartbeats,
            table.quarantine_reason,
            self._degraded(),
            tuple(record.view_values() for record in table.daemons),
        )

    def daemon_views(self) -> list[DaemonView]:
        return [record.view() for record in self.table.daemons]

    def find(self, pid: int | None, port: int | None) -> DaemonRecord | None:
        for record in self.table.daemons:
            if (pid is None or record.pid == pid) and (port is None or record.port == port):
                return record
        return None

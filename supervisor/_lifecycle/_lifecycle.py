"""What every lifecycle step shares: the table, its lock, the effects, the clock, the rules.

The steps themselves live one per module (:mod:`._ensure`, :mod:`._spawning`,
:mod:`._retiring`, :mod:`._exits`, :mod:`._heartbeat`, :mod:`._adoption`) as functions of a
:class:`Lifecycle`. This module holds only what they all need: writing the table (the intent
is written before anything acts on it, and a write that fails undoes the change and stops the
step), recording events, keeping ``R/sync-daemon`` in step with the table, and running steps
in the background.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup

from spec_kitty_supervisor_client._models import EnsureResponse, Settings

from .._errors import ErrorCode, LifecycleError
from .._spawn import ValidatedInterpreters
from .._table import DaemonRecord, Table
from ._decisions import Rules
from ._effects import Clock, Effects, SpawnContext

__all__ = ["Lifecycle", "StepLock", "WaitingRestart", "rules_from"]

log = structlog.get_logger("spec_kitty_supervisor")

_T = TypeVar("_T")


def rules_from(settings: Settings) -> Rules:
    return Rules(
        restart_backoff_seconds=settings.restart_backoff_seconds,
        restart_backoff_max_seconds=settings.restart_backoff_max_seconds,
        quarantine_deaths=settings.quarantine_deaths,
        quarantine_window_seconds=settings.quarantine_window_seconds,
        watchdog_seconds=settings.watchdog_seconds,
        idle_retirement_seconds=settings.idle_retirement_seconds,
    )


@dataclass(frozen=True)
class WaitingRestart:
    """A restart the supervisor could not record or lock: not the daemon's fault."""

    record: DaemonRecord  # the dead daemon's row
    context: SpawnContext  # what it ran with, for the restart to repeat
    code: ErrorCode  # what stood in the way (``NOT_THE_DAEMONS_FAULT`` in :mod:`._exits`)
    blocker: str  # for ``root_file_refused``, the refused file's path


class StepLock:
    """The lifecycle lock, and a way to wait for its release without queueing for it.

    A warm ``ensure`` needs only that no step is under way (the table then answers it
    without an ``await``); it must not queue for the lock itself. Queued, a stream of them
    behind a heartbeat's locked moment was a convoy: the lock passed from one waiting request
    to the next, a turn of the event loop each, and every request arriving meanwhile saw it
    held and queued too; under 100 clients on a busy machine it lasted seconds (docs/adr/0018).
    :meth:`wait_released` wakes every such request at the next release, to look again.
    """

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._released = anyio.Event()

    def locked(self) -> bool:
        return self._lock.locked()

    def statistics(self) -> anyio.LockStatistics:
        return self._lock.statistics()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        released, self._released = self._released, anyio.Event()
        released.set()

    async def wait_released(self) -> None:
        """Return at the lock's next release (another step may hold it again by then)."""
        await self._released.wait()


class Lifecycle:
    """One root's daemons: who is current, who is retiring, and what the steps remember."""

    def __init__(
        self, daemon_root: Path, effects: Effects, clock: Clock, settings: Settings
    ) -> None:
        self.daemon_root = daemon_root
        self.effects = effects
        self.clock = clock
        self.settings = settings
        self.rules = rules_from(settings)
        self.table = Table()
        #: Held by every step that changes which daemons run (and by doctor's reset).
        self.lock = StepLock()
        self.interpreters = ValidatedInterpreters()
        #: What each daemon was started with, so that a restart repeats it.
        self.contexts: dict[int, SpawnContext] = {}
        self.death_times: list[float] = []
        #: Heartbeats in a row each daemon did not answer (in memory: a fresh supervisor
        #: starts counting again, as the watchdog's window does).
        self.missed_heartbeats: dict[int, int] = {}
        #: Why the last write of the table or of ``R/sync-daemon`` failed (a full disk, a
        #: read-only file system, a permission), None once a write succeeds again. The
        #: heartbeat retries the writes while it is set.
        self.writes_failing: str | None = None
        #: Which upstream file in the root is refused (see ``Effects.refused_root_files``), as
        #: the last heartbeat saw it.
        self.refused_files: str | None = None
        self.quarantined_python: str | None = None
        #: A restart the supervisor could not record or lock (not the daemon's fault): the
        #: dead daemon's row and context, for the heartbeat to start it again (:mod:`._exits`).
        self.restart_waiting: WaitingRestart | None = None
        #: Daemons being stopped now (a second retirement of one would race the first).
        self.retiring_now: set[int] = set()
        #: Why no daemon may be spawned any more (``stop --children``: the supervisor stops
        #: with its daemons, and a spawn after them would outlive it); None while it serves.
        self.closed: str | None = None
        #: Daemons some client has been given; the first answer after an adoption says so.
        self.handed_out: set[int] = set()
        #: The daemon spawned at start-up for the ensure the supervisor's starter handed over
        #: (docs/adr/0013): the first client it is handed to is told it was ``spawned``.
        self.spawned_for_starter: int | None = None
        #: The last answer an ``ensure`` gave from the table, and the values it says
        #: (:mod:`._ensure`): given again, the same object, while those values are the same.
        self.last_answer: tuple[tuple[object, ...], EnsureResponse] | None = None
        #: Called with each pid that enters the table, to watch for its exit (:mod:`._exits`).
        self.watch: Callable[[int], None] = lambda pid: None
        self._task_group: TaskGroup | None = None

    def attach(self, task_group: TaskGroup) -> None:
        self._task_group = task_group

    def background(self, step: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``step`` beside the caller; its failure is logged, never raised into the loop."""
        if self._task_group is None:
            raise RuntimeError("the lifecycle runs background steps only once attached")

        async def guarded() -> None:
            try:
                await step(*args)
            except Exception as exc:  # a background step must never take the supervisor down
                log.error("background_task_failed", task=step.__name__, error=repr(exc))

        self._task_group.start_soon(guarded)

    @property
    def degraded(self) -> str | None:
        """Why the supervisor cannot do all it should now, for ``status``; None when it can.

        Three causes, each ending by itself once the cause is gone: the journal or
        ``R/sync-daemon`` cannot be written (nothing that needs that write is done), the
        ledger's file misses events (kept in memory; nothing is refused for it), or one of
        upstream's files in the root is refused (no spawn or sweep that needs it).
        """
        reasons = [self.writes_failing, self.effects.ledger_behind(), self.refused_files]
        return "; ".join(reason for reason in reasons if reason) or None

    def check_root_files(self) -> None:
        """Look at upstream's files in the root again; log when what is refused changes."""
        refused = self.effects.refused_root_files()
        if refused != self.refused_files:
            if refused is None:
                log.info("root_files_fine", reason="no upstream file in the root is refused")
            else:
                log.error("root_file_refused", reason=refused)
            self.refused_files = refused

    def iso_now(self) -> str:
        return datetime.fromtimestamp(self.clock.now(), UTC).isoformat(timespec="seconds")

    # -------------------------------------------------------------- the journal

    def change(self, transition: Callable[[], _T]) -> _T:
        """Apply a table transition and write it (atomically) before anyone acts on it.

        When the journal cannot be written the transition is undone and the error raised:
        the caller must then not act (a retirement that was not written is not started).
        """
        before = self.table.snapshot()
        result = transition()
        try:
            self.written(lambda: self.effects.save_table(self.table))
        except LifecycleError:
            self.table.rewind(before)
            raise
        return result

    def written(self, write: Callable[[], None]) -> None:
        """Do one write of the table or the state file, and note whether writes work now."""
        try:
            write()
        except LifecycleError as exc:
            if exc.code == "state_not_writable":
                if self.writes_failing is None:
                    log.error("degraded", reason=str(exc))
                self.writes_failing = str(exc)
            raise
        if self.writes_failing is not None:
            log.info("degraded_left", reason="a write succeeded again")
            self.writes_failing = None

    def settle(self, transition: Callable[[], _T]) -> _T:
        """Apply a transition that reflects what already happened (a daemon is gone).

        The table must follow the world even when the journal cannot: a failed write is
        logged, and the journal catches up at the next write.
        """
        result = transition()
        self.write_journal()
        return result

    def write_journal(self) -> None:
        try:
            self.written(lambda: self.effects.save_table(self.table))
        except LifecycleError as exc:
            log.error("journal_not_written", error=str(exc))

    def event(self, kind: str, record: DaemonRecord, reason: str) -> None:
        self.effects.record(
            kind,
            pid=record.pid,
            port=record.port,
            package_version=record.package_version,
            reason=reason,
        )

    def forget(self, record: DaemonRecord) -> None:
        """A daemon that has left: out of the table, reaped, its context dropped."""
        self.settle(lambda: self.table.remove(record))
        self.effects.release(record.pid)
        self.contexts.pop(record.pid, None)
        self.missed_heartbeats.pop(record.pid, None)

    def context_of(self, record: DaemonRecord) -> SpawnContext:
        return self.contexts.get(record.pid) or self.effects.default_spawn_context(
            record.package_version
        )

    def remember_context(self, pid: int) -> None:
        context = self.effects.read_spawn_context(pid)
        if context is not None:
            self.contexts[pid] = context

    # -------------------------------------------------------------- R/sync-daemon

    async def sync_legacy_state(self) -> None:
        """Make ``R/sync-daemon`` name the current daemon, or nothing: never a pid that is not a
        live, verified daemon of the root (upstream CLIs SIGKILL what it names unchecked)."""
        async with self.effects.legacy_lock():
            self.write_legacy_state_locked()

    def write_legacy_state_locked(self) -> None:
        """Call holding ``R/sync-daemon.lock``: name the current daemon, or nothing."""
        effects = self.effects
        current = self.table.current
        recorded = effects.read_legacy_state()
        if current is not None:
            if recorded is None or (recorded.pid, recorded.port, recorded.token) != (
                current.pid,
                current.port,
                current.token,
            ):
                self.written(
                    lambda: effects.write_legacy_state(current.port, current.token, current.pid)
                )
            return
        if recorded is None:
            if effects.legacy_state_exists():
                self.written(effects.remove_legacy_state)  # not in upstream's shape
            return
        # Upstream CLIs SIGKILL the recorded pid unchecked: never leave one of ours that is
        # retiring, nor a dead one. A live daemon we do not own is left for adoption.
        ours = self.table.by_pid(recorded.pid) is not None
        if ours or effects.read_identity(recorded.pid) is None:
            self.written(effects.remove_legacy_state)

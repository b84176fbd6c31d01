"""The heartbeat: one tick, read top to bottom as observe, decide, record, act.

1. Observe: upstream's files in the root (``lstat`` only), and every daemon's health, in
   parallel and without the lock (a probe may take the whole health timeout; an ``ensure``
   must not wait for it).
2. Record what was seen, under the lock: healthy or unresponsive, and whether an upstream CLI
   replaced our daemon in ``R/sync-daemon`` (:func:`._adoption.follow_recorded`).
3. While the journal or the state file cannot be written, write them again: the first tick
   whose writes succeed ends that part of degraded, before anything is decided.
4. Decide for the current daemon (:func:`._decisions.decide_current`): the watchdog, or idle
   retirement. The intent is written (the ledger's ``watchdog``, the table's ``retiring``)
   before anything acts; a retirement whose intent cannot be written is not started, and
   the watchdog waits while the journal cannot be written (a replacement nobody can record
   would be stopped at once).
5. Act in the background, so that the next tick is never late: retirements, restarts. The
   events the ledger's file missed are appended, and a restart that waited for the
   supervisor (:func:`._exits.restart_waiting`) starts again once its cause is gone.
"""

from __future__ import annotations

import anyio
import structlog

from .._errors import LifecycleError
from .._table import DaemonRecord
from ._adoption import follow_recorded
from ._decisions import decide_current
from ._effects import Health
from ._exits import restart_waiting, restart_wedged
from ._lifecycle import Lifecycle
from ._retiring import retire_later

__all__ = ["tick"]

log = structlog.get_logger("spec_kitty_supervisor")


async def tick(lifecycle: Lifecycle) -> None:
    lifecycle.check_root_files()
    records = list(lifecycle.table.daemons)
    answers = await _probe_all(lifecycle, records)
    async with lifecycle.lock:
        now = lifecycle.clock.now()
        _record_health(lifecycle, records, answers, now)
        try:
            await follow_recorded(lifecycle)
        except LifecycleError as exc:
            # An upstream CLI holds R/sync-daemon.lock, or it is refused: the rest of the
            # tick (the watchdog, idleness, repairs) must still run; the next tick follows.
            log.error("follow_recorded_failed", error=str(exc))
        for record in lifecycle.table.retiring:
            retire_later(lifecycle, record, "retirement resumed")
        if lifecycle.writes_failing is not None:
            await _retry_writes(lifecycle)
        _decide_for_current(lifecycle, now)
    if lifecycle.effects.ledger_behind() is not None:
        lifecycle.effects.catch_up_ledger()
    restart_waiting(lifecycle)


async def _retry_writes(lifecycle: Lifecycle) -> None:
    """While writes fail, try them again each tick: degraded ends by itself once they work.

    The journal first, then ``R/sync-daemon`` (a spawn whose state-file write failed left it
    naming the old daemon, or nothing).
    """
    lifecycle.write_journal()
    if lifecycle.writes_failing is not None:
        return
    try:
        await lifecycle.sync_legacy_state()
    except LifecycleError as exc:
        log.error("state_file_not_written", error=str(exc))


async def _probe_all(lifecycle: Lifecycle, records: list[DaemonRecord]) -> dict[int, Health | None]:
    answers: dict[int, Health | None] = {}

    async def probe(record: DaemonRecord) -> None:
        answers[record.pid] = await lifecycle.effects.probe(record.port)

    async with anyio.create_task_group() as group:
        for record in records:
            group.start_soon(probe, record)
    return answers


def _record_health(
    lifecycle: Lifecycle,
    records: list[DaemonRecord],
    answers: dict[int, Health | None],
    now: float,
) -> None:
    table = lifecycle.table
    for record in records:
        if table.by_pid(record.pid) is not record:
            continue  # it left the table while we probed
        answer = answers.get(record.pid)
        if answer is not None and answer.token == record.token:
            table.mark_healthy(record, lifecycle.iso_now())
            lifecycle.missed_heartbeats.pop(record.pid, None)
            continue
        missed = lifecycle.missed_heartbeats
        missed[record.pid] = missed.get(record.pid, 0) + 1
        if table.mark_unresponsive(record, now):
            lifecycle.event("unresponsive", record, "no health answer with its token")


def _decide_for_current(lifecycle: Lifecycle, now: float) -> None:
    table = lifecycle.table
    current = table.current
    if current is None:
        return
    verdict = decide_current(
        current.unresponsive_since, current.last_ensure_at, now, lifecycle.rules
    )
    if verdict.action == "restart_wedged":
        if lifecycle.writes_failing is not None:
            # Its replacement could not be recorded, so it would be stopped at once: wait
            # for writes (this tick retries them first); the wedged one keeps its place.
            return
        lifecycle.death_times.append(now)
        lifecycle.event("watchdog", current, verdict.reason)
        lifecycle.background(restart_wedged, lifecycle, current)
    elif verdict.action == "retire_idle":
        try:
            lifecycle.change(lambda: table.mark_retiring(current))
        except LifecycleError as exc:
            log.error("idle_retirement_not_written", pid=current.pid, error=str(exc))
            return
        retire_later(lifecycle, current, verdict.reason)

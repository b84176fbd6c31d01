"""Exits and restarts: notice a daemon's end at once, then retire, adopt, restart or quarantine.

Each exit is one story: observe (the exit status, ``R/sync-daemon``, the owner record),
decide (:func:`._decisions.classify_exit`, :func:`._decisions.after_death`), record the
intent (the table without the daemon, the ledger's ``died``/``retired``, the quarantine),
act (a restart after its backoff, in the background), record the outcome (``restarted`` or
``restart_failed``, which counts as another death).

A restart that fails because the *supervisor* cannot record or lock it (its writes fail,
upstream's lock is refused or busy) is not another death: the daemon did not die again, and
a full disk must not quarantine the root. It waits in ``Lifecycle.restart_waiting`` and the
heartbeat starts it again once the supervisor is no longer degraded by it.
"""

from __future__ import annotations

import random

import structlog

from .._errors import LifecycleError
from .._table import DaemonRecord
from ._adoption import adopt_recorded
from ._decisions import Quarantine, after_death, classify_exit, describe_exit
from ._effects import SpawnContext
from ._lifecycle import Lifecycle, WaitingRestart
from ._spawning import start_current

__all__ = ["NOT_THE_DAEMONS_FAULT", "on_exit", "restart_waiting", "restart_wedged", "watch_exits"]

log = structlog.get_logger("spec_kitty_supervisor")

#: Why a restart can fail that says nothing about the daemon: the supervisor could not record
#: it, or could not take (or open) upstream's lock.
NOT_THE_DAEMONS_FAULT = frozenset({"state_not_writable", "root_file_refused", "legacy_lock_busy"})


def watch_exits(lifecycle: Lifecycle, rng: random.Random | None = None) -> None:
    """From now on, every daemon that enters the table is watched for its exit."""

    def watch(pid: int) -> None:
        lifecycle.background(_wait_and_handle, lifecycle, pid, rng)

    lifecycle.watch = watch


async def _wait_and_handle(lifecycle: Lifecycle, pid: int, rng: random.Random | None) -> None:
    returncode = await lifecycle.effects.wait_exit(pid)
    await on_exit(lifecycle, pid, returncode, rng)


async def on_exit(
    lifecycle: Lifecycle, pid: int, returncode: int | None, rng: random.Random | None = None
) -> None:
    async with lifecycle.lock:
        record = lifecycle.table.by_pid(pid)
        if record is None or record.role == "retiring":
            return  # a retirement we started; retiring records it
        # What it ran with, taken before forgetting it: a restart repeats it exactly.
        context = lifecycle.context_of(record)
        lifecycle.forget(record)
        try:
            await lifecycle.sync_legacy_state()
        except LifecycleError as exc:
            # The restart below needs the same lock and writes, and waits for them if it
            # must; the heartbeat brings R/sync-daemon in step meanwhile.
            log.error("state_file_not_synced", pid=pid, error=str(exc))
        # An unmodified CLI of another version kills our daemon and records its own; that
        # is a hand-over to adopt, not a crash to restart (no spawn/kill thrash).
        replacement = await adopt_recorded(lifecycle)
        if replacement is not None:
            lifecycle.event(
                "replaced_upstream",
                record,
                f"{describe_exit(returncode)}; an upstream CLI recorded pid "
                f"{replacement.pid} ({replacement.package_version}), adopted",
            )
            return
        owner_names_it = lifecycle.effects.owner_record_names(record.pid, record.port)
        if classify_exit(returncode, owner_names_it) == "retired":
            lifecycle.event(
                "retired", record, f"exited by itself ({describe_exit(returncode)}); not restarted"
            )
            return
        lifecycle.event("died", record, describe_exit(returncode))
        _count_death(lifecycle, record, context, describe_exit(returncode), rng)


def _count_death(
    lifecycle: Lifecycle,
    record: DaemonRecord,
    context: SpawnContext,
    cause: str,
    rng: random.Random | None,
) -> None:
    """Count a death; restart after a backoff, or quarantine the root after too many."""
    now = lifecycle.clock.now()
    lifecycle.death_times.append(now)
    verdict = after_death(lifecycle.death_times, now, lifecycle.rules, cause, rng)
    if isinstance(verdict, Quarantine):
        try:
            lifecycle.change(lambda: lifecycle.table.quarantine(verdict.reason))
        except LifecycleError as exc:
            log.error("quarantine_not_written", error=str(exc))
        lifecycle.quarantined_python = record.python
        lifecycle.effects.record(
            "quarantined",
            pid=record.pid,
            package_version=record.package_version,
            reason=verdict.reason,
        )
        return
    lifecycle.background(_restart_after, lifecycle, record, context, verdict.delay, rng)


async def _restart_after(
    lifecycle: Lifecycle,
    record: DaemonRecord,
    context: SpawnContext,
    delay: float,
    rng: random.Random | None,
) -> None:
    await lifecycle.clock.sleep(delay)
    async with lifecycle.lock:
        table = lifecycle.table
        if table.current is not None or table.quarantine_reason is not None:
            return  # an ensure (or an upstream CLI we adopted) already replaced it
        if lifecycle.closed is not None:
            return  # the supervisor stops with its daemons: no restart, and no death counted
        if await adopt_recorded(lifecycle) is not None:
            return
        try:
            new = await start_current(
                lifecycle,
                record.python,
                record.resolved_python,
                record.package_version,
                context,
                reason=f"restart after pid {record.pid} died",
            )
        except LifecycleError as exc:
            lifecycle.event("restart_failed", record, str(exc))
            if exc.code in NOT_THE_DAEMONS_FAULT:
                blocker = str(exc.details.get("path", "")) if exc.details else ""
                lifecycle.restart_waiting = WaitingRestart(record, context, exc.code, blocker)
                return
            _count_death(lifecycle, record, context, f"restart failed: {exc}", rng)
            return
        lifecycle.event("restarted", new, f"replaces pid {record.pid} after {delay:.1f} s backoff")


def restart_waiting(lifecycle: Lifecycle) -> None:
    """Start again a restart that waited for the supervisor (see the module docstring), once
    nothing it needs is known to fail; an ensure that spawned meanwhile makes it moot."""
    waiting = lifecycle.restart_waiting
    if waiting is None:
        return
    if waiting.code == "state_not_writable" and lifecycle.writes_failing is not None:
        return  # it would spawn a daemon only to stop it again
    refused = lifecycle.refused_files
    if waiting.code == "root_file_refused" and refused and waiting.blocker in refused:
        return  # that file is still refused ("" is in any: then any refusal keeps it waiting)
    lifecycle.restart_waiting = None
    lifecycle.background(_restart_after, lifecycle, waiting.record, waiting.context, 0.0, None)


async def restart_wedged(lifecycle: Lifecycle, record: DaemonRecord) -> None:
    """Make-before-break: a fresh daemon first, then the wedged one is stopped (it is ours)."""
    async with lifecycle.lock:
        if lifecycle.table.current is not record:
            return
        try:
            await start_current(
                lifecycle,
                record.python,
                record.resolved_python,
                record.package_version,
                lifecycle.context_of(record),
                reason=f"pid {record.pid} stopped answering health (watchdog)",
            )
        except LifecycleError as exc:
            lifecycle.effects.record("restart_failed", pid=record.pid, reason=str(exc))

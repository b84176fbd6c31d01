"""Adoption and recovery: taking over daemons we did not just spawn, after proving them ours.

At start-up the precedence is: every verified journal entry, else the verified daemon
``R/sync-daemon`` names, else nothing until an ``ensure`` asks. While running, an unmodified
CLI of another version may replace our daemon and record its own: we verify and adopt that
one instead of fighting it (no spawn/kill thrash), and retire ours.
"""

from __future__ import annotations

import structlog

from .._errors import LifecycleError
from .._table import DaemonRecord
from ._lifecycle import Lifecycle
from ._retiring import retire_later

__all__ = ["adopt_recorded", "follow_recorded", "recover"]

log = structlog.get_logger("spec_kitty_supervisor")


async def recover(lifecycle: Lifecycle) -> None:
    """Start-up: re-prove the journal's daemons, else adopt the recorded one."""
    lifecycle.check_root_files()
    async with lifecycle.lock:
        await _recover_locked(lifecycle)


async def _recover_locked(lifecycle: Lifecycle) -> None:
    effects = lifecycle.effects
    loaded = effects.load_table()
    if loaded.problem:
        effects.record("state_corrupt", reason=f"{loaded.problem}; moved to {loaded.moved_to}")
    table = lifecycle.table
    if loaded.table.quarantine_reason is not None:
        table.quarantine(loaded.table.quarantine_reason)
    for record in loaded.table.daemons:
        verdict = await effects.verify(record.identity, record.port, record.token)
        if verdict.identity is None:
            lifecycle.event("journal_dropped", record, verdict.reason)
            continue
        record.origin = "adopted"
        # The journal's last ensure may be stale by the time we crashed; a re-adopted
        # daemon gets a whole idle window rather than an early retirement.
        record.last_ensure_at = lifecycle.clock.now()
        table.restore(record, answered=verdict.answered, now=lifecycle.clock.now())
        if record.role == "retiring":
            retire_later(lifecycle, record, "was retiring when the supervisor stopped")
        lifecycle.remember_context(record.pid)
        lifecycle.watch(record.pid)
        lifecycle.event("adopted", record, f"re-adopted from the journal ({verdict.reason})")
    if table.current is None:
        await adopt_recorded(lifecycle)
    lifecycle.write_journal()
    try:
        await lifecycle.sync_legacy_state()
    except LifecycleError as exc:
        # A busy or refused R/sync-daemon.lock, a state file that cannot be written: the
        # supervisor still serves (status says why), and the heartbeat syncs it later.
        log.error("state_file_not_synced", error=str(exc))


async def adopt_recorded(lifecycle: Lifecycle) -> DaemonRecord | None:
    """Adopt the daemon ``R/sync-daemon`` names, as current, when it proves to be this root's.

    A current daemon it supersedes becomes retiring (the caller retires it).
    """
    effects = lifecycle.effects
    recorded = effects.read_legacy_state()
    if recorded is None or lifecycle.table.by_pid(recorded.pid) is not None:
        return None
    identity = effects.read_identity(recorded.pid)
    if identity is None:
        return None
    verdict = await effects.verify(identity, recorded.port, recorded.token)
    if verdict.identity is None or not verdict.answered:
        effects.record(
            "adoption_refused",
            pid=recorded.pid,
            port=recorded.port,
            reason=f"R/sync-daemon names it but {verdict.reason}",
        )
        return None
    now_iso = lifecycle.iso_now()
    record = DaemonRecord(
        pid=identity.pid,
        process_start=identity.start,
        uid=identity.uid,
        port=recorded.port,
        token=recorded.token,
        package_version=verdict.package_version or "unknown",
        python=verdict.python,
        resolved_python=verdict.resolved_python,
        origin="adopted",
        state="healthy",
        role="current",
        started_at=now_iso,
        last_healthy_at=now_iso,
        last_ensure_at=lifecycle.clock.now(),
    )
    lifecycle.change(lambda: lifecycle.table.add_current(record))
    lifecycle.remember_context(record.pid)
    lifecycle.watch(record.pid)
    lifecycle.event("adopted", record, f"the daemon R/sync-daemon names ({verdict.reason})")
    return record


async def follow_recorded(lifecycle: Lifecycle) -> None:
    """Keep ``R/sync-daemon`` and the table in agreement with what upstream CLIs did.

    When a CLI of another version replaced our daemon and recorded its own, we verify and
    adopt that one instead of fighting it; when the file vanished while our daemon is
    healthy, we write it again. Call under the lifecycle lock.
    """
    recorded = lifecycle.effects.read_legacy_state()
    current = lifecycle.table.current
    if recorded is None:
        if current is not None and current.state == "healthy":
            await lifecycle.sync_legacy_state()
        return
    if lifecycle.table.by_pid(recorded.pid) is not None:
        return
    if current is None:
        await adopt_recorded(lifecycle)
        return
    adopted = await adopt_recorded(lifecycle)
    if adopted is None:
        # It names something we cannot verify: never leave that for upstream to kill.
        await lifecycle.sync_legacy_state()
        return
    lifecycle.effects.record(
        "version_skew" if adopted.package_version != current.package_version else "adopted",
        pid=adopted.pid,
        port=adopted.port,
        package_version=adopted.package_version,
        reason=(
            f"an upstream CLI replaced pid {current.pid} ({current.package_version}) "
            "with this daemon"
        ),
    )
    reason = f"superseded by upstream pid {adopted.pid}"
    retire_later(lifecycle, current, reason)

"""Retiring daemons: the state file first, then a graceful stop, then forget.

``R/sync-daemon`` stops naming a daemon before it is stopped: upstream CLIs SIGKILL the pid
it names without checking who that is.

A retirement is written (role ``retiring``) before the daemon is stopped, so a supervisor that
dies half-way resumes it after re-adopting the daemon. One daemon is retired by one task at a
time: a second request for the same pid is a conflict, not a second stop sequence.
"""

from __future__ import annotations

import anyio

from spec_kitty_supervisor_client._models import StopPath

from .._errors import LifecycleError
from .._table import DaemonRecord
from ._effects import StopRefused
from ._lifecycle import Lifecycle

__all__ = ["retire", "retire_later", "retire_now", "stop_all"]


async def retire(lifecycle: Lifecycle, record: DaemonRecord, reason: str) -> StopPath:
    """The ``retire`` request: write the intent under the lock, then stop the daemon."""
    async with lifecycle.lock:
        lifecycle.change(lambda: lifecycle.table.mark_retiring(record))
    return await retire_now(lifecycle, record, reason)


async def retire_now(lifecycle: Lifecycle, record: DaemonRecord, reason: str) -> StopPath:
    """Stop a daemon the table already says is retiring."""
    if record.pid in lifecycle.retiring_now:
        raise LifecycleError("already_retiring", f"pid {record.pid} is being retired")
    lifecycle.retiring_now.add(record.pid)
    return await _retire_claimed(lifecycle, record, reason)


def retire_later(lifecycle: Lifecycle, record: DaemonRecord, reason: str) -> None:
    """Retire in the background. The daemon is claimed now, not when the task starts, so
    that a heartbeat resuming retirements in the meantime does not start a second one."""
    if record.pid in lifecycle.retiring_now:
        return
    lifecycle.retiring_now.add(record.pid)
    lifecycle.background(_retire_claimed, lifecycle, record, reason)


async def _retire_claimed(lifecycle: Lifecycle, record: DaemonRecord, reason: str) -> StopPath:
    try:
        return await _stop_and_forget(lifecycle, record, reason)
    finally:
        lifecycle.retiring_now.discard(record.pid)


async def _stop_and_forget(lifecycle: Lifecycle, record: DaemonRecord, reason: str) -> StopPath:
    await lifecycle.sync_legacy_state()
    try:
        stop_path = await lifecycle.effects.stop(record.identity, record.port, record.token)
    except StopRefused as exc:
        # Its pid now names another process (or another user's): it is no longer ours to
        # stop, and no longer ours to track.
        lifecycle.forget(record)
        lifecycle.event("retire_abandoned", record, str(exc))
        raise LifecycleError("retire_failed", str(exc)) from None
    except TimeoutError as exc:
        lifecycle.event("retire_failed", record, str(exc))
        raise LifecycleError("retire_failed", str(exc)) from None
    lifecycle.forget(record)
    lifecycle.event("retired", record, f"{reason}; stopped by {stop_path}")
    return stop_path


async def stop_all(lifecycle: Lifecycle, reason: str) -> list[int]:
    """``stop --children``: every daemon retiring (written first), all stopped in parallel.

    From then on nothing is spawned (:func:`._spawning.start_current` refuses): the
    supervisor exits once its daemons are stopped, and must leave none behind.
    """
    async with lifecycle.lock:
        lifecycle.closed = reason
        lifecycle.change(lifecycle.table.retire_all)
        stopped: list[int] = []

        async def stop_one(record: DaemonRecord) -> None:
            if record.pid in lifecycle.retiring_now:
                # A retirement already under way: wait for it rather than race it.
                await _wait_forgotten(lifecycle, record)
                if lifecycle.table.by_pid(record.pid) is None:
                    stopped.append(record.pid)
                return
            try:
                await retire_now(lifecycle, record, reason)
                stopped.append(record.pid)
            except LifecycleError:
                pass  # the ledger says why; the others are still stopped

        async with anyio.create_task_group() as group:
            for record in list(lifecycle.table.daemons):
                group.start_soon(stop_one, record)
        await lifecycle.sync_legacy_state()
        return stopped


async def _wait_forgotten(lifecycle: Lifecycle, record: DaemonRecord) -> None:
    with anyio.move_on_after(4 * lifecycle.settings.stop_grace_seconds + 5):
        while lifecycle.table.by_pid(record.pid) is not None:
            await lifecycle.clock.sleep(0.05)

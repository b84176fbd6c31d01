"""Orphan sweeps on the supervisor's schedule: at start-up, then every ``sweep_seconds``.

*What* a sweep stops and *how* is :mod:`.._doctor` and :mod:`.._sweep` (reached through
:meth:`._effects.Effects.sweep_orphans`); this module only decides *when*, and serialises a
sweep with every other step that changes which daemons run.
"""

from __future__ import annotations

import anyio
import structlog

from ._lifecycle import Lifecycle

__all__ = ["sweep_orphans", "sweep_orphans_forever"]

log = structlog.get_logger("spec_kitty_supervisor")


async def sweep_orphans(lifecycle: Lifecycle, *, looked: bool = False) -> None:
    """Stop this root's ``safe_auto`` orphans; never the supervisor's own daemons.

    ``looked``: the caller's own look, without locks, has just found some (the start-up
    sweep's, beside the take-over); it is not repeated before the locks are taken.
    """
    try:
        # Look first without any lock: the usual sweep finds nothing, and then an ensure
        # never waits for it. What it does find is observed again under the locks.
        if not looked and not await lifecycle.effects.orphans_to_sweep(lifecycle.table):
            return
        async with anyio.create_task_group() as group, lifecycle.lock:
            # Under the locks the sweep observes again and asks each orphan to stop;
            # it reports started once all are asked. Their deaths (about a second for
            # 18 interpreters exiting on two cores) need no lock: an ensure, a spawn
            # or a retirement meanwhile is not held up by them.
            await group.start(lifecycle.effects.sweep_orphans, lifecycle.table)
    except Exception as exc:  # a sweep must never take the supervisor down
        log.error("orphan_sweep_failed", error=repr(_the_one(exc)))


def _the_one(exc: Exception) -> Exception:
    """The failure itself when a task group wrapped it alone (anyio's groups always wrap)."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def sweep_orphans_forever(lifecycle: Lifecycle, *, after_step: bool = False) -> None:
    """Sweep now, then every ``sweep_seconds``.

    ``after_step``: a step holds the lifecycle lock now, at start-up the take-over of the first
    stage's daemon (docs/adr/0020). The first look still comes at once, beside that step (what
    it finds waits for the lock anyway, and the doctor's imports overlap the step); when it
    finds nothing, the supervisor looks once more when the step has let the lock go (without
    queueing for it). A predecessor killed just after its own early spawn leaves a daemon
    nobody recorded, still starting, on the port the take-over's child wants too: by the end of
    the take-over one of the two holds that port and the other has exited, so a daemon of the
    predecessor still alive then listens, and that look sees it. Seen by neither, it would run
    beside the current daemon until the next sweep.
    """
    looked = False
    if after_step:
        try:
            looked = found = await lifecycle.effects.orphans_to_sweep(lifecycle.table)
        except Exception:
            found = True  # the sweep below looks again and logs what fails
        if not found and lifecycle.lock.locked():
            await lifecycle.lock.wait_released()
    while True:
        # What the first look found is observed again under the locks anyway: a second look
        # without them (its classification: some 30 ms with 18 orphans) would only delay the
        # asking, and with it the orphans' deaths.
        await sweep_orphans(lifecycle, looked=looked)
        looked = False
        await lifecycle.clock.sleep(lifecycle.settings.sweep_seconds)

"""Cleanup sweeps: stopping the listeners classification says a sweep may stop, a few at a time.

*What* may be stopped is decided by the classification (:func:`records_to_sweep`); *how* by
:func:`._signals.stop_gracefully` (token shutdown, then SIGTERM, then SIGKILL, the identity
re-checked before each signal, death confirmed by pid). A sweep adds what it owes on top:

* the family boundary is checked before anything, the token shutdown included: an HTTP
  request to a port outside ``[9400, 9450)`` would already be acting on another family;
* ``R/sync-daemon`` is rewritten or removed before a daemon it names is stopped, since
  upstream CLIs SIGKILL the recorded pid without checking who it is;
* the daemon ``R/sync-daemon`` records is spared when it is ``safe_auto``: a supervisor
  adopts it through its lifecycle instead of fighting the CLI that recorded it;
* at most :func:`exits_at_once` daemons are exiting at any moment (docs/adr/0024). A daemon's
  exit is mostly CPU (its interpreter's last garbage collections, about 0.1 s); eighteen at
  once on two CPUs each cost half as much again, and finished later than in small waves. The
  next daemon is asked as soon as one is gone, or once one has had :data:`SLOT_SECONDS` since
  its stop began, so that a stubborn daemon never holds up the rest for its whole escalation.

Callers hold ``R/sync-daemon.lock`` from observation until the sweep has *condemned* the
daemons it stops (``sent``): from then on the state file names none of them. No CLI records a
daemon it did not spawn, and a supervisor adopts only what that file records, so a condemned
daemon cannot become the root's daemon again; the asking and the deaths go on without the
lock, each step re-checking the process's identity right before it acts (a token shutdown only
to a process still alive, which is still the one holding its port; every signal by pidfd).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from spec_kitty_supervisor_client._models import (
    FailedRecord,
    ResetRequest,
    ResetResult,
    SkippedRecord,
    SweptRecord,
)

from ._classification import records_to_sweep
from ._discovery import Observation
from ._legacy_state import (
    LegacyRecord,
    read_legacy_state,
    remove_legacy_state,
    write_legacy_state,
)
from ._signals import SignalRefused, SignalTarget, check_family_boundary, stop_gracefully

__all__ = [
    "SLOT_SECONDS",
    "SweepPlan",
    "exits_at_once",
    "plan_sweep",
    "release_state_file",
    "sweep",
]

#: A daemon whose stop began this long ago and is still alive no longer keeps the next one
#: waiting: its exit is slow (a loaded machine) or stuck (its escalation goes on, on its own
#: time).
SLOT_SECONDS = 1.0


def exits_at_once() -> int:
    """How many swept daemons may be exiting at once: one per CPU we may run on, and one more.

    An exit is mostly CPU, after a short wait of the daemon's own (its server notices the
    shutdown at its next 0.05 s poll); the one more keeps every CPU busy through those waits.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call on this platform
        cpus = os.cpu_count() or 1
    return cpus + 1


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will stop, and the candidates it leaves alone (with why)."""

    to_stop: list[Observation] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)


def plan_sweep(observations: Iterable[Observation], request: ResetRequest) -> SweepPlan:
    """Choose what to stop: ``safe_auto``; ``operator_required`` only when forced or confirmed.

    ``supervised`` and ``never_touch`` listeners are never chosen, whatever the request says;
    upstream's ``skipped[]`` lists only the candidates left alone, and so does ours.
    """
    observed = list(observations)
    chosen_pids = {
        record.pid
        for record in records_to_sweep(
            (item.record for item in observed),
            force=request.force,
            confirmed_pids=request.confirmed_pids,
        )
    }
    plan = SweepPlan()
    for item in observed:
        record = item.record
        if record.cleanup_class not in ("safe_auto", "operator_required"):
            continue
        if record.is_recorded_singleton and record.cleanup_class == "safe_auto":
            # Only a running supervisor classifies the recorded daemon at all; its lifecycle
            # adopts it. Killing it would fight the CLI that recorded it (spawn/kill thrash).
            plan.skipped.append(_skipped(item, "is_recorded_singleton"))
        elif record.pid is not None and record.pid in chosen_pids:
            plan.to_stop.append(item)
        else:
            plan.skipped.append(_skipped(item, record.skip_reason))
    return plan


def _skipped(item: Observation, reason: str | None) -> SkippedRecord:
    record = item.record
    return SkippedRecord(
        pid=record.pid, port=record.port, cleanup_class=record.cleanup_class, skip_reason=reason
    )


def release_state_file(
    legacy_state: Path, stopping: Collection[int], replacement: LegacyRecord | None = None
) -> None:
    """Make ``R/sync-daemon`` name none of ``stopping`` before they are stopped; hold its lock.

    It then names ``replacement`` (the supervisor's current daemon) when there is one, and
    is removed otherwise: a stale pid there is what upstream CLIs SIGKILL unchecked.
    """
    recorded = read_legacy_state(legacy_state)
    if recorded is None or recorded.pid not in stopping:
        return
    if replacement is not None and replacement.pid not in stopping:
        write_legacy_state(legacy_state, replacement.port, replacement.token, replacement.pid)
    else:
        remove_legacy_state(legacy_state)


async def sweep(
    observations: Iterable[Observation],
    request: ResetRequest,
    *,
    legacy_state: Path,
    grace: float,
    replacement: LegacyRecord | None = None,
    http_timeout: float = 1.0,
    sent: Callable[[], object] = lambda: None,
    may_ask: Callable[[], bool] | None = None,
    at_once: int | None = None,
    slot_seconds: float = SLOT_SECONDS,
) -> ResetResult:
    """Stop what :func:`plan_sweep` chooses, ``at_once`` at a time; report it in upstream's shape.

    Call it holding ``R/sync-daemon.lock`` until ``sent`` is called: once, when the state file
    names none of the chosen daemons, before any of them is asked (see the module docstring),
    or at once when there is nothing to stop. It returns when every one is gone or failed.
    ``may_ask``, when given, is consulted before each daemon is asked: once it says no (a
    supervisor that lost its root), the rest are not asked and are reported failed.
    ``at_once`` defaults to :func:`exits_at_once`. With ``request.dry_run`` nothing is
    stopped or written: ``swept`` stays empty and ``skipped`` lists what would be left alone.
    """
    plan = plan_sweep(observations, request)
    if request.dry_run or not plan.to_stop:
        sent()
        return ResetResult(skipped=plan.skipped)
    release_state_file(
        legacy_state, {item.identity.pid for item in plan.to_stop if item.identity}, replacement
    )
    sent()
    outcomes: dict[int, SweptRecord | FailedRecord] = {}
    places = anyio.Semaphore(at_once if at_once is not None else exits_at_once())

    async def stop_one(index: int, item: Observation, slot: _Slot) -> None:
        async with anyio.create_task_group() as timer:
            timer.start_soon(slot.free_after, slot_seconds)
            try:
                outcomes[index] = await _stop(item, grace, http_timeout)
            finally:
                slot.free()
                timer.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        for index, item in enumerate(plan.to_stop):
            await places.acquire()
            if may_ask is not None and not may_ask():
                places.release()
                for late in range(index, len(plan.to_stop)):
                    outcomes[late] = _not_asked(plan.to_stop[late])
                break
            group.start_soon(stop_one, index, item, _Slot(places))
    ordered = [outcomes[index] for index in range(len(plan.to_stop))]
    return ResetResult(
        swept=[o for o in ordered if isinstance(o, SweptRecord)],
        skipped=plan.skipped,
        failed=[o for o in ordered if isinstance(o, FailedRecord)],
    )


class _Slot:
    """A place among the daemons exiting at once, given back once: at the death, or in time."""

    def __init__(self, places: anyio.Semaphore) -> None:
        self._places = places
        self._held = True

    def free(self) -> None:
        if self._held:
            self._held = False
            self._places.release()

    async def free_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        self.free()


def _not_asked(item: Observation) -> FailedRecord:
    record = item.record
    return FailedRecord(
        pid=record.pid,
        port=record.port,
        failure_reason="not asked: the sweep may act no more (its supervisor lost the root)",
    )


async def _stop(item: Observation, grace: float, http_timeout: float) -> SweptRecord | FailedRecord:
    record = item.record
    try:
        check_family_boundary(record.port)
        identity = item.identity
        if identity is None or record.pid is None or identity.pid != record.pid:
            raise SignalRefused(f"pid {record.pid} has no identity to re-check at signal time")
        if identity.uid != os.getuid():
            raise SignalRefused(f"pid {identity.pid} belongs to uid {identity.uid}, not to us")
        # The token proves nothing by itself (any local process can read it from health);
        # it is used only where the answer was proven to be this listener's own.
        token = item.health_token if record.self_report_matches_listener else None
        cleanup_path = await stop_gracefully(
            SignalTarget(identity, record.port), token, grace, http_timeout
        )
    except SignalRefused as exc:
        return FailedRecord(pid=record.pid, port=record.port, failure_reason=f"refused: {exc}")
    except TimeoutError as exc:
        return FailedRecord(pid=record.pid, port=record.port, failure_reason=str(exc))
    return SweptRecord(
        pid=identity.pid,
        port=record.port,
        package_version=record.package_version,
        protocol_version=record.protocol_version,
        cleanup_path=cleanup_path,
        reason=f"{record.cleanup_class}: {record.why}",
    )

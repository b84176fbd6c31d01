"""Cleanup sweeps: stopping, all at once, the listeners classification says a sweep may stop.

*What* may be stopped is decided by the classification (:func:`records_to_sweep`); *how* by
:func:`._signals.stop_gracefully` (token shutdown, then SIGTERM, then SIGKILL, the identity
re-checked before each signal, death confirmed by pid). A sweep adds what it owes on top:

* the family boundary is checked before anything, the token shutdown included: an HTTP
  request to a port outside ``[9400, 9450)`` would already be acting on another family;
* ``R/sync-daemon`` is rewritten or removed before a daemon it names is stopped, since
  upstream CLIs SIGKILL the recorded pid without checking who it is;
* the daemon ``R/sync-daemon`` records is spared when it is ``safe_auto``: a supervisor
  adopts it through its lifecycle instead of fighting the CLI that recorded it;
* every daemon is stopped in parallel, so a sweep lasts as long as its slowest daemon.

Callers hold ``R/sync-daemon.lock`` from observation until every daemon has been asked to
stop (``sent``), so that no upstream CLI spawns, records or kills a daemon in between. Waiting
for the deaths may go on without it: the state file names none of them any more, and each
escalation (SIGTERM, SIGKILL) re-checks the process's identity right before the signal.
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
    "SweepPlan",
    "plan_sweep",
    "release_state_file",
    "sweep",
]


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
) -> ResetResult:
    """Stop what :func:`plan_sweep` chooses, in parallel; report it in upstream's shape.

    Call it holding ``R/sync-daemon.lock`` until ``sent`` is called: once, when every chosen
    daemon has been asked to stop (or failed, or was found gone), or at once when there is
    nothing to stop (see the module docstring). It returns when every one is gone or failed.
    With ``request.dry_run`` nothing is stopped or written: ``swept`` stays empty and
    ``skipped`` lists what would be left alone.
    """
    plan = plan_sweep(observations, request)
    if request.dry_run or not plan.to_stop:
        sent()
        return ResetResult(skipped=plan.skipped)
    release_state_file(
        legacy_state, {item.identity.pid for item in plan.to_stop if item.identity}, replacement
    )
    outcomes: dict[int, SweptRecord | FailedRecord] = {}
    not_yet_asked = set(range(len(plan.to_stop)))

    def asked(index: int) -> None:
        if index in not_yet_asked:
            not_yet_asked.discard(index)
            if not not_yet_asked:
                sent()

    async def stop_one(index: int, item: Observation) -> None:
        try:
            outcomes[index] = await _stop(item, grace, http_timeout, sent=lambda: asked(index))
        finally:
            asked(index)  # refused or gone before anything was asked: nothing left to send

    async with anyio.create_task_group() as group:
        for index, item in enumerate(plan.to_stop):
            group.start_soon(stop_one, index, item)
    ordered = [outcomes[index] for index in range(len(plan.to_stop))]
    return ResetResult(
        swept=[o for o in ordered if isinstance(o, SweptRecord)],
        skipped=plan.skipped,
        failed=[o for o in ordered if isinstance(o, FailedRecord)],
    )


async def _stop(
    item: Observation,
    grace: float,
    http_timeout: float,
    *,
    sent: Callable[[], object] = lambda: None,
) -> SweptRecord | FailedRecord:
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
            SignalTarget(identity, record.port), token, grace, http_timeout, sent=sent
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

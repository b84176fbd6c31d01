"""The ``ensure`` path: answer from the table when the current daemon serves, else spawn.

The warm path is spec-kitty's hot path: the interpreter is validated once (a ``stat`` when it
is already known), the version policy decides once, and when nothing is changing which daemon
runs (the lifecycle lock is free) the answer comes from the table without an ``await``, so it
cannot interleave with another task; while a step holds the lock, a request the table would
answer waits for the lock's release, not in the lock's queue, and looks again. Otherwise the
request waits for the lock and decides again on the table as it is then: a spawn
(make-before-break, :mod:`._spawning`), unless the root is quarantined. ``replace``
(``spec-kitty doctor restart-daemon``) skips the table's answer and always spawns,
make-before-break, for the caller's interpreter, version, environment and cwd.

A current daemon that missed two heartbeats in a row is not handed out on trust: the request
takes the lock and probes it once more; when that probe fails too, the request starts its
replacement (make-before-break) and answers with the new daemon. The watchdog still replaces
a daemon nobody asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from spec_kitty_supervisor_client._models import EnsureAction, EnsureRequest, EnsureResponse

from .._errors import LifecycleError
from .._policy import EnsureDecision, decide_ensure
from .._spawn import check_root_supported, child_environment, resolve_working_directory
from .._table import DaemonRecord
from .._versions import EstablishedEnsure
from ._decisions import ensure_verdict_for_current, quarantine_lifts_for
from ._effects import SpawnContext
from ._lifecycle import Lifecycle
from ._spawning import start_current

__all__ = ["ensure", "lift_quarantine", "take_over_early_spawn"]

_SPAWN_ACTIONS: dict[str, EnsureAction] = {
    "spawn": "spawned",
    "upgrade": "upgraded",
    "replace": "replaced",
}


async def ensure(lifecycle: Lifecycle, wire_request: EnsureRequest) -> EnsureResponse:
    resolved_python = lifecycle.interpreters.resolve(wire_request.python)
    # The version is the interpreter's installed one, never the client's word (_versions).
    request = await lifecycle.effects.establish_version(wire_request, resolved_python)
    while not request.replace:
        current = lifecycle.table.current
        if current is None or _doubted(lifecycle, current):
            break
        if lifecycle.lock.locked():
            # A step is under way: look again once it ends, without queueing for the lock
            # (a stream of warm requests queued on it is a convoy; StepLock says why).
            await lifecycle.lock.wait_released()
            continue
        decision = _decide(lifecycle, request, current)
        answer = _answer_from_table(lifecycle, request, decision, current)
        if answer is not None:
            return answer
        break
    async with lifecycle.lock:
        return await _ensure_locked(lifecycle, request, resolved_python)


def _decide(
    lifecycle: Lifecycle, request: EstablishedEnsure, current: DaemonRecord | None
) -> EnsureDecision:
    """The policy's verdict for ``request`` against ``current`` (the table's, read just now)."""
    return decide_ensure(
        current.package_version if current else None,
        current.python if current else None,
        request.package_version,
        request.python,
        lifecycle.settings.version_policy,
    )


def _answer_from_table(
    lifecycle: Lifecycle,
    request: EstablishedEnsure,
    decision: EnsureDecision,
    current: DaemonRecord | None,
) -> EnsureResponse | None:
    """The answer when ``current`` (the table's, read in this step) serves this request as it
    is; else None."""
    if current is None or decision.verdict not in ("reuse", "keep_newer"):
        return None
    current.last_ensure_at = lifecycle.clock.now()
    action: EnsureAction = "reused" if decision.verdict == "reuse" else "kept_newer"
    if current.pid not in lifecycle.handed_out:
        # The first client this daemon serves since we adopted it (after our own restart,
        # a hand-over, or from an upstream CLI) learns it was adopted. A daemon we restarted
        # after a death, or that replaced a wedged one, was spawned: it is reused.
        lifecycle.handed_out.add(current.pid)
        if action == "reused" and current.origin == "adopted":
            action = "adopted"
        elif action == "reused" and current.pid == lifecycle.spawned_for_starter:
            # Spawned at start-up for the ensure this supervisor's starter handed over
            # (take_over_early_spawn): its first client learns it was spawned for it.
            action = "spawned"
    # The answer is a function of these values alone (the view's fields, the action, the
    # reason): while none changed, the last answer object is given again, and its JSON with it
    # (``_app``). Every decision above was made again for this request all the same.
    said = (action, decision.reason, current.view_values())
    last = lifecycle.last_answer
    if last is not None and last[0] == said:
        return last[1]
    answer = EnsureResponse(
        action=action, daemon=current.view(with_token=True), message=decision.reason
    )
    lifecycle.last_answer = (said, answer)
    return answer


async def _ensure_locked(
    lifecycle: Lifecycle, request: EstablishedEnsure, resolved_python: str
) -> EnsureResponse:
    if quarantine_lifts_for(lifecycle.quarantined_python, request.python):
        lift_quarantine(lifecycle, f"ensure with another interpreter ({request.python})")
    # The table may have changed while this request waited for the lock: decide on it now.
    decision = _decide(lifecycle, request, lifecycle.table.current)
    if request.replace and lifecycle.table.current is not None:
        # `doctor restart-daemon`: a new daemon even though the current one would serve.
        decision = EnsureDecision("replace", "the caller asked for a restart (replace)")
    current = lifecycle.table.current
    if current is not None and decision.verdict in ("reuse", "keep_newer"):
        replacement = await _replace_if_wedged(lifecycle, current)
        if replacement is not None:
            lifecycle.handed_out.add(replacement.pid)
            return EnsureResponse(
                action="replaced",
                daemon=replacement.view(with_token=True),
                message=f"pid {current.pid} stopped answering health; replaced",
            )
    answer = _answer_from_table(lifecycle, request, decision, lifecycle.table.current)
    if answer is not None:
        return answer
    if lifecycle.table.quarantine_reason is not None:
        raise LifecycleError(
            "root_quarantined",
            f"the root is quarantined: {lifecycle.table.quarantine_reason}. Run "
            "`spec-kitty-supervisor restart` or ensure with another interpreter.",
        )
    new = await _spawn_for(lifecycle, request, resolved_python, decision)
    lifecycle.handed_out.add(new.pid)
    return EnsureResponse(
        action=_SPAWN_ACTIONS[decision.verdict],
        daemon=new.view(with_token=True),
        message=decision.reason,
    )


def _doubted(lifecycle: Lifecycle, current: DaemonRecord) -> bool:
    missed = lifecycle.missed_heartbeats.get(current.pid, 0)
    return ensure_verdict_for_current(missed, None) != "serve"


async def _replace_if_wedged(lifecycle: Lifecycle, current: DaemonRecord) -> DaemonRecord | None:
    """Probe a doubted current daemon once more; replace it when that probe fails too.

    None when the daemon serves (it was not doubted, or it answers again: a daemon busy for a
    moment is kept). Call under the lifecycle lock.
    """
    missed = lifecycle.missed_heartbeats.get(current.pid, 0)
    if ensure_verdict_for_current(missed, None) == "serve":
        return None
    health = await lifecycle.effects.probe(current.port)
    answers = health is not None and health.token == current.token
    if ensure_verdict_for_current(missed, answers) == "serve":
        lifecycle.table.mark_healthy(current, lifecycle.iso_now())
        lifecycle.missed_heartbeats.pop(current.pid, None)
        return None
    reason = f"missed {missed} heartbeats and the probe of an ensure; replacing"
    lifecycle.death_times.append(lifecycle.clock.now())
    lifecycle.event("watchdog", current, reason)
    return await start_current(
        lifecycle,
        current.python,
        current.resolved_python,
        current.package_version,
        lifecycle.context_of(current),
        reason=f"pid {current.pid} stopped answering health ({reason})",
    )


async def _spawn_for(
    lifecycle: Lifecycle, request: EstablishedEnsure, resolved_python: str, decision: EnsureDecision
) -> DaemonRecord:
    daemon_root = lifecycle.daemon_root
    env = child_environment(request.env, daemon_root, request.package_version)
    check_root_supported(env["HOME"], daemon_root, request.package_version)
    cwd = resolve_working_directory(request.cwd, daemon_root)
    return await start_current(
        lifecycle,
        request.python,
        resolved_python,
        request.package_version,
        SpawnContext(env=env, cwd=cwd),
        reason=decision.reason,
    )


def lift_quarantine(lifecycle: Lifecycle, reason: str) -> None:
    """``restart``, or an ensure with another interpreter: restarts and spawns resume.

    Call under the lifecycle lock.
    """
    if lifecycle.table.quarantine_reason is None:
        return
    lifecycle.change(lifecycle.table.lift_quarantine)
    lifecycle.quarantined_python = None
    lifecycle.death_times.clear()
    lifecycle.effects.record("quarantine_lifted", reason=reason)


async def take_over_early_spawn(
    lifecycle: Lifecycle,
    handed: Mapping[str, Any],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve, at start-up, the ensure the supervisor's starter handed over (docs/adr/0013).

    Started after recovery, it holds the lifecycle lock before it reports started, so no
    client's request, sweep or heartbeat acts before it. The request is decided as any
    ensure would be; when that is a spawn, its first attempt is the daemon the first stage
    spawned (``Effects.take_early_spawn``): health, journal and state file follow as for any
    spawn. Whatever the outcome, a first-stage daemon nothing took over is stopped and
    ``R/sync-daemon.lock`` released (``Effects.end_early_spawn``). The starter's own request
    arrives after this and is answered from the table: ``spawned`` the first time.
    """
    async with lifecycle.lock:
        task_status.started()
        try:
            request = EnsureRequest.model_validate(handed)
            if lifecycle.table.current is None and lifecycle.table.quarantine_reason is None:
                resolved_python = lifecycle.interpreters.resolve(request.python)
                established = await lifecycle.effects.establish_version(request, resolved_python)
                decision = _decide(lifecycle, established, lifecycle.table.current)
                if decision.verdict == "spawn":
                    new = await _spawn_for(lifecycle, established, resolved_python, decision)
                    lifecycle.spawned_for_starter = new.pid
        except Exception as exc:  # the starter's own request meets the same refusal
            lifecycle.effects.record(
                "early_spawn_unused", reason=f"the handed ensure was not served: {exc}"
            )
        finally:
            await lifecycle.effects.end_early_spawn()

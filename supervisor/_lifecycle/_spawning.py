"""Make-before-break: a new daemon is healthy before the table or the state file name it.

Spawn on a free port, wait until it answers health with its own token, then, under
``R/sync-daemon.lock``, write the table (new current, old retiring) and the state file, and
only then retire the old daemon in the background. There is never a moment without a healthy
current daemon. A spawn that never gets healthy is stopped and retried on another port.
"""

from __future__ import annotations

from spec_kitty_supervisor_client._releases import effective_daemon_version

from .._errors import LifecycleError
from .._spawn import SpawnError, first_free_port
from .._table import DaemonRecord
from ._decisions import describe_exit
from ._effects import SpawnContext, SpawnedChild, SpawnOrder
from ._lifecycle import Lifecycle
from ._retiring import retire_later

__all__ = ["SPAWN_PORT_ATTEMPTS", "start_current"]

#: How many ports a spawn tries before giving up (a stranger may take a port between our
#: check and the daemon's bind).
SPAWN_PORT_ATTEMPTS = 3


async def start_current(
    lifecycle: Lifecycle,
    python: str,
    resolved_python: str,
    package_version: str,
    context: SpawnContext,
    *,
    reason: str,
) -> DaemonRecord:
    """Spawn, wait healthy, switch table and state file, retire the old. Call under the lock."""
    if lifecycle.closed is not None:
        # An ensure that waited for the lock while `stop --children` held it: the daemons
        # were stopped for the supervisor's exit, and one spawned now would be left running.
        raise LifecycleError(
            "supervisor_exiting", f"the supervisor is shutting down ({lifecycle.closed}); retry"
        )
    async with lifecycle.effects.legacy_lock():
        new = await _spawn_healthy(lifecycle, python, resolved_python, package_version, context)
        try:
            old = lifecycle.change(lambda: lifecycle.table.add_current(new))
        except LifecycleError:
            # The journal cannot name it, so it must not run: a supervisor that crashed now
            # would never know it.
            await lifecycle.effects.abandon(_as_child(new))
            raise
        lifecycle.contexts[new.pid] = context
        lifecycle.watch(new.pid)
        lifecycle.write_legacy_state_locked()
    lifecycle.event("spawned", new, reason)
    if old is not None:
        retire_later(lifecycle, old, f"superseded by pid {new.pid} ({reason})")
    return new


def _as_child(record: DaemonRecord) -> SpawnedChild:
    return SpawnedChild(identity=record.identity, port=record.port, token=record.token)


def _pick_port(lifecycle: Lifecycle, avoid: set[int]) -> int:
    taken = avoid | {d.port for d in lifecycle.table.daemons}
    return first_free_port(lifecycle.settings.port_range, taken, lifecycle.effects.port_is_free)


async def _spawn_healthy(
    lifecycle: Lifecycle,
    python: str,
    resolved_python: str,
    package_version: str,
    context: SpawnContext,
) -> DaemonRecord:
    effects = lifecycle.effects
    tried: set[int] = set()
    last_error: SpawnError | None = None
    # The daemon the supervisor's first stage spawned for this very request, if any, is the
    # first attempt: it is waited for, recorded or abandoned exactly as a spawn of ours.
    early = effects.take_early_spawn(python, resolved_python, package_version, context)
    for _ in range(SPAWN_PORT_ATTEMPTS):
        if early is not None:
            child, early = early, None
            port = child.port
            tried.add(port)
            effects.record(
                "spawned_early",
                pid=child.identity.pid,
                port=port,
                package_version=package_version,
                reason="spawned before the supervisor's imports, for the ensure its starter "
                "handed over",
            )
        else:
            port = _pick_port(lifecycle, tried)
            tried.add(port)
            order = SpawnOrder(python, resolved_python, package_version, port, context)
            try:
                child = await effects.spawn(order)
            except SpawnError as exc:
                # Exited before we could even read its start (a bind lost at once, a broken
                # interpreter): as much a failed spawn as one that never became healthy.
                last_error = exc
                effects.record(
                    "spawn_failed", port=port, package_version=package_version, reason=str(exc)
                )
                continue
        health = await effects.wait_healthy(child, lifecycle.settings.spawn_timeout_seconds)
        if health is None:
            ended = await effects.abandon(child)
            last_error = SpawnError(
                "spawn_failed",
                f"the {package_version} daemon on port {port} did not become healthy "
                f"({describe_exit(ended.returncode)})",
                log_tail=ended.log_tail,
            )
            effects.record(
                "spawn_failed",
                pid=child.identity.pid,
                port=port,
                package_version=package_version,
                reason=str(last_error),
            )
            continue
        now_iso = lifecycle.iso_now()
        return DaemonRecord(
            pid=child.identity.pid,
            process_start=child.identity.start,
            uid=child.identity.uid,
            port=child.port,
            token=child.token,
            package_version=effective_daemon_version(health.package_version, package_version),
            python=python,
            resolved_python=resolved_python,
            origin="spawned",
            state="healthy",
            role="current",
            started_at=now_iso,
            last_healthy_at=now_iso,
            last_ensure_at=lifecycle.clock.now(),
        )
    assert last_error is not None
    raise last_error

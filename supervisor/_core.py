"""The supervisor: one owner per daemon root for every sync daemon's lifecycle.

The reconcile loop reads as the story of one tick: observe (probe every daemon's health,
notice exits), decide (the pure rules of :mod:`._policy`), act (spawn, adopt, retire,
restart), record (the table, the legacy state file, the ledger). Every decision that changes
who is current runs under ``_lifecycle`` so that two requests never race each other, and
under upstream's ``R/sync-daemon.lock`` when an unmodified spec-kitty CLI could race us.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskGroup

from spec_kitty_supervisor_client._models import (
    PROTOCOL_VERSION,
    DaemonView,
    EnsureAction,
    EnsureRequest,
    EnsureResponse,
    Settings,
    StatusResponse,
    StopPath,
    SupervisorView,
)
from spec_kitty_supervisor_client._releases import UNKNOWN_VERSION, effective_daemon_version
from spec_kitty_supervisor_client._terms import in_family_range

from . import __version__
from ._doctor import sweep_root, sweep_would_act
from ._errors import LifecycleError
from ._identity import ProcessIdentity, read_identity
from ._installed import interpreter_release
from ._layout import RootLayout
from ._ledger import Ledger
from ._legacy_state import (
    LegacyLockTimeout,
    hold_legacy_lock,
    read_legacy_state,
    remove_legacy_state,
    write_legacy_state,
)
from ._policy import (
    deaths_within,
    decide_ensure,
    idle_retirement_due,
    restart_delay,
    should_quarantine,
    supervisor_idle_exit_due,
    watchdog_expired,
)
from ._probe import HealthAnswer, probe_health
from ._signals import SignalRefused, SignalTarget, stop_gracefully
from ._spawn import (
    SpawnError,
    ValidatedInterpreters,
    check_root_supported,
    child_environment,
    log_tail,
    resolve_working_directory,
    spawn_daemon,
)
from ._table import DaemonRecord, Table, load_table, save_table
from ._verify import read_process_context, verify_daemon
from ._versions import EstablishedEnsure, InstalledVersions

__all__ = ["LifecycleError", "Supervisor"]

log = structlog.get_logger("spec_kitty_supervisor")

#: How long we wait for an upstream CLI to release ``R/sync-daemon.lock`` (it may hold it
#: for ~21 s while it waits for a daemon's health).
LEGACY_LOCK_WAIT = 30.0
#: How many ports a spawn tries before giving up (a stranger may take a port between our
#: check and the daemon's bind).
SPAWN_PORT_ATTEMPTS = 3


_SPAWN_ACTIONS: dict[str, EnsureAction] = {
    "spawn": "spawned",
    "upgrade": "upgraded",
    "replace": "replaced",
}


@dataclass
class SpawnContext:
    """What a daemon was started with, kept in memory so a restart repeats it exactly."""

    env: dict[str, str]
    cwd: str


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown (adopted daemon)"
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    def __init__(
        self,
        layout: RootLayout,
        settings: Settings,
        *,
        auto_started: bool = False,
        service_manager: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.auto_started = auto_started
        self.service_manager = service_manager
        self.clock = clock
        self.pid = os.getpid()
        self.started_at = _utc_now()
        self.version = __version__
        self.table = Table()
        self.ledger = Ledger(layout.events)
        self.open_connections = 0
        self.requests_in_flight = 0
        self.last_activity = clock()
        self._lifecycle = anyio.Lock()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._pidfds: dict[int, int] = {}
        self._contexts: dict[int, SpawnContext] = {}
        self._deaths: list[float] = []
        self._quarantined_python: str | None = None
        self._retiring_now: set[int] = set()
        self._interpreters = ValidatedInterpreters()
        self._versions = InstalledVersions()
        self._handed_out: set[int] = set()
        self._task_group: TaskGroup | None = None
        self._stop_event = anyio.Event()
        self._last_tick = time.monotonic()
        self.exit_reason = ""
        #: The umask daemons get: the user's, not the supervisor's private 077.
        self.child_umask = -1
        self.legacy_lock_wait = LEGACY_LOCK_WAIT

    # ------------------------------------------------------------------ running

    def attach(self, task_group: TaskGroup) -> None:
        """Give the supervisor the task group its watchers and background steps run in."""
        self._task_group = task_group

    async def wait_exit(self) -> None:
        await self._stop_event.wait()

    def loop_is_alive(self) -> bool:
        """True while heartbeats complete on time (the service watchdog's condition)."""
        return time.monotonic() - self._last_tick < 2 * self.settings.heartbeat_seconds + 5

    def request_exit(self, reason: str) -> None:
        self.exit_reason = reason
        self._stop_event.set()

    @property
    def exiting(self) -> bool:
        return self._stop_event.is_set()

    def note_activity(self) -> None:
        self.last_activity = self.clock()

    # The API's ConnectionTracker: idle exit counts clients, shutdown drains requests.
    def connection_opened(self) -> None:
        self.open_connections += 1
        self.note_activity()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.note_activity()

    def request_started(self) -> None:
        self.requests_in_flight += 1

    def request_finished(self) -> None:
        self.requests_in_flight -= 1

    def _record_event(self, kind: str, record: DaemonRecord, reason: str) -> None:
        self.ledger.record(
            kind,
            pid=record.pid,
            port=record.port,
            package_version=record.package_version,
            reason=reason,
        )

    def _persist(self) -> None:
        save_table(self.layout.state, self.table, self.pid)

    def persist(self) -> None:
        """Write the table once more on the way out (idle times live only in memory)."""
        self._persist()

    # ------------------------------------------------------------------ start-up

    async def recover(self) -> None:
        """Start-up precedence: verified journal entries, else the verified recorded daemon."""
        loaded = load_table(self.layout.state)
        if loaded.problem:
            log.warning("state_file_corrupt", problem=loaded.problem, moved_to=str(loaded.moved_to))
            self.ledger.record(
                "state_corrupt", reason=f"{loaded.problem}; moved to {loaded.moved_to}"
            )
        self.table.quarantine_reason = loaded.table.quarantine_reason
        for record in loaded.table.daemons:
            verdict = await verify_daemon(
                record.identity,
                record.port,
                self.layout.daemon_root,
                self.settings.health_timeout_seconds,
                expected_token=record.token,
            )
            if verdict.identity is None:
                self._record_event("journal_dropped", record, verdict.reason)
                continue
            record.origin = "adopted"
            # The journal's last ensure may be stale by the time we crashed; a re-adopted
            # daemon gets a whole idle window rather than an early retirement.
            record.last_ensure_at = self.clock()
            if record.role == "retiring":
                self._background(self._retire, record, "was retiring when the supervisor stopped")
            record.state = "healthy" if verdict.health is not None else "unresponsive"
            if verdict.health is None:
                record.unresponsive_since = self.clock()
            self.table.daemons.append(record)
            self._remember_context(record.pid)
            self._watch(record.pid)
            self._record_event("adopted", record, f"re-adopted from the journal ({verdict.reason})")
        if self.table.current is None:
            await self._adopt_recorded_singleton()
        self._persist()
        await self._sync_legacy_state()
        if self._task_group is not None:
            # The start-up sweep runs beside serving, not before it: a client's first ensure
            # must not wait for 18 orphans to be stopped.
            self._task_group.start_soon(self.sweep_orphans_forever)

    async def _adopt_recorded_singleton(
        self, replacing: DaemonRecord | None = None
    ) -> DaemonRecord | None:
        """Adopt the daemon ``R/sync-daemon`` names when it proves to be this root's.

        ``replacing`` is the current daemon that the recorded one supersedes; it becomes
        retiring (the caller retires it).
        """
        recorded = read_legacy_state(self.layout.legacy_state)
        if recorded is None or self.table.by_pid(recorded.pid) is not None:
            return None
        identity = read_identity(recorded.pid)
        if identity is None:
            return None
        verdict = await verify_daemon(
            identity,
            recorded.port,
            self.layout.daemon_root,
            self.settings.health_timeout_seconds,
            expected_token=recorded.token,
        )
        if verdict.identity is None or verdict.health is None:
            self.ledger.record(
                "adoption_refused",
                pid=recorded.pid,
                port=recorded.port,
                reason=f"R/sync-daemon names it but {verdict.reason}",
            )
            return None
        cmdline = verdict.cmdline
        python = cmdline.executable if cmdline and cmdline.executable else ""
        record = DaemonRecord(
            pid=identity.pid,
            process_start=identity.start,
            uid=identity.uid,
            port=recorded.port,
            token=recorded.token,
            # A 3.1 daemon says "unknown": its interpreter's installed release is its version.
            package_version=effective_daemon_version(
                verdict.health.package_version, interpreter_release(python) or UNKNOWN_VERSION
            ),
            python=python,
            resolved_python=(cmdline.exec_marker if cmdline else None) or python,
            origin="adopted",
            state="healthy",
            role="current",
            started_at=_utc_now(),
            last_healthy_at=_utc_now(),
            last_ensure_at=self.clock(),
        )
        if replacing is not None:
            replacing.role = "retiring"
            replacing.state = "retiring"
        self.table.daemons.append(record)
        self._persist()
        self._remember_context(record.pid)
        self._watch(record.pid)
        self._record_event("adopted", record, f"the daemon R/sync-daemon names ({verdict.reason})")
        return record

    def _remember_context(self, pid: int) -> None:
        context = read_process_context(pid)
        if context is not None:
            self._contexts[pid] = SpawnContext(env=context[0], cwd=context[1])

    @contextlib.asynccontextmanager
    async def _legacy_lock(self) -> AsyncIterator[None]:
        """Upstream's ``R/sync-daemon.lock``; a CLI holding it too long is a conflict."""
        try:
            async with hold_legacy_lock(self.layout.legacy_lock, self.legacy_lock_wait):
                yield
        except LegacyLockTimeout as exc:
            raise LifecycleError(
                "legacy_lock_busy", f"an upstream spec-kitty CLI is busy: {exc}; retry"
            ) from None

    async def _sync_legacy_state(self) -> None:
        """Make ``R/sync-daemon`` name the current daemon, or nothing (DESIGN rule 6)."""
        async with self._legacy_lock():
            self._write_legacy_state_locked()

    def _write_legacy_state_locked(self) -> None:
        """Call with ``R/sync-daemon.lock`` held: name the current daemon, or nothing."""
        current = self.table.current
        recorded = read_legacy_state(self.layout.legacy_state)
        if current is not None:
            if recorded is None or (recorded.pid, recorded.port, recorded.token) != (
                current.pid,
                current.port,
                current.token,
            ):
                write_legacy_state(
                    self.layout.legacy_state, current.port, current.token, current.pid
                )
            return
        if recorded is None:
            if self.layout.legacy_state.exists():
                remove_legacy_state(self.layout.legacy_state)  # not in upstream's shape
            return
        # Upstream CLIs SIGKILL the recorded pid unchecked: never leave one of ours that is
        # retiring, nor a dead one. A live daemon we do not own is left for adoption.
        if self.table.by_pid(recorded.pid) is not None or read_identity(recorded.pid) is None:
            remove_legacy_state(self.layout.legacy_state)

    # ------------------------------------------------------------------ ensure

    async def ensure(self, wire_request: EnsureRequest) -> EnsureResponse:
        self.note_activity()
        # The version is the interpreter's installed one, never the client's word (_versions).
        resolved_python = self._resolve_interpreter(wire_request.python)
        request = await self._versions.establish(wire_request, resolved_python)
        if not self._lifecycle.locked():
            # Nothing is changing which daemon runs, so the table is the answer: computed
            # without an await, it cannot interleave with another task (the warm hot path).
            answer = self._answer_from_table(request)
            if answer is not None:
                return answer
        async with self._lifecycle:
            return await self._ensure_locked(request)

    def _resolve_interpreter(self, python: str) -> str:
        return self._interpreters.resolve(python)

    def _answer_from_table(self, request: EstablishedEnsure) -> EnsureResponse | None:
        """The answer when the current daemon serves this request as it is; else None."""
        current = self.table.current
        if current is None:
            return None
        self._resolve_interpreter(request.python)
        decision = decide_ensure(
            current.package_version,
            current.python,
            request.package_version,
            request.python,
            self.settings.version_policy,
        )
        if decision.verdict not in ("reuse", "keep_newer"):
            return None
        current.last_ensure_at = self.clock()
        action: EnsureAction = "reused" if decision.verdict == "reuse" else "kept_newer"
        if current.pid not in self._handed_out:
            # The first client this daemon serves since we adopted it (after our own restart,
            # a hand-over, or from an upstream CLI) learns it was adopted.
            self._handed_out.add(current.pid)
            if action == "reused":
                action = "adopted"
        return EnsureResponse(
            action=action, daemon=current.view(with_token=True), message=decision.reason
        )

    async def _ensure_locked(self, request: EstablishedEnsure) -> EnsureResponse:
        resolved_python = self._resolve_interpreter(request.python)
        if self.table.quarantine_reason is not None:
            self._maybe_lift_quarantine(request)
        answer = self._answer_from_table(request)
        if answer is not None:
            return answer
        current = self.table.current
        decision = decide_ensure(
            current.package_version if current else None,
            current.python if current else None,
            request.package_version,
            request.python,
            self.settings.version_policy,
        )
        if self.table.quarantine_reason is not None:
            raise LifecycleError(
                "root_quarantined",
                f"the root is quarantined: {self.table.quarantine_reason}. Run "
                "`spec-kitty-supervisor restart` or ensure with another interpreter.",
            )
        env = child_environment(request.env, self.layout.daemon_root, request.package_version)
        check_root_supported(env["HOME"], self.layout.daemon_root, request.package_version)
        cwd = resolve_working_directory(request.cwd, self.layout.daemon_root)
        new = await self._start_current(
            request.python,
            resolved_python,
            request.package_version,
            SpawnContext(env=env, cwd=cwd),
            reason=decision.reason,
        )
        self._handed_out.add(new.pid)
        return EnsureResponse(
            action=_SPAWN_ACTIONS[decision.verdict],
            daemon=new.view(with_token=True),
            message=decision.reason,
        )

    def _maybe_lift_quarantine(self, request: EstablishedEnsure) -> None:
        current_python = self._quarantined_python
        if current_python is not None and request.python != current_python:
            self.lift_quarantine(f"ensure with another interpreter ({request.python})")

    def lift_quarantine(self, reason: str) -> None:
        if self.table.quarantine_reason is None:
            return
        self.table.quarantine_reason = None
        self._quarantined_python = None
        self._deaths.clear()
        self.ledger.record("quarantine_lifted", reason=reason)
        self._persist()

    async def _start_current(
        self,
        python: str,
        resolved_python: str,
        package_version: str,
        context: SpawnContext,
        *,
        reason: str,
    ) -> DaemonRecord:
        """Make-before-break: spawn, wait healthy, switch table and state file, retire the old."""
        async with self._legacy_lock():
            new = await self._spawn_healthy(python, resolved_python, package_version, context)
            old = self.table.current
            if old is not None:
                old.role = "retiring"
                old.state = "retiring"
            self.table.daemons.append(new)
            self._persist()
            self._write_legacy_state_locked()
        self._record_event("spawned", new, reason)
        if old is not None:
            self._background(self._retire, old, f"superseded by pid {new.pid} ({reason})")
        return new

    def _pick_port(self, avoid: set[int]) -> int:
        low, high = self.settings.port_range
        taken = avoid | {d.port for d in self.table.daemons}
        for port in range(low, high):
            if port in taken:
                continue
            if _port_is_free(port):
                return port
        raise SpawnError(
            "no_free_port",
            f"no free port in {low}-{high} (half-open); set SPEC_KITTY_SUPERVISOR_PORT_RANGE "
            "or stop what holds them (`spec-kitty-supervisor doctor`)",
        )

    async def _spawn_healthy(
        self, python: str, resolved_python: str, package_version: str, context: SpawnContext
    ) -> DaemonRecord:
        tried: set[int] = set()
        last_error: SpawnError | None = None
        for _ in range(SPAWN_PORT_ATTEMPTS):
            port = self._pick_port(tried)
            tried.add(port)
            spawn = functools.partial(
                spawn_daemon,
                self.layout,
                python=python,
                resolved_python=resolved_python,
                port=port,
                env=context.env,
                cwd=context.cwd,
                umask=self.child_umask,
            )
            try:
                spawned = await anyio.to_thread.run_sync(spawn)
            except SpawnError as exc:
                # Exited before we could even read its start (a bind lost at once, a broken
                # interpreter): as much a failed spawn as one that never became healthy.
                last_error = exc
                self.ledger.record(
                    "spawn_failed", port=port, package_version=package_version, reason=str(exc)
                )
                continue
            self._children[spawned.identity.pid] = spawned.process
            health = await self._wait_healthy(spawned.process, spawned.port, spawned.token)
            if health is None:
                await self._abandon_spawn(spawned.process, spawned.identity, spawned.port)
                tail = log_tail(self.layout.daemon_log, since=spawned.log_offset)
                last_error = SpawnError(
                    "spawn_failed",
                    f"the {package_version} daemon on port {port} did not become healthy "
                    f"({_describe_exit(spawned.process.returncode)})",
                    log_tail=tail,
                )
                self.ledger.record(
                    "spawn_failed",
                    pid=spawned.identity.pid,
                    port=port,
                    package_version=package_version,
                    reason=str(last_error),
                )
                continue
            now_iso = _utc_now()
            record = DaemonRecord(
                pid=spawned.identity.pid,
                process_start=spawned.identity.start,
                uid=spawned.identity.uid,
                port=spawned.port,
                token=spawned.token,
                package_version=effective_daemon_version(health.package_version, package_version),
                python=python,
                resolved_python=resolved_python,
                origin="spawned",
                state="healthy",
                role="current",
                started_at=now_iso,
                last_healthy_at=now_iso,
                last_ensure_at=self.clock(),
            )
            self._contexts[record.pid] = context
            self._watch(record.pid)
            return record
        assert last_error is not None
        raise last_error

    async def _wait_healthy(
        self, process: subprocess.Popen[bytes], port: int, token: str
    ) -> HealthAnswer | None:
        """Poll health until it answers with *our* token (a stranger on the port cannot)."""
        with anyio.move_on_after(self.settings.spawn_timeout_seconds):
            while process.poll() is None:
                health = await probe_health(port, timeout=0.5)
                if health is not None and health.token == token:
                    return health
                await anyio.sleep(0.05)
        return None

    async def _abandon_spawn(
        self, process: subprocess.Popen[bytes], identity: ProcessIdentity, port: int
    ) -> None:
        self._children.pop(identity.pid, None)
        if process.poll() is None:
            try:
                await stop_gracefully(
                    SignalTarget(identity, port), None, self.settings.stop_grace_seconds
                )
            except (SignalRefused, TimeoutError) as exc:
                log.error("abandon_spawn_failed", pid=identity.pid, error=str(exc))
        process.poll()

    # ------------------------------------------------------------------ retiring

    async def retire(self, record: DaemonRecord, reason: str) -> StopPath:
        async with self._lifecycle:
            if record.role == "current":
                record.role = "retiring"
                record.state = "retiring"
                self._persist()
        return await self._retire(record, reason)

    async def _retire(self, record: DaemonRecord, reason: str) -> StopPath:
        """Rewrite the state file first (rule 6), then stop gracefully, then forget."""
        if record.pid in self._retiring_now:
            raise LifecycleError("already_retiring", f"pid {record.pid} is being retired")
        self._retiring_now.add(record.pid)
        try:
            return await self._retire_once(record, reason)
        finally:
            self._retiring_now.discard(record.pid)

    async def _retire_once(self, record: DaemonRecord, reason: str) -> StopPath:
        await self._sync_legacy_state()
        target = SignalTarget(record.identity, record.port, self._pidfds.get(record.pid))
        try:
            stop_path = await stop_gracefully(
                target, record.token, self.settings.stop_grace_seconds
            )
        except SignalRefused as exc:
            # Its pid now names another process (or another user's): it is no longer ours to
            # stop, and no longer ours to track.
            self._forget(record)
            self._record_event("retire_abandoned", record, str(exc))
            raise LifecycleError("retire_failed", str(exc)) from None
        except TimeoutError as exc:
            self._record_event("retire_failed", record, str(exc))
            raise LifecycleError("retire_failed", str(exc)) from None
        self._forget(record)
        self._record_event("retired", record, f"{reason}; stopped by {stop_path}")
        return stop_path

    def _forget(self, record: DaemonRecord) -> None:
        self.table.remove(record)
        self._persist()
        process = self._children.pop(record.pid, None)
        if process is not None:
            process.poll()
        self._contexts.pop(record.pid, None)

    async def stop_all(self, reason: str) -> list[int]:
        async with self._lifecycle:
            for record in self.table.daemons:
                record.role = "retiring"
                record.state = "retiring"
            self._persist()
            stopped: list[int] = []

            async def stop_one(record: DaemonRecord) -> None:
                if record.pid in self._retiring_now:
                    # A retirement already under way: wait for it rather than race it.
                    with anyio.move_on_after(4 * self.settings.stop_grace_seconds + 5):
                        while self.table.by_pid(record.pid) is not None:
                            await anyio.sleep(0.05)
                    if self.table.by_pid(record.pid) is None:
                        stopped.append(record.pid)
                    return
                try:
                    await self._retire(record, reason)
                    stopped.append(record.pid)
                except LifecycleError:
                    pass  # the ledger says why; the others are still stopped

            async with anyio.create_task_group() as group:
                for record in list(self.table.daemons):
                    group.start_soon(stop_one, record)
            await self._sync_legacy_state()
            return stopped

    # ------------------------------------------------------------------ exits

    def _background(self, func: Callable[..., object], *args: object) -> None:
        assert self._task_group is not None

        async def guarded() -> None:
            try:
                await func(*args)  # type: ignore[misc]
            except Exception as exc:  # a background step must never take the supervisor down
                log.error("background_task_failed", task=func.__name__, error=repr(exc))

        self._task_group.start_soon(guarded)

    def _watch(self, pid: int) -> None:
        """Notice the daemon's exit at once: a pidfd becomes readable when the process ends."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            self._pidfds[pid] = pidfd
        if self._task_group is not None:
            self._task_group.start_soon(self._watch_exit, pid, pidfd)

    async def _watch_exit(self, pid: int, pidfd: int | None) -> None:
        try:
            if pidfd is not None:
                await anyio.wait_readable(pidfd)
            else:
                while read_identity(pid) is not None:
                    await anyio.sleep(self.settings.heartbeat_seconds)
        finally:
            if pidfd is not None:
                self._pidfds.pop(pid, None)
                os.close(pidfd)
        returncode: int | None = None
        process = self._children.get(pid)
        if process is not None:
            returncode = process.wait()
        try:
            await self._on_exit(pid, returncode)
        except Exception as exc:
            log.error("exit_handling_failed", pid=pid, error=repr(exc))

    async def _on_exit(self, pid: int, returncode: int | None) -> None:
        async with self._lifecycle:
            record = self.table.by_pid(pid)
            if record is None or record.role == "retiring":
                return  # a retirement we started; _retire records it
            self._forget(record)
            await self._sync_legacy_state()
            # An unmodified CLI of another version kills our daemon and records its own; that
            # is a hand-over to adopt, not a crash to restart (no spawn/kill thrash).
            replacement = await self._adopt_recorded_singleton()
            if replacement is not None:
                self._record_event(
                    "replaced_upstream",
                    record,
                    (
                        f"{_describe_exit(returncode)}; an upstream CLI recorded pid "
                        f"{replacement.pid} ({replacement.package_version}), adopted"
                    ),
                )
                return
            clean = returncode == 0 or (
                returncode is None and not _owner_json_names(self.layout.owner_json, record)
            )
            if clean:
                self._record_event(
                    "retired",
                    record,
                    f"exited by itself ({_describe_exit(returncode)}); not restarted",
                )
                return
            self._record_event("died", record, _describe_exit(returncode))
            context = self._contexts.get(pid) or self._default_context(record)
            self._schedule_restart(record, context, _describe_exit(returncode))

    def _schedule_restart(self, record: DaemonRecord, context: SpawnContext, cause: str) -> None:
        """Count a death; restart after a backoff, or quarantine the root after too many."""
        now = self.clock()
        self._deaths.append(now)
        settings = self.settings
        deaths = deaths_within(self._deaths, now, settings.quarantine_window_seconds)
        if should_quarantine(
            self._deaths, now, settings.quarantine_window_seconds, settings.quarantine_deaths
        ):
            self.table.quarantine_reason = (
                f"{deaths} deaths in {settings.quarantine_window_seconds:.0f} s; last: {cause}"
            )
            self._quarantined_python = record.python
            self._persist()
            self.ledger.record(
                "quarantined",
                pid=record.pid,
                package_version=record.package_version,
                reason=self.table.quarantine_reason,
            )
            return
        delay = restart_delay(
            deaths, settings.restart_backoff_seconds, settings.restart_backoff_max_seconds
        )
        self._background(self._restart_after, record, context, delay)

    async def _restart_after(
        self, record: DaemonRecord, context: SpawnContext, delay: float
    ) -> None:
        await anyio.sleep(delay)
        async with self._lifecycle:
            if self.table.current is not None or self.table.quarantine_reason is not None:
                return  # an ensure (or an upstream CLI we adopted) already replaced it
            if await self._adopt_recorded_singleton() is not None:
                return
            try:
                new = await self._start_current(
                    record.python,
                    record.resolved_python,
                    record.package_version,
                    context,
                    reason=f"restart after pid {record.pid} died",
                )
            except LifecycleError as exc:
                self._record_event("restart_failed", record, str(exc))
                self._schedule_restart(record, context, f"restart failed: {exc}")
                return
            self._record_event(
                "restarted", new, f"replaces pid {record.pid} after {delay:.1f} s backoff"
            )

    # ------------------------------------------------------------------ heartbeat

    async def heartbeat_forever(self) -> None:
        while True:
            await anyio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.heartbeat()
            except Exception as exc:
                log.error("heartbeat_failed", error=repr(exc))
            self._last_tick = time.monotonic()

    async def heartbeat(self) -> None:
        """One tick: observe every daemon's health, then apply the idle rules."""
        records = list(self.table.daemons)
        answers: dict[int, HealthAnswer | None] = {}

        async def probe(record: DaemonRecord) -> None:
            answers[record.pid] = await probe_health(
                record.port, self.settings.health_timeout_seconds
            )

        async with anyio.create_task_group() as group:
            for record in records:
                group.start_soon(probe, record)
        now = self.clock()
        for record in records:
            answer = answers.get(record.pid)
            if record.role == "retiring":
                continue
            if answer is not None and answer.token == record.token:
                record.state = "healthy"
                record.last_healthy_at = _utc_now()
                record.unresponsive_since = None
            else:
                if record.state != "unresponsive":
                    self._record_event("unresponsive", record, "no health answer with its token")
                record.state = "unresponsive"
                if record.unresponsive_since is None:
                    record.unresponsive_since = now
        await self._apply_lifecycle_rules(now)
        if supervisor_idle_exit_due(
            auto_started=self.auto_started,
            daemons=len(self.table.daemons),
            open_connections=self.open_connections,
            last_activity=self.last_activity,
            now=now,
            idle_exit_seconds=self.settings.idle_exit_seconds,
        ):
            self.ledger.record("idle_exit", reason="no daemon and no client")
            self.request_exit("idle")

    async def _apply_lifecycle_rules(self, now: float) -> None:
        """Decide from this tick's observations; every act here runs in the background."""
        async with self._lifecycle:
            await self._follow_recorded_singleton()
            for record in self.table.retiring:
                if record.pid not in self._retiring_now:
                    self._background(self._retire, record, "retirement resumed")
            current = self.table.current
            if current is None:
                return
            settings = self.settings
            if watchdog_expired(current.unresponsive_since, now, settings.watchdog_seconds):
                current.state = "unresponsive"
                self._deaths.append(now)
                self._record_event(
                    "watchdog",
                    current,
                    f"no health answer for {settings.watchdog_seconds:.0f} s; restarting",
                )
                self._background(self._restart_wedged, current)
            elif idle_retirement_due(current.last_ensure_at, now, settings.idle_retirement_seconds):
                current.role = "retiring"
                current.state = "retiring"
                self._persist()
                reason = f"idle: no ensure for {settings.idle_retirement_seconds:.0f} s"
                self._background(self._retire, current, reason)

    async def _follow_recorded_singleton(self) -> None:
        """Keep ``R/sync-daemon`` and the table in agreement with what upstream CLIs did.

        When a CLI of another version replaced our daemon and recorded its own, we verify and
        adopt that one instead of fighting it; when the file vanished while our daemon is
        healthy, we write it again.
        """
        recorded = read_legacy_state(self.layout.legacy_state)
        current = self.table.current
        if recorded is None:
            if current is not None and current.state == "healthy":
                await self._sync_legacy_state()
            return
        if self.table.by_pid(recorded.pid) is not None:
            return
        if current is not None:
            superseded = current
            adopted = await self._adopt_recorded_singleton(replacing=superseded)
            if adopted is None:
                # It names something we cannot verify: never leave that for upstream to kill.
                await self._sync_legacy_state()
                return
            self.ledger.record(
                "version_skew"
                if adopted.package_version != superseded.package_version
                else "adopted",
                pid=adopted.pid,
                port=adopted.port,
                package_version=adopted.package_version,
                reason=(
                    f"an upstream CLI replaced pid {superseded.pid} "
                    f"({superseded.package_version}) with this daemon"
                ),
            )
            self._background(self._retire, superseded, f"superseded by upstream pid {adopted.pid}")
            return
        await self._adopt_recorded_singleton()

    async def _restart_wedged(self, record: DaemonRecord) -> None:
        """Make-before-break: a fresh daemon first, then the wedged one is stopped (it is ours)."""
        async with self._lifecycle:
            if self.table.current is not record:
                return
            context = self._contexts.get(record.pid) or self._default_context(record)
            try:
                await self._start_current(
                    record.python,
                    record.resolved_python,
                    record.package_version,
                    context,
                    reason=f"pid {record.pid} stopped answering health (watchdog)",
                )
            except LifecycleError as exc:
                self.ledger.record("restart_failed", pid=record.pid, reason=str(exc))

    def _default_context(self, record: DaemonRecord) -> SpawnContext:
        return SpawnContext(
            env=child_environment(
                dict(os.environ), self.layout.daemon_root, record.package_version
            ),
            cwd=str(self.layout.daemon_root),
        )

    # ------------------------------------------------------------------ orphan sweeps
    # _doctor.sweep_root observes, classifies and stops; this schedules it under the lifecycle
    # lock, so that it never races a spawn or a retirement.

    @property
    def lifecycle_lock(self) -> anyio.Lock:
        """Held by every step that changes which daemons run; doctor's reset takes it too."""
        return self._lifecycle

    async def sweep_orphans(self) -> None:
        """Stop this root's ``safe_auto`` orphans; never the supervisor's own daemons."""
        try:
            # Look first without any lock: the usual sweep finds nothing, and then an ensure
            # never waits for it. What it does find is observed again under the locks.
            if not await sweep_would_act(self):
                return
            async with self._lifecycle:
                await sweep_root(self)
        except Exception as exc:  # a sweep must never take the supervisor down
            log.error("orphan_sweep_failed", error=repr(exc))

    async def sweep_orphans_forever(self) -> None:
        while True:
            await self.sweep_orphans()
            await anyio.sleep(self.settings.sweep_seconds)

    # ------------------------------------------------------------------ views

    def view(self) -> SupervisorView:
        """Who this supervisor is, for ``status`` and ``doctor``."""
        return SupervisorView(
            pid=self.pid,
            version=self.version,
            protocol_version=PROTOCOL_VERSION,
            root=str(self.layout.daemon_root),
            socket=str(self.layout.socket),
            started_at=self.started_at,
            auto_started=self.auto_started,
            service_manager=self.service_manager,
            settings=self.settings,
        )

    def status(self) -> StatusResponse:
        reason = self.table.quarantine_reason
        return StatusResponse(
            supervisor=self.view(),
            root_state="quarantined" if reason is not None else "ok",
            root_state_reason=reason,
            daemons=self.daemon_views(),
        )

    def daemon_views(self) -> list[DaemonView]:
        return [record.view() for record in self.table.daemons]

    def find(self, pid: int | None, port: int | None) -> DaemonRecord | None:
        for record in self.table.daemons:
            if (pid is None or record.pid == pid) and (port is None or record.port == port):
                return record
        return None


def _port_is_free(port: int) -> bool:
    """Upstream's test: nothing accepts a connect, and a bind succeeds (a race we retry)."""
    assert in_family_range(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the daemon's HTTPServer does (allow_reuse_address), so a port whose last
        # connections linger in TIME_WAIT still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _owner_json_names(owner_json: Path, record: DaemonRecord) -> bool:
    """Upstream removes owner.json on a clean exit when it still names that daemon."""
    import json

    try:
        owner = json.loads(owner_json.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(owner, dict) and (owner.get("pid"), owner.get("port")) == (
        record.pid,
        record.port,
    )

"""The real effects: the lifecycle's :class:`._effects.Effects` over the modules that act.

Nothing is decided here. Each method is the one call (or the few calls) the supervisor made
before there was a seam: :mod:`.._spawn` starts daemons, :mod:`.._probe` asks their health,
:mod:`.._verify` re-proves them, :mod:`.._signals` stops them, :mod:`.._legacy_state` and
:mod:`.._table` write files, :mod:`.._ledger` records, :mod:`.._doctor` sweeps orphans. What
must not leak into the lifecycle stays here: ``Popen`` objects (to reap our children and read
their exit status) and pidfds (to notice an exit at once and to signal without a PID race).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import structlog

from spec_kitty_supervisor_client._models import EnsureRequest, Settings, StopPath
from spec_kitty_supervisor_client._releases import UNKNOWN_VERSION, effective_daemon_version

from .._early_spawn import EarlyChild
from .._errors import LifecycleError
from .._files import RefusedFile, read_regular_file, refusal
from .._identity import ProcessIdentity, read_identity
from .._installed import interpreter_release
from .._layout import RootLayout
from .._ledger import Ledger
from .._legacy_state import (
    LegacyLockTimeout,
    LegacyRecord,
    hold_legacy_lock,
    read_legacy_state,
    remove_legacy_state,
    write_legacy_state,
)
from .._probe import probe_health
from .._signals import SignalRefused, SignalTarget, stop_gracefully
from .._spawn import SpawnedDaemon, child_environment, log_tail, port_is_free, spawn_daemon
from .._table import LoadedTable, Table, load_table, save_table
from .._verify import read_process_context, verify_daemon
from .._versions import EstablishedEnsure, InstalledVersions
from ._decisions import describe_exit, nothing_to_sweep
from ._effects import (
    Abandoned,
    Health,
    SpawnContext,
    SpawnedChild,
    SpawnOrder,
    StopRefused,
    Verification,
)

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["LEGACY_LOCK_WAIT", "RealEffects", "SystemClock"]

log = structlog.get_logger("spec_kitty_supervisor")

#: How long we wait for an upstream CLI to release ``R/sync-daemon.lock`` (it may hold it
#: for ~21 s while it waits for a daemon's health).
LEGACY_LOCK_WAIT = 30.0
#: How often a new daemon's health is asked until it answers. A refused connect costs well
#: under a millisecond, and every ``ensure`` that spawns waits for the first good answer:
#: polling every 50 ms cost a cold spawn 25 ms on average for nothing.
HEALTH_POLL_INTERVAL = 0.01

#: Upstream's owner record is a dozen short fields.
MAX_OWNER_RECORD_BYTES = 64 * 1024


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def _not_writable(what: str, exc: OSError) -> LifecycleError:
    return LifecycleError("state_not_writable", f"cannot write {what}: {exc.strerror or exc}")


class RealEffects:
    def __init__(self, layout: RootLayout, settings: Settings, ledger: Ledger) -> None:
        self.layout = layout
        self.settings = settings
        self.ledger = ledger
        #: The umask daemons get: the user's, not the supervisor's private 077.
        self.child_umask = -1
        self.legacy_lock_wait = LEGACY_LOCK_WAIT
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._log_offsets: dict[int, int] = {}
        self._pidfds: dict[int, int] = {}
        self._versions = InstalledVersions()
        #: The first stage's daemon (docs/adr/0013) until the lifecycle takes it over.
        self._early: EarlyChild | None = None
        #: Held since the first stage's spawn until :meth:`end_early_spawn`: meanwhile the
        #: lifecycle's own holds of ``R/sync-daemon.lock`` are taken in-process, one at a time.
        self._early_legacy_fd: int | None = None
        self._early_legacy_turn = anyio.Lock()

    # -------------------------------------------------------------- processes

    async def spawn(self, order: SpawnOrder) -> SpawnedChild:
        start = functools.partial(
            spawn_daemon,
            self.layout,
            python=order.python,
            resolved_python=order.resolved_python,
            port=order.port,
            env=order.context.env,
            cwd=order.context.cwd,
            umask=self.child_umask,
        )
        spawned = await anyio.to_thread.run_sync(start)
        self._children[spawned.identity.pid] = spawned.process
        self._log_offsets[spawned.identity.pid] = spawned.log_offset
        return SpawnedChild(identity=spawned.identity, port=spawned.port, token=spawned.token)

    def hold_early_spawn(self, child: EarlyChild) -> None:
        """Keep the first stage's daemon and its lock until the lifecycle decides."""
        self._early = child
        self._early_legacy_fd = child.legacy_lock_fd

    def take_early_spawn(
        self, python: str, resolved_python: str, package_version: str, context: SpawnContext
    ) -> SpawnedChild | None:
        early = self._early
        if early is None:
            return None
        spawned = early.spawned
        wanted = (python, resolved_python, package_version, context.env, context.cwd)
        if wanted != (
            spawned.python,
            spawned.resolved_python,
            early.package_version,
            early.env,
            early.cwd,
        ):
            return None
        self._early = None
        return self._adopt_child(spawned)

    def _adopt_child(self, spawned: SpawnedDaemon) -> SpawnedChild:
        self._children[spawned.identity.pid] = spawned.process
        self._log_offsets[spawned.identity.pid] = spawned.log_offset
        return SpawnedChild(identity=spawned.identity, port=spawned.port, token=spawned.token)

    async def end_early_spawn(self) -> None:
        early, self._early = self._early, None
        try:
            if early is not None:
                ended = await self.abandon(self._adopt_child(early.spawned))
                self.record(
                    "early_spawn_stopped",
                    pid=early.spawned.identity.pid,
                    port=early.spawned.port,
                    package_version=early.package_version,
                    reason=f"nothing took it over ({describe_exit(ended.returncode)})",
                )
        finally:
            fd, self._early_legacy_fd = self._early_legacy_fd, None
            if fd is not None:
                os.close(fd)  # releases the flock

    async def wait_healthy(self, child: SpawnedChild, timeout: float) -> Health | None:
        """Poll health until it answers with *our* token (a stranger on the port cannot)."""
        process = self._children[child.identity.pid]
        with anyio.move_on_after(timeout):
            while process.poll() is None:
                health = await self.probe(child.port, timeout=0.5)
                if health is not None and health.token == child.token:
                    return health
                await anyio.sleep(HEALTH_POLL_INTERVAL)
        return None

    async def abandon(self, child: SpawnedChild) -> Abandoned:
        pid = child.identity.pid
        process = self._children.pop(pid)
        if process.poll() is None:
            try:
                await stop_gracefully(
                    SignalTarget(child.identity, child.port), None, self.settings.stop_grace_seconds
                )
            except (SignalRefused, TimeoutError) as exc:
                log.error("abandon_spawn_failed", pid=pid, error=str(exc))
        process.poll()
        offset = self._log_offsets.pop(pid, 0)
        return Abandoned(process.returncode, log_tail(self.layout.daemon_log, since=offset))

    async def wait_exit(self, pid: int) -> int | None:
        """A pidfd becomes readable when the process ends (Linux); elsewhere we poll."""
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        try:
            if pidfd is not None:
                self._pidfds[pid] = pidfd
                await anyio.wait_readable(pidfd)
            else:
                while read_identity(pid) is not None:
                    await anyio.sleep(self.settings.heartbeat_seconds)
        finally:
            if pidfd is not None:
                self._pidfds.pop(pid, None)
                os.close(pidfd)
        process = self._children.get(pid)
        return process.wait() if process is not None else None

    def release(self, pid: int) -> None:
        process = self._children.pop(pid, None)
        if process is not None:
            process.poll()
        self._log_offsets.pop(pid, None)

    def read_identity(self, pid: int) -> ProcessIdentity | None:
        return read_identity(pid)

    async def establish_version(
        self, request: EnsureRequest, resolved_python: str
    ) -> EstablishedEnsure:
        return await self._versions.establish(request, resolved_python)

    def read_spawn_context(self, pid: int) -> SpawnContext | None:
        context = read_process_context(pid)
        return SpawnContext(env=context[0], cwd=context[1]) if context is not None else None

    def default_spawn_context(self, package_version: str) -> SpawnContext:
        env = child_environment(dict(os.environ), self.layout.daemon_root, package_version)
        return SpawnContext(env=env, cwd=str(self.layout.daemon_root))

    async def probe(self, port: int, timeout: float | None = None) -> Health | None:
        answer = await probe_health(port, timeout or self.settings.health_timeout_seconds)
        if answer is None:
            return None
        return Health(token=answer.token, package_version=answer.package_version)

    async def verify(
        self, identity: ProcessIdentity, port: int, expected_token: str | None
    ) -> Verification:
        verdict = await verify_daemon(
            identity,
            port,
            self.layout.daemon_root,
            self.settings.health_timeout_seconds,
            expected_token=expected_token,
        )
        cmdline = verdict.cmdline
        python = cmdline.executable if cmdline and cmdline.executable else ""
        package_version = None
        if verdict.health is not None:
            # A 3.1 daemon says "unknown": its interpreter's installed release is its version.
            package_version = effective_daemon_version(
                verdict.health.package_version, interpreter_release(python) or UNKNOWN_VERSION
            )
        return Verification(
            identity=verdict.identity,
            answered=verdict.health is not None,
            package_version=package_version,
            python=python,
            resolved_python=(cmdline.exec_marker if cmdline else None) or python,
            reason=verdict.reason,
        )

    async def stop(self, identity: ProcessIdentity, port: int, token: str | None) -> StopPath:
        target = SignalTarget(identity, port, self._pidfds.get(identity.pid))
        try:
            return await stop_gracefully(target, token, self.settings.stop_grace_seconds)
        except SignalRefused as exc:
            raise StopRefused(str(exc)) from None

    def port_is_free(self, port: int) -> bool:
        return port_is_free(port)

    def owner_record_names(self, pid: int, port: int) -> bool:
        """Upstream removes owner.json on a clean exit when it still names that daemon.

        Read only as a regular file of ours (a FIFO would block the read, a link could name
        any file): anything else names no daemon, and says so in the log.
        """
        try:
            raw = read_regular_file(self.layout.owner_json, MAX_OWNER_RECORD_BYTES)
        except RefusedFile as refused:
            log.warning("owner_record_refused", problem=str(refused))
            return False
        except OSError:
            return False
        if raw is None:
            return False
        try:
            owner = json.loads(raw)
        except ValueError:
            return False
        return isinstance(owner, dict) and (owner.get("pid"), owner.get("port")) == (pid, port)

    def refused_root_files(self) -> str | None:
        layout = self.layout
        refused = []
        for path, single_link in (
            (layout.legacy_lock, False),
            (layout.daemon_log, True),
            (layout.owner_json, False),
        ):
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # created as a regular file when it is needed
            except OSError as exc:
                refused.append(f"{path} cannot be looked at: {exc.strerror}")
                continue
            problem = refusal(info, single_link=single_link)
            if problem is not None:
                refused.append(f"{path} is {problem}, not a regular file; move it away")
        return "; ".join(refused) or None

    # -------------------------------------------------------------- files

    def legacy_lock(self) -> AbstractAsyncContextManager[None]:
        return self._legacy_lock()

    @asynccontextmanager
    async def _legacy_lock(self) -> AsyncIterator[None]:
        if self._early_legacy_fd is not None:
            # The first stage's hold: ours until end_early_spawn; a second flock of the same
            # file by this process would wait for ourselves.
            async with self._early_legacy_turn:
                yield
            return
        try:
            async with hold_legacy_lock(self.layout.legacy_lock, self.legacy_lock_wait):
                yield
        except LegacyLockTimeout as exc:
            raise LifecycleError(
                "legacy_lock_busy", f"an upstream spec-kitty CLI is busy: {exc}; retry"
            ) from None

    def read_legacy_state(self) -> LegacyRecord | None:
        return read_legacy_state(self.layout.legacy_state)

    def legacy_state_exists(self) -> bool:
        return self.layout.legacy_state.exists()

    def write_legacy_state(self, port: int, token: str, pid: int) -> None:
        try:
            write_legacy_state(self.layout.legacy_state, port, token, pid)
        except OSError as exc:
            raise _not_writable(str(self.layout.legacy_state), exc) from None

    def remove_legacy_state(self) -> None:
        try:
            remove_legacy_state(self.layout.legacy_state)
        except OSError as exc:
            raise _not_writable(str(self.layout.legacy_state), exc) from None

    def load_table(self) -> LoadedTable:
        return load_table(self.layout.state)

    def save_table(self, table: Table) -> None:
        try:
            save_table(self.layout.state, table, os.getpid())
        except OSError as exc:
            raise _not_writable(str(self.layout.state), exc) from None

    def record(
        self,
        kind: str,
        *,
        pid: int | None = None,
        port: int | None = None,
        package_version: str | None = None,
        reason: str = "",
    ) -> None:
        self.ledger.record(kind, pid=pid, port=port, package_version=package_version, reason=reason)

    def ledger_behind(self) -> str | None:
        return self.ledger.behind

    def catch_up_ledger(self) -> None:
        self.ledger.catch_up()

    # -------------------------------------------------------------- orphans

    async def orphans_to_sweep(self, table: Table) -> bool:
        from .._listen_table import linux_listen_uids

        listening = await anyio.to_thread.run_sync(linux_listen_uids, *self.settings.scan_range)
        if nothing_to_sweep(listening, {daemon.port for daemon in table.daemons}):
            # Nothing listens in the range but our own daemons (a clean root, most starts,
            # every start after an early spawn's take-over): nothing to sweep, and the
            # kernel's table said so without the doctor's modules.
            return False
        # The doctor's modules (classification, discovery, the sweep) are imported by the
        # first sweep that has listeners to look at, not by the supervisor's start.
        from .._doctor import sweep_would_act

        return await sweep_would_act(self.layout, self.settings, table)

    async def sweep_orphans(
        self,
        table: Table,
        *,
        may_ask: Callable[[], bool] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        from .._doctor import sweep_root

        try:
            await sweep_root(
                self.layout,
                self.settings,
                table,
                self.ledger,
                may_ask=may_ask,
                task_status=task_status,
            )
        except LegacyLockTimeout as exc:
            raise LifecycleError("legacy_lock_busy", str(exc)) from None

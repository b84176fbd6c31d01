"""``spec-kitty-supervisor run``: take the root, serve the socket, reconcile until told to stop.

Order matters: the flock first (one supervisor per root), then the socket (bound before the
table is recovered, so a client that connects meanwhile is held instead of starting a second
supervisor), then recovery, then serving, then ``READY=1``. A plain ``run --root R`` has
taken the lock and bound the socket in its first stage, before the heavy imports, and has
answered health since (``_starting``, docs/adr/0015); the connections it held are served here
after recovery, before anything new is accepted.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from spec_kitty_supervisor_client import SupervisorClient, SupervisorError
from spec_kitty_supervisor_client._autostart import socket_accepts
from spec_kitty_supervisor_client._errors import UnsafeDirectoryError

from . import __version__
from ._api import ConnectionTracker, peer_pid, serve_connection
from ._app import build_router
from ._connections import ConnectionLimits, ConnectionPool
from ._control_socket import bind_control_socket
from ._core import Supervisor
from ._doctor_routes import doctor_routes
from ._early_spawn import EarlyStart
from ._exit_signals import ExitSignals
from ._fd_limit import FD_LIMIT_TARGET, raise_fd_limit
from ._heap import freeze_start_up_heap
from ._layout import RootLayout
from ._lock import SupervisorLock
from ._logging import configure_logging
from ._policy import compare_versions
from ._sd_notify import CONTROL_FD_NAME, Notifier, listen_fds_from_env
from ._serving import (
    SELF_PROBE_TIMEOUT,
    ConnectionTasks,
    ServingRecord,
    UnixAcceptor,
    accept_loop,
    probe_own_socket,
)
from ._settings import SettingsError, load_settings
from ._starting import HandedConnection, StartingServer

__all__ = ["RunOptions", "run_supervisor"]

log = structlog.get_logger("spec_kitty_supervisor")


@dataclass(frozen=True)
class RunOptions:
    auto_started: bool = False
    service: bool = False
    takeover: bool = False
    flags: Mapping[str, Any] | None = None


#: How long a newcomer waits for the previous supervisor to release the root.
HANDOVER_WAIT = 60.0
#: The exit reason of a supervisor whose own socket stopped answering it.
SERVING_FAILED = "serving failed"


def _under_service_manager() -> str | None:
    if "NOTIFY_SOCKET" in os.environ or "INVOCATION_ID" in os.environ:
        return "systemd"
    if "XPC_SERVICE_NAME" in os.environ and os.environ["XPC_SERVICE_NAME"] != "0":
        return "launchd"
    return None


def run_supervisor(
    layout: RootLayout,
    options: RunOptions,
    early: EarlyStart | None = None,
    *,
    early_skipped: str | None = None,
) -> int:
    """The ``run`` command; returns the process exit code.

    ``early`` is what the light first stage did before the heavy imports (``_early_spawn``):
    it holds the root's lock, and may have spawned the starter's daemon. ``early_skipped``:
    why the stage did nothing with the request it was handed (logged once logging is set up).
    """
    try:
        return _run(layout, options, early, early_skipped)
    finally:
        if early is not None:
            early.discard()  # a first-stage daemon that the lifecycle never took over
            if early.starting is not None:
                early.starting.close()  # a no-op once the full server has taken the socket


def _run(
    layout: RootLayout, options: RunOptions, early: EarlyStart | None, early_skipped: str | None
) -> int:
    if early is not None:
        user_umask, fd_limits, prepared = early.user_umask, early.fd_limits, early.prepared
    else:
        # Everything the supervisor writes (journal, ledger, logs) is for this user alone;
        # the daemons it spawns get the user's own umask back.
        user_umask = os.umask(0o077)
        # Before anything is opened: an auto-started supervisor inherits its client's limit
        # (256 on macOS), which a few hundred idle clients would exhaust.
        fd_limits = raise_fd_limit()
    try:
        if early is None:
            prepared = layout.prepare()
        settings = load_settings(layout.config, options.flags)
    except (UnsafeDirectoryError, SettingsError) as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        if early is not None:
            early.let_go()  # before the root is let go: nobody else may find it unrecorded
        return 1
    except OSError as exc:
        # Anything else the file system refuses before we own the root (no inode left, an
        # I/O error): the message names the path; nothing was taken.
        print(f"spec-kitty-supervisor: cannot prepare {layout.daemon_root}: {exc}", file=sys.stderr)
        if early is not None:
            early.let_go()  # before the root is let go: nobody else may find it unrecorded
        return 1
    service_manager = _under_service_manager()
    try:
        activated = listen_fds_from_env()
    except Exception as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return 1
    control = next((a.sock for a in activated if a.name in (CONTROL_FD_NAME, "unknown")), None)
    lock = SupervisorLock(layout.lock) if early is None else early.lock
    try:
        if early is None and not lock.try_acquire():
            outcome = _take_over_or_yield(layout, lock, options, activated=control is not None)
            if outcome is not None:
                return outcome
        moved = configure_logging(None if (options.service or service_manager) else layout.log)
    except OSError as exc:
        # A file of ours we may not open (its mode was changed): say which, and the fix.
        if early is not None:
            early.let_go()
        else:
            lock.release()
        path = exc.filename or layout.supervisor_dir
        print(
            f"spec-kitty-supervisor: cannot open {path} ({exc.strerror}); run `chmod u+rw {path}`",
            file=sys.stderr,
        )
        return 1
    for problem in [*moved, *([lock.moved] if lock.moved else [])]:
        log.warning("file_refused", problem=problem)
    for note in prepared:
        log.warning("socket_dir_taken", problem=note)
    if fd_limits.error is not None:
        log.warning(
            "fd_limit_not_raised", soft=fd_limits.soft, hard=fd_limits.hard, error=fd_limits.error
        )
    elif fd_limits.raised:
        log.info(
            "fd_limit_raised",
            soft=fd_limits.soft,
            inherited_soft=fd_limits.inherited_soft,
            hard=fd_limits.hard,
        )
    notifier = Notifier.from_environment()
    early_child = early.take_child() if early is not None else None
    supervisor = Supervisor(
        layout,
        settings,
        auto_started=options.auto_started or control is not None,
        service_manager=service_manager,
        child_umask=user_umask,
        holds_root=lock.still_ours,
        early_child=early_child,
        handed_request=early.request if early is not None else None,
    )
    if early_skipped is not None:
        log.info("early_spawn", pid=None, spawned=False, reason=early_skipped)
    if early is not None and early.request:
        log.info(
            "early_spawn",
            pid=early_child.spawned.identity.pid if early_child is not None else None,
            spawned=early_child is not None,
            reason=early.verdict.reason,
        )
    starting = early.starting if early is not None else None
    try:
        anyio.run(_serve, supervisor, notifier, lock, control, starting)
    finally:
        notifier.close()
        lock.release()
    log.info("supervisor_exited", reason=supervisor.exit_reason)
    # Non-zero so that a service manager (Restart=on-failure) starts a fresh one.
    return 1 if supervisor.exit_reason == SERVING_FAILED else 0


def _take_over_or_yield(
    layout: RootLayout, lock: SupervisorLock, options: RunOptions, *, activated: bool
) -> int | None:
    """Another supervisor holds the root: ask it to hand over, or leave it be.

    Returns None once we hold the lock, else the exit code. A service-started supervisor
    must not exit early (under ``Type=notify`` that fails the unit), so it takes over: by
    hand-over when the holder answers, or by waiting while a holder whose socket path the
    service manager replaced fences itself out.
    """
    holder = lock.holder_pid()
    holder_version: str | None = None
    if not activated:
        try:
            with SupervisorClient(layout.daemon_root, autostart=False, timeout=10) as client:
                holder_version = client.health().version
                wants_takeover = (
                    options.takeover
                    or options.service
                    or compare_versions(__version__, holder_version) > 0
                )
                if not wants_takeover:
                    print(
                        f"spec-kitty-supervisor: a supervisor (pid {holder}, v{holder_version}) "
                        f"already owns {layout.daemon_root}; nothing to do",
                        file=sys.stderr,
                    )
                    return 0
                client.handover()
        except SupervisorError as exc:
            if not (options.service or options.takeover):
                print(
                    f"spec-kitty-supervisor: a supervisor (pid {holder}) already owns "
                    f"{layout.daemon_root}; nothing to do ({exc})",
                    file=sys.stderr,
                )
                return 0
    elif not (options.service or options.takeover):
        return 0
    deadline = time.monotonic() + HANDOVER_WAIT
    while not lock.try_acquire():
        if time.monotonic() > deadline:
            print(
                f"spec-kitty-supervisor: pid {holder} did not release {layout.daemon_root} "
                f"within {HANDOVER_WAIT:.0f} s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)
    return None


class _ControlSocket:
    """The listening socket, which self-fencing may replace while we run.

    ``starting``: the first stage's server, which bound the socket and serves it until
    :meth:`take_held` (then the socket is served here).
    """

    def __init__(
        self,
        layout: RootLayout,
        activated: socket.socket | None,
        starting: StartingServer | None = None,
    ) -> None:
        self.layout = layout
        self.activated = activated
        self.starting = starting
        self.listener: UnixAcceptor | None = None
        self.inode: int | None = None

    async def open(self) -> UnixAcceptor:
        if self.starting is not None and self.listener is None:
            self.listener = UnixAcceptor(self.starting.listener)
            self.inode = self.starting.inode
            return self.listener
        if self.activated is not None:
            sock = self.activated
        else:
            sock = bind_control_socket(self.layout.socket)
        self.listener = UnixAcceptor(sock)
        self.inode = None if self.activated is not None else os.stat(self.layout.socket).st_ino
        return self.listener

    def take_held(self) -> list[HandedConnection]:
        """Stop the first stage's server; what it held, oldest first, is ours to serve."""
        if self.starting is None:
            return []
        starting, self.starting = self.starting, None
        held = starting.hand_over()
        log.info(
            "starting_server_handed_over",
            health_answered=starting.answered,
            refused=starting.refused,
            held=len(held),
            failure=starting.failure,
        )
        return held

    def check(self) -> str | None:
        """ "ok", "restore" or "lost" for our socket path; None when the manager owns it."""
        if self.inode is None:
            return None
        try:
            on_disk = os.stat(self.layout.socket).st_ino
        except FileNotFoundError:
            return "restore"
        if on_disk == self.inode:
            return "ok"
        return "lost" if socket_accepts(self.layout.socket) else "restore"

    async def close(self) -> None:
        if self.starting is not None:
            # The start failed before serving: what the first stage held is closed.
            self.starting.close()
            self.starting = None
        if self.listener is not None:
            await self.listener.aclose()
        if self.inode is not None:
            _unlink_own_socket(self.layout, self.inode)


class _Untracked:
    """The self-probe's connection: not a client, so not activity that delays an idle exit."""

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        pass


def _soft_fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return FD_LIMIT_TARGET if soft == resource.RLIM_INFINITY else soft


def _tracker_for(client: socket.socket, supervisor: Supervisor) -> ConnectionTracker:
    try:
        own = peer_pid(client) == supervisor.pid
    except OSError:
        own = False
    return _Untracked() if own else supervisor


async def _serve(
    supervisor: Supervisor,
    notifier: Notifier,
    lock: SupervisorLock,
    activated: socket.socket | None,
    starting: StartingServer | None = None,
) -> None:
    layout = supervisor.layout
    control = _ControlSocket(layout, activated, starting)
    listener = await control.open()
    try:
        # Leaving these, the task group ends first (its scope was cancelled), then every
        # connection's task: both before the last write of the table.
        async with ConnectionTasks() as connections, anyio.create_task_group() as group:
            supervisor.attach(group)
            await supervisor.recover()
            router = build_router(supervisor, doctor_routes)

            pool = ConnectionPool(ConnectionLimits().for_descriptor_limit(_soft_fd_limit()))

            async def handle(client: socket.socket) -> None:
                await serve_connection(client, router, _tracker_for(client, supervisor), pool)

            async def handle_held(held: HandedConnection) -> None:
                await serve_connection(
                    held.sock,
                    router,
                    _tracker_for(held.sock, supervisor),
                    pool,
                    received=held.received,
                    unsent=held.unsent,
                    close_after=held.close_after,
                )

            # What the first stage held came first: its tasks start before the accept loop's.
            for held in control.take_held():
                connections.start_soon(handle_held, held)
            group.start_soon(accept_loop, listener, handle, connections)
            group.start_soon(_signals, supervisor)
            group.start_soon(supervisor.heartbeat_forever)
            group.start_soon(
                _fence, supervisor, lock, control, _Serving(handle, group, connections)
            )
            notifier.ready()
            notifier.status(_status_line(supervisor))
            group.start_soon(_watch_serving, supervisor, notifier)
            # Everything serving needs exists now and lives as long as the process (ADR 0018).
            freeze_start_up_heap()
            log.info(
                "supervisor_ready",
                pid=supervisor.pid,
                root=str(layout.daemon_root),
                socket=str(layout.socket),
                daemons=len(supervisor.table.daemons),
            )
            await supervisor.wait_exit()
            notifier.stopping()
            if control.listener is not None:
                await control.listener.aclose()
            # Let a request in flight (the shutdown request itself) finish its answer.
            with anyio.move_on_after(5):
                while supervisor.requests_in_flight:
                    await anyio.sleep(0.01)
            # Connections are closed first: out of descriptors, the last write needs theirs.
            group.cancel_scope.cancel()
        try:
            supervisor.persist()
        except OSError as exc:
            # Every change was journaled when it was made; only idle times are lost.
            log.error("final_persist_failed", error=repr(exc))
    finally:
        await control.close()


@dataclass(frozen=True)
class _Serving:
    """What a restored socket needs to be served: the handler, where its accept loop runs, and
    where its connections' tasks start."""

    handle: Callable[[socket.socket], Coroutine[Any, Any, None]]
    group: TaskGroup
    connections: ConnectionTasks


async def _fence(
    supervisor: Supervisor,
    lock: SupervisorLock,
    control: _ControlSocket,
    serving: _Serving,
) -> None:
    """Self-fencing: never keep running as a second owner of the root.

    A removed or replaced lock file means another supervisor could lock the root: we exit.
    A socket path taken by something that accepts means another owner serves it: we exit.
    A socket file that vanished (a tmp cleaner, a user) is restored.
    """
    while not supervisor.exiting:
        await anyio.sleep(supervisor.settings.heartbeat_seconds)
        if not lock.still_ours():
            # Logged, not written to the ledger: its file may be the next supervisor's now.
            supervisor.fenced()
            return
        verdict = control.check()
        if verdict == "lost":
            supervisor.ledger.record("fenced", reason="another process serves our socket path")
            supervisor.request_exit("socket lost")
            return
        if verdict == "restore":
            old = control.listener
            with contextlib.suppress(FileNotFoundError):
                layout_socket = control.layout.socket
                if layout_socket.exists() and not socket_accepts(layout_socket):
                    layout_socket.unlink()
            listener = await control.open()
            serving.group.start_soon(accept_loop, listener, serving.handle, serving.connections)
            if old is not None:
                await old.aclose()
            supervisor.ledger.record("socket_restored", reason=str(control.layout.socket))


def _unlink_own_socket(layout: RootLayout, inode: int) -> None:
    # Only the socket file we bound, and only now that it no longer accepts.
    try:
        if os.stat(layout.socket).st_ino == inode:
            layout.socket.unlink()
    except FileNotFoundError:
        pass


def _status_line(supervisor: Supervisor) -> str:
    count = len(supervisor.table.daemons)
    current = supervisor.table.current
    text = f"owns {count} sync daemon{'s' if count != 1 else ''}"
    if current is not None:
        text += f"; current pid {current.pid} on port {current.port} ({current.package_version})"
    return text


#: Each ends the supervisor gracefully, leaving its daemons (docs/lifecycle.md, "Signals").
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def _signals(supervisor: Supervisor) -> None:
    """The first exit signal asks for the exit; any later one is logged and changes nothing.

    A repeated signal (Ctrl-C twice, a service manager repeating its stop) must not meet the
    default action half-way through the exit (exit code -15, 130 or -1, no last write, no
    ``supervisor_exited``): the signals are received until the exit cancels this task, and
    from then on the process ignores them, without a moment of default action between the two
    (:mod:`._exit_signals`). What is left (the last write of the table, the lock's release)
    takes milliseconds.
    """
    signals = ExitSignals(EXIT_SIGNALS)
    with signals:
        try:
            async for signum in signals:
                name = signal.Signals(signum).name
                if supervisor.exiting:
                    log.info("signal_while_exiting", signal=name, reason=supervisor.exit_reason)
                    continue
                supervisor.ledger.record("signal", reason=f"received {name}")
                supervisor.request_exit(name)
        finally:
            # The exit is under way: ignored from the moment the receiving ends.
            signals.ignore_on_leaving = supervisor.exiting


async def _watch_serving(supervisor: Supervisor, notifier: Notifier) -> None:
    """The self-probe, on the heartbeat: ``WATCHDOG=1`` only after our own socket answered us.

    A loop that is stuck gets no ``WATCHDOG=1`` either (the probe runs on it). After
    ``SERVING_FAILURES`` failed probes in a row the supervisor exits, releasing the lock and
    leaving its daemons: a supervisor that cannot serve must not keep the root.
    """
    interval = notifier.watchdog_interval()
    tick = supervisor.settings.heartbeat_seconds
    if interval is not None:
        tick = min(tick, interval)
    record = ServingRecord()
    while not supervisor.exiting:
        await anyio.sleep(tick)
        notifier.status(_status_line(supervisor))
        problem = await probe_own_socket(
            supervisor.layout.socket, supervisor.pid, SELF_PROBE_TIMEOUT
        )
        if supervisor.exiting:
            return  # a probe that failed because we are closing says nothing
        if problem is not None:
            log.warning("self_probe_failed", problem=problem, in_a_row=len(record.failures) + 1)
        if record.observe(problem):
            supervisor.ledger.record(
                "serving_failed",
                reason=(
                    f"{len(record.failures)} self-probes of {supervisor.layout.socket} failed in "
                    f"a row (last: {problem}); exiting and leaving the daemons to the next "
                    "supervisor"
                ),
            )
            supervisor.request_exit(SERVING_FAILED)
            return
        if problem is None and interval is not None and supervisor.loop_is_alive():
            notifier.watchdog()

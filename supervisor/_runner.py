"""``spec-kitty-supervisor run``: take the root, serve the socket, reconcile until told to stop.

Order matters: the flock first (one supervisor per root), then the socket (bound before the
table is recovered, so a client that connects meanwhile waits in the backlog instead of
starting a second supervisor), then recovery, then serving, then ``READY=1``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import SocketListener, SocketStream

from spec_kitty_supervisor_client._errors import UnsafeDirectoryError

from ._api import serve_connection
from ._app import build_router
from ._core import Supervisor
from ._layout import RootLayout
from ._lock import SupervisorLock
from ._logging import configure_logging
from ._sd_notify import CONTROL_FD_NAME, Notifier, listen_fds_from_env
from ._settings import SettingsError, load_settings

__all__ = ["RunOptions", "run_supervisor"]

log = structlog.get_logger("spec_kitty_supervisor")


@dataclass(frozen=True)
class RunOptions:
    auto_started: bool = False
    service: bool = False
    flags: Mapping[str, Any] | None = None


def _under_service_manager() -> str | None:
    if "NOTIFY_SOCKET" in os.environ or "INVOCATION_ID" in os.environ:
        return "systemd"
    if "XPC_SERVICE_NAME" in os.environ and os.environ["XPC_SERVICE_NAME"] != "0":
        return "launchd"
    return None


def run_supervisor(layout: RootLayout, options: RunOptions) -> int:
    """The ``run`` command; returns the process exit code."""
    try:
        layout.prepare()
        settings = load_settings(layout.config, options.flags)
    except (UnsafeDirectoryError, SettingsError) as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return 1
    lock = SupervisorLock(layout.lock)
    if not lock.try_acquire():
        holder = lock.holder_pid()
        print(
            f"spec-kitty-supervisor: a supervisor (pid {holder}) already owns "
            f"{layout.daemon_root}; nothing to do",
            file=sys.stderr,
        )
        return 0
    service_manager = _under_service_manager()
    configure_logging(None if (options.service or service_manager) else layout.log)
    notifier = Notifier.from_environment()
    try:
        activated = listen_fds_from_env()
    except Exception as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return 1
    control = next((a.sock for a in activated if a.name in (CONTROL_FD_NAME, "unknown")), None)
    supervisor = Supervisor(
        layout,
        settings,
        auto_started=options.auto_started or control is not None,
        service_manager=service_manager,
    )
    try:
        anyio.run(_serve, supervisor, notifier, control)
    finally:
        notifier.close()
        lock.release()
    log.info("supervisor_exited", reason=supervisor.exit_reason)
    return 0


def _bind_control_socket(layout: RootLayout) -> socket.socket:
    path = layout.socket
    if path.exists() or path.is_symlink():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(os.fsencode(path)) == 0:
                raise RuntimeError(
                    f"{path} accepts connections although we hold the root's lock; refusing "
                    "to take it over"
                )
        path.unlink()  # nothing accepts on it: a leftover of a supervisor that died
    old_umask = os.umask(0o177)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.fsencode(path))
        os.chmod(path, 0o600)
        sock.listen(128)
    finally:
        os.umask(old_umask)
    return sock


async def _serve(
    supervisor: Supervisor, notifier: Notifier, activated: socket.socket | None
) -> None:
    layout = supervisor.layout
    listener = await SocketListener.from_socket(
        activated if activated is not None else _bind_control_socket(layout)
    )
    bound_inode = None if activated is not None else os.stat(layout.socket).st_ino

    try:
        async with anyio.create_task_group() as group:
            supervisor.attach(group)
            await supervisor.recover()
            router = build_router(supervisor)

            async def handle(stream: SocketStream) -> None:
                await serve_connection(stream, router, supervisor)

            group.start_soon(listener.serve, handle, group)
            group.start_soon(_signals, supervisor)
            group.start_soon(supervisor.heartbeat_forever)
            notifier.ready()
            notifier.status(_status_line(supervisor))
            group.start_soon(_watchdog, supervisor, notifier)
            log.info(
                "supervisor_ready",
                pid=supervisor.pid,
                root=str(layout.daemon_root),
                socket=str(layout.socket),
                daemons=len(supervisor.table.daemons),
            )
            await supervisor.wait_exit()
            notifier.stopping()
            await listener.aclose()
            # Let a request in flight (the shutdown request itself) finish its answer.
            with anyio.move_on_after(5):
                while supervisor.requests_in_flight:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()
    finally:
        await listener.aclose()
        if bound_inode is not None:
            _unlink_own_socket(layout, bound_inode)


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


async def _signals(supervisor: Supervisor) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            supervisor.ledger.record("signal", reason=f"received {signal.Signals(signum).name}")
            supervisor.request_exit(signal.Signals(signum).name)
            return


async def _watchdog(supervisor: Supervisor, notifier: Notifier) -> None:
    """``WATCHDOG=1`` only while the heartbeat really ticks; a stuck loop lets systemd act."""
    interval = notifier.watchdog_interval()
    while True:
        await anyio.sleep(interval or supervisor.settings.heartbeat_seconds)
        notifier.status(_status_line(supervisor))
        if interval is not None and supervisor.loop_is_alive():
            notifier.watchdog()

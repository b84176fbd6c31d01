"""Real spec-kitty sync daemons: start them as upstream does, watch them, stop them by pid.

Daemons are started exactly the way upstream CLIs start them (the production argv, a new
session, stdin ``/dev/null``, output appended to ``R/sync-daemon.log``), inside a throwaway
HOME, so that what the supervisor sees in a test is what it sees on a user's machine.

The harness is held to the rules it tests: it signals only processes whose identity (pid and
process start) it recorded, re-checks that identity right before each signal (through a pidfd
where the OS has one), stops gracefully first (token shutdown, SIGTERM, SIGKILL), confirms death
by pid, never by port, and never looks a process up by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import psutil

from ._contract import (
    DaemonHealth,
    daemon_argv,
    first_daemon_argv,
    parse_daemon_argv,
    post_shutdown,
    probe_health,
    spawns_without_marker,
)
from ._errors import DaemonStartError, HarnessError
from ._ports import ORPHAN_PORTS, PortRange
from ._process import ProcessIdentity, is_alive, read_identity, signal_if_same
from ._sandbox import Sandbox
from ._state_file import write_state_file
from ._venvs import (
    DEFAULT_ORPHAN_VERSIONS,
    SAAS_SYNC_ENV,
    honours_spec_kitty_home,
    new_token,
    spec_kitty_python,
)

__all__ = [
    "DaemonFleet",
    "RealDaemon",
    "StopOutcome",
    "make_orphans",
    "run_blocking",
    "spawn_orphan",
    "stop",
    "wait_healthy",
]

_TOKEN = re.compile(r"[0-9a-f]{32}")
_POLL = 0.02
_T = TypeVar("_T")


@dataclass
class RealDaemon:
    """A real sync daemon and the identity recorded when it was started (or adopted)."""

    pid: int
    port: int
    token: str
    version: str | None
    root: Path
    identity: ProcessIdentity
    argv: tuple[str, ...] = ()
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def is_child(self) -> bool:
        """True when this process spawned it and must reap it."""
        return self.popen is not None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def exited(self) -> bool:
        """True once the recorded process is gone, judged by pid alone (reaping our child)."""
        if self.popen is not None:
            return self.popen.poll() is not None
        return not is_alive(self.identity)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "port": self.port,
            "token": self.token,
            "version": self.version,
            "root": str(self.root),
            "start": self.identity.start,
            "uid": self.identity.uid,
            "url": self.url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RealDaemon:
        """A daemon another process started and described with :meth:`to_json`."""
        pid = int(data["pid"])
        return cls(
            pid=pid,
            port=int(data["port"]),
            token=str(data["token"]),
            version=str(data["version"]) if data.get("version") is not None else None,
            root=Path(str(data["root"])),
            identity=ProcessIdentity(pid=pid, start=str(data["start"]), uid=int(data["uid"])),
        )


def spawn_orphan(
    sandbox: Sandbox,
    version: str,
    port: int,
    token: str | None = None,
    *,
    sync: bool = False,
    report_version: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> RealDaemon:
    """Start one real daemon of ``version`` for the sandbox's root, outside any supervisor.

    Exactly upstream's spawn: the production argv (the venv's ``bin/python`` unresolved in
    argv[0], resolved in the exec marker), a new session, stdin ``/dev/null``, output appended
    to ``R/sync-daemon.log``, and the sandbox's environment plus ``SPEC_KITTY_CLI_VERSION``.
    ``report_version`` overrides the version the daemon reports (default: ``version``).

    ``sync=True`` adds ``SPEC_KITTY_ENABLE_SAAS_SYNC=1``, as every daemon an upstream CLI
    spawns has it: the daemon's sync service then runs (offline, nobody is logged in), and a
    daemon whose sync runs never retires by itself. Without it a daemon exits within 30 s
    once ``R/sync-daemon`` names another live daemon, and 3.2.4+ after 900 s without a
    token-authenticated request.

    Returns at once; :func:`wait_healthy` waits for the answer. The caller stops it with
    :func:`stop` (or lets a :class:`DaemonFleet` do it).
    """
    if not honours_spec_kitty_home(version) and not sandbox.root_is_home_default:
        raise ValueError(
            f"spec-kitty {version} ignores SPEC_KITTY_HOME and serves only $HOME/.spec-kitty; "
            f"this sandbox's root is {sandbox.root}: use Sandbox.create(separate_root=False)"
        )
    token = token or new_token()
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"a daemon token is 32 lowercase hex characters, not {token!r}")
    python = spec_kitty_python(version)
    if spawns_without_marker(version):
        # 3.1.x: no markers, and its daemon reports "unknown" whatever the environment says.
        argv = first_daemon_argv(str(python), port, token)
        report_version = "unknown"
    else:
        argv = daemon_argv(str(python), os.path.realpath(python), str(sandbox.root), port, token)
    env = sandbox.env({"SPEC_KITTY_CLI_VERSION": report_version or version})
    if sync:
        env[SAAS_SYNC_ENV] = "1"
    if extra_env:
        env.update(extra_env)
    sandbox.root.mkdir(parents=True, exist_ok=True)
    with open(sandbox.log_file, "ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
            cwd=cwd or sandbox.home,
        )
    # The start time is the fork's, unchanged by exec, and the pid cannot be reused before we
    # reap it: reading it now records exactly the process we started.
    identity = read_identity(popen.pid)
    if identity is None:
        code = popen.wait()
        raise DaemonStartError(
            f"spec-kitty {version} daemon (pid {popen.pid}, port {port}) exited at once "
            f"with {code}; {_log_tail(sandbox.log_file)}"
        )
    return RealDaemon(
        pid=popen.pid,
        port=port,
        token=token,
        version=report_version or version,
        root=sandbox.root,
        identity=identity,
        argv=tuple(argv),
        popen=popen,
    )


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"no log at {log}"
    if not text:
        return f"{log} is empty"
    return f"last lines of {log}:\n" + "\n".join(text[-lines:])


async def wait_healthy(
    daemon: RealDaemon,
    timeout: float = 30.0,
    *,
    sync_running: bool = False,
) -> DaemonHealth:
    """Wait until ``daemon`` answers ``GET /api/health`` with its own token.

    The token check matters: when another process already held the port, our daemon dies
    of the bind failure while the port keeps answering for someone else. With
    ``sync_running`` it also waits for ``sync.running`` (a daemon started with sync on starts
    its sync service about a second after it answers).
    """
    deadline = time.monotonic() + timeout
    last: DaemonHealth | None = None
    while True:
        if daemon.exited():
            code = daemon.returncode
            raise DaemonStartError(
                f"daemon pid {daemon.pid} (spec-kitty {daemon.version}, port {daemon.port}) "
                f"exited{f' with {code}' if code is not None else ''} before it was healthy; "
                f"{_log_tail(daemon.root / 'sync-daemon.log')}"
            )
        answer = await probe_health(daemon.port, timeout=0.5)
        mine = answer is not None and answer.token == daemon.token
        if mine and answer is not None and (answer.sync_running or not sync_running):
            return answer
        last = answer if answer is not None else last
        if time.monotonic() >= deadline:
            seen = (
                f"port {daemon.port} answered for token {last.token!r}, "
                f"version {last.package_version!r}, sync running {last.sync_running}"
                if last is not None
                else f"port {daemon.port} never answered"
            )
            raise DaemonStartError(
                f"daemon pid {daemon.pid} (spec-kitty {daemon.version}) not healthy after "
                f"{timeout:.1f} s: {seen}"
            )
        await anyio.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Stopping, by pid and by proven identity only


class StopOutcome(StrEnum):
    """How a stop ended: what was needed before the pid was gone."""

    ALREADY_GONE = "already_gone"
    SHUTDOWN = "shutdown"
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


async def _wait_gone(daemon: RealDaemon, within: float) -> bool:
    deadline = time.monotonic() + within
    while not daemon.exited():
        if time.monotonic() >= deadline:
            return False
        await anyio.sleep(_POLL)
    return True


async def stop(
    daemon: RealDaemon,
    *,
    shutdown_wait: float = 3.0,
    term_wait: float = 3.0,
    kill_wait: float = 5.0,
) -> StopOutcome:
    """Stop ``daemon`` gracefully first: token shutdown, then SIGTERM, then SIGKILL.

    Each step waits (bounded) for the pid to be gone; a closed port proves nothing. Signals
    go only to the recorded process (pid and start re-checked at signal time). Our own child
    is reaped. Raises HarnessError if the process survives SIGKILL.
    """
    if daemon.exited():
        return StopOutcome.ALREADY_GONE
    # A 403 (someone else's daemon holds the port now) is harmless; SIGTERM follows.
    accepted = await post_shutdown(daemon.port, daemon.token, timeout=1.0)
    if accepted and await _wait_gone(daemon, shutdown_wait):
        return StopOutcome.SHUTDOWN
    if not signal_if_same(daemon.identity, signal.SIGTERM):
        # Gone (or a zombie) by the time we looked again: reap it if it is our child.
        await _wait_gone(daemon, kill_wait)
        return StopOutcome.SHUTDOWN if accepted else StopOutcome.ALREADY_GONE
    # A stopped (SIGSTOP) daemon handles SIGTERM only once continued.
    signal_if_same(daemon.identity, signal.SIGCONT)
    if await _wait_gone(daemon, term_wait):
        return StopOutcome.SIGTERM
    killed = signal_if_same(daemon.identity, signal.SIGKILL)
    if not await _wait_gone(daemon, kill_wait):
        raise HarnessError(f"pid {daemon.pid} is still alive {kill_wait:.0f} s after SIGKILL")
    return StopOutcome.SIGKILL if killed else StopOutcome.SIGTERM


def run_blocking(function: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """Run an async harness function from sync code, even from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(function, *args)
    results: list[_T] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(anyio.run(function, *args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker, name="sks-harness-blocking")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


# --------------------------------------------------------------------------------------------
# The fleet: everything a test started, stopped by pid on exit


class DaemonFleet:
    """Tracks every daemon a test started or adopted and stops the live ones on exit.

    Use as ``with DaemonFleet() as fleet`` (sync fixtures) or ``async with``. On exit it
    stops, in parallel and by pid, every tracked daemon still alive, plus every sync daemon
    found running for a sandbox it watches (spawn-shaped, our uid, a root marker inside the
    sandbox): daemons started by upstream CLIs, by ``python -m sks_harness.orphans`` or by the
    supervisor under test, which this process never saw spawn. It never looks for processes
    by name. Sandboxes it created are removed after their daemons are gone.
    """

    def __init__(self, *, port_range: PortRange = ORPHAN_PORTS) -> None:
        self.port_range = port_range
        self._daemons: list[RealDaemon] = []
        self._watched: list[Sandbox] = []
        self._owned: list[Sandbox] = []
        self._lock = threading.Lock()

    # -- sandboxes ---------------------------------------------------------------------------
    def sandbox(self, *, separate_root: bool = False) -> Sandbox:
        """A fresh sandbox, watched, and removed when the fleet exits."""
        created = Sandbox.create(separate_root=separate_root)
        with self._lock:
            self._owned.append(created)
        self.watch(created)
        return created

    def watch(self, sandbox: Sandbox) -> Sandbox:
        """Sweep ``sandbox``'s daemons on exit, whoever started them."""
        with self._lock:
            if sandbox not in self._watched:
                self._watched.append(sandbox)
        return sandbox

    # -- daemons -----------------------------------------------------------------------------
    @property
    def daemons(self) -> tuple[RealDaemon, ...]:
        with self._lock:
            return tuple(self._daemons)

    def alive(self) -> list[RealDaemon]:
        return [daemon for daemon in self.daemons if not daemon.exited()]

    def add(self, daemon: RealDaemon) -> RealDaemon:
        """Track a daemon started elsewhere (the same process is tracked once)."""
        with self._lock:
            if not any(d.identity == daemon.identity for d in self._daemons):
                self._daemons.append(daemon)
        return daemon

    def free_ports(self, count: int) -> list[int]:
        """Free ports of the fleet's range, skipping those its daemons were given."""
        return self.port_range.free(count, exclude={d.port for d in self.alive()})

    def spawn(
        self,
        sandbox: Sandbox,
        version: str,
        port: int | None = None,
        token: str | None = None,
        **options: Any,
    ) -> RealDaemon:
        """:func:`spawn_orphan`, tracked; ``port`` defaults to a free one of the fleet's range."""
        self.watch(sandbox)
        chosen = port if port is not None else self.free_ports(1)[0]
        return self.add(spawn_orphan(sandbox, version, chosen, token, **options))

    async def spawn_healthy(
        self,
        sandbox: Sandbox,
        version: str,
        port: int | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        **options: Any,
    ) -> tuple[RealDaemon, DaemonHealth]:
        daemon = self.spawn(sandbox, version, port, token, **options)
        return daemon, await wait_healthy(daemon, timeout)

    def adopt(
        self, pid: int, *, start: str | None = None, version: str | None = None
    ) -> RealDaemon:
        """Track a daemon this process did not spawn, after proving what it is.

        Its argv must have the spawn shape (the port and token are read from it); ``start``,
        when given (as recorded by whoever spawned it), must equal the process start now.
        """
        identity = read_identity(pid)
        if identity is None:
            raise HarnessError(f"pid {pid} is not alive: nothing to adopt")
        if start is not None and identity.start != start:
            raise HarnessError(f"pid {pid} started at {identity.start}, not {start}: reused")
        try:
            argv = psutil.Process(pid).cmdline()
        except psutil.Error as exc:
            raise HarnessError(f"cannot read pid {pid}'s argv: {exc}") from exc
        shape = parse_daemon_argv(argv)
        if shape is None:
            raise HarnessError(f"pid {pid} is not a spawn-shaped sync daemon: {argv[:2]}")
        if not is_alive(identity):
            raise HarnessError(f"pid {pid} exited while it was being adopted")
        return self.add(
            RealDaemon(
                pid=pid,
                port=shape.port,
                token=shape.token,
                version=version,
                root=Path(shape.root or ""),
                identity=identity,
                argv=tuple(argv),
            )
        )

    def strays(self) -> list[RealDaemon]:
        """Live sync daemons of watched sandboxes that the fleet does not track yet."""
        with self._lock:
            bases = [path for sandbox in self._watched for path in (sandbox.base, sandbox.root)]
            known = {daemon.pid for daemon in self._daemons if not daemon.exited()}
        if not bases:
            return []
        found: list[RealDaemon] = []
        uid = os.getuid()
        for process in psutil.process_iter(["pid", "cmdline"]):
            pid = int(process.info["pid"])
            argv = process.info["cmdline"]
            if pid in known or not argv:
                continue
            shape = parse_daemon_argv(argv)
            if shape is None or shape.root is None:
                continue
            if not any(_is_within(Path(shape.root), base) for base in bases):
                continue
            identity = read_identity(pid)
            if identity is None or identity.uid != uid:
                continue
            found.append(
                RealDaemon(
                    pid=pid,
                    port=shape.port,
                    token=shape.token,
                    version=None,
                    root=Path(shape.root),
                    identity=identity,
                    argv=tuple(argv),
                )
            )
        return found

    # -- teardown ----------------------------------------------------------------------------
    async def astop_all(self) -> dict[int, StopOutcome]:
        """Stop every live tracked daemon and every stray of a watched sandbox, in parallel."""
        outcomes: dict[int, StopOutcome] = {}
        errors: list[str] = []
        for _round in range(2):  # a stray may have been spawned while the first round ran
            targets = [d for d in self.daemons if not d.exited()]
            for stray in self.strays():
                targets.append(self.add(stray))
            if not targets:
                break

            async def stop_one(daemon: RealDaemon) -> None:
                try:
                    outcomes[daemon.pid] = await stop(daemon)
                except Exception as exc:
                    errors.append(f"pid {daemon.pid}: {exc}")

            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as group:
                    for daemon in targets:
                        group.start_soon(stop_one, daemon)
        # Reap children that exited by themselves, so that no Popen outlives its process.
        for daemon in self.daemons:
            daemon.exited()
        if errors:
            raise HarnessError("the fleet could not stop: " + "; ".join(errors))
        return outcomes

    def stop_all(self) -> dict[int, StopOutcome]:
        return run_blocking(self.astop_all)

    def _remove_sandboxes(self) -> None:
        with self._lock:
            owned, self._owned = self._owned, []
        for sandbox in owned:
            sandbox.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            self._remove_sandboxes()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.astop_all()
        finally:
            self._remove_sandboxes()


def _is_within(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
    except ValueError:
        return False
    return True


async def make_orphans(
    sandbox: Sandbox,
    *,
    count: int,
    versions: Sequence[str] = DEFAULT_ORPHAN_VERSIONS,
    ports: PortRange = ORPHAN_PORTS,
    sync: bool = True,
    state_file: bool = True,
    timeout: float = 30.0,
    fleet: DaemonFleet | None = None,
    exclude_ports: Iterable[int] = (),
) -> list[RealDaemon]:
    """``count`` healthy real daemons of ``versions`` (round-robin), spawned outside any supervisor.

    The real-world mess: daemons with sync on (so none retires by itself; this waits until
    each one's sync service runs), on free ports of ``ports``, all for the sandbox's root.
    With ``state_file``, ``R/sync-daemon`` then names the last one, as the last upstream
    spawner would have left it. The health waits run in parallel.
    With a ``fleet`` every daemon is tracked as soon as it is spawned; without one, a failure
    stops the daemons already started before raising DaemonStartError.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, not {count}")
    if not versions:
        raise ValueError("at least one version is needed")
    for version in versions:
        spec_kitty_python(version)  # a missing venv fails before anything starts
        if not honours_spec_kitty_home(version) and not sandbox.root_is_home_default:
            raise ValueError(f"spec-kitty {version} cannot serve root {sandbox.root}")
    if fleet is not None:
        fleet.watch(sandbox)
        exclude_ports = {*exclude_ports, *(d.port for d in fleet.alive())}
    chosen = ports.free(count, exclude=exclude_ports)
    daemons: list[RealDaemon] = []
    try:
        for index, port in enumerate(chosen):
            daemon = spawn_orphan(sandbox, versions[index % len(versions)], port, sync=sync)
            daemons.append(fleet.add(daemon) if fleet is not None else daemon)
        failures: list[str] = []

        async def healthy(daemon: RealDaemon) -> None:
            try:
                await wait_healthy(daemon, timeout, sync_running=sync)
            except DaemonStartError as exc:
                failures.append(str(exc))

        async with anyio.create_task_group() as group:
            for daemon in daemons:
                group.start_soon(healthy, daemon)
        if failures:
            raise DaemonStartError(
                f"{len(failures)} of {count} orphans did not become healthy:\n"
                + "\n".join(failures)
            )
        if state_file:
            last = daemons[-1]
            write_state_file(sandbox.root, last.port, last.token, last.pid)
    except BaseException:
        if fleet is None:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as group:
                    for daemon in daemons:
                        group.start_soon(_stop_quietly, daemon)
        raise
    return daemons


async def _stop_quietly(daemon: RealDaemon) -> None:
    with contextlib.suppress(HarnessError):
        await stop(daemon)

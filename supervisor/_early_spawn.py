"""The supervisor's light first stage: serve the socket and spawn the starter's daemon before
the heavy imports.

A plain ``run --root R`` takes the root's lock here, binds the control socket and answers it
from the standard library while the rest is imported and the table recovered
(:mod:`._starting`, docs/adr/0015); :func:`first_stage_invocation` says when.

A client that auto-starts a supervisor hands it, on a pipe named by
:data:`HANDED_REQUEST_FD_ENV`, the ``ensure`` it is about to send (docs/adr/0013). Importing
the serving stack (pydantic's models, structlog, anyio) takes most of a supervisor's start,
and a daemon takes about as long to become healthy, so the two overlap: this stage runs
before those imports, takes the root's lock, makes sure nothing alive is recorded for the
root, takes ``R/sync-daemon.lock`` as the lifecycle's spawn does, and spawns the daemon
exactly as the lifecycle would (the same functions of :mod:`._spawn`: interpreter, environment,
working directory, port, argv, log file). The lifecycle then takes that child over as its own
spawn in progress (:func:`._lifecycle.take_over_early_spawn`): health, journal, state file.

Anything unusual means no early spawn and the normal start, unchanged: no handed request, any
command line but the auto-start's own, a service manager, settings this stage cannot judge
without the heavy imports, a journal or ``R/sync-daemon`` naming a live process or not
readable, a busy or refused lock, an interpreter whose release cannot be read from its files.
Only the standard library and light modules are imported here (``tests/unit/test_lazy_imports``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spec_kitty_supervisor_client._discover import release_from_files
from spec_kitty_supervisor_client._releases import UNKNOWN_VERSION
from spec_kitty_supervisor_client._terms import FAMILY_PORT_RANGE, family_sub_range_error
from spec_kitty_supervisor_client._wire import HANDED_REQUEST_FD_ENV, resolve_daemon_root

from . import __version__
from ._control_socket import SocketTaken, bind_control_socket
from ._errors import LifecycleError
from ._fd_limit import FdLimits, raise_fd_limit
from ._files import RefusedFile, open_upstream_file, read_regular_file
from ._identity import read_identity
from ._layout import RootLayout
from ._legacy_state import parse_legacy_state
from ._lock import SupervisorLock
from ._spawn import (
    SpawnedDaemon,
    check_root_supported,
    child_environment,
    first_free_port,
    port_is_free,
    resolve_working_directory,
    spawn_daemon,
    validate_interpreter,
)
from ._starting import StartingServer, health_body

__all__ = [
    "EarlyChild",
    "EarlyFacts",
    "EarlyStart",
    "EarlyVerdict",
    "FirstStage",
    "decide_early_spawn",
    "early_invocation",
    "first_stage_invocation",
    "start_early",
    "take_handed_request",
]

#: The largest request body the control socket reads (``_http.MAX_BODY``).
MAX_HANDED_BYTES = 1024 * 1024
#: ``run`` exactly as a client's auto-start runs it (``_wire._spawn_and_wait``).
_AUTO_START_WORDS = ("run", "--root", "--auto-started")
#: What the service managers set (``_runner._under_service_manager``, ``_sd_notify``).
_SERVICE_VARIABLES = ("NOTIFY_SOCKET", "INVOCATION_ID", "LISTEN_FDS", "LISTEN_PID")
_ENV_PREFIX = "SPEC_KITTY_SUPERVISOR_"
#: Each setting's field, and what this stage accepts of it without pydantic: only values that
#: ``Settings`` certainly accepts (``tests/unit/test_early_spawn.py`` checks both directions
#: on generated values, and that every field of ``Settings`` is here).
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
_POSITIVE_SECONDS = frozenset(
    {
        "heartbeat_seconds",
        "health_timeout_seconds",
        "idle_retirement_seconds",
        "watchdog_seconds",
        "idle_exit_seconds",
        "sweep_seconds",
        "spawn_timeout_seconds",
        "stop_grace_seconds",
        "quarantine_window_seconds",
        "restart_backoff_seconds",
        "restart_backoff_max_seconds",
    }
)
_RANGES = frozenset({"port_range", "scan_range"})
_POLICIES = frozenset({"keep_newer", "latest_wins"})
SETTING_FIELDS = _POSITIVE_SECONDS | _RANGES | {"version_policy", "quarantine_deaths"}
#: Upstream's state file is four short lines (``_legacy_state``); the journal at most 1 MiB.
_MAX_RECORD_BYTES = 64 * 1024
_MAX_JOURNAL_BYTES = 1024 * 1024


def take_handed_request(environ: MutableMapping[str, str]) -> dict[str, Any] | None:
    """The ensure request a starter handed over, as a JSON object; None when there is none.

    The variable is removed and the descriptor closed whatever it holds, so neither reaches a
    daemon (``SPEC_KITTY_*`` variables are passed to daemons).
    """
    value = environ.pop(HANDED_REQUEST_FD_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
    except ValueError:
        return None
    if fd < 3:
        return None  # never one of our standard streams
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_HANDED_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if size > MAX_HANDED_BYTES:
        return None
    try:
        request = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        return None
    return request if isinstance(request, dict) else None


@dataclass(frozen=True)
class FirstStage:
    """A ``run`` whose first stage may take the root and serve its socket."""

    root: str


@dataclass(frozen=True)
class Invocation:
    """What an early spawn needs to know before it touches anything."""

    root: str
    #: From ``SPEC_KITTY_SUPERVISOR_PORT_RANGE``; None for the default, the family range.
    port_range: tuple[int, int] | None
    python: str
    package_version: str | None
    cwd: str | None
    env: dict[str, str]

    def spawn_range(self) -> tuple[int, int]:
        """Where the lifecycle would spawn: the variable's range, else the settings' default."""
        return FAMILY_PORT_RANGE if self.port_range is None else self.port_range


def _setting_refused(name: str, raw: str) -> bool:
    if name in _POSITIVE_SECONDS:
        return _DECIMAL.fullmatch(raw) is None or float(raw) <= 0
    if name in _RANGES:
        low, sep, high = raw.partition("-")
        if not (sep and low.isdigit() and high.isdigit() and len(low) < 6 and len(high) < 6):
            return True
        return family_sub_range_error(int(low), int(high)) is not None
    if name == "version_policy":
        return raw not in _POLICIES
    if name == "quarantine_deaths":
        return not (raw.isdigit() and len(raw) < 10 and int(raw) >= 1)
    return False


def early_invocation(
    argv: Sequence[str], environ: Mapping[str, str], request: Mapping[str, Any] | None
) -> Invocation | str:
    """The early spawn's inputs, or why there is none. Pure: nothing is read but the arguments.

    Settings are judged by the environment alone (a ``config.toml`` is looked at by the
    caller), and only values that the settings model certainly accepts pass: a supervisor
    that would refuse its settings must not have spawned anything.
    """
    if request is None:
        return "no ensure request was handed over"
    if len(argv) != 4 or (argv[0], argv[1], argv[3]) != _AUTO_START_WORDS:
        return "not the auto-start's command line"
    for name in _SERVICE_VARIABLES:
        if name in environ:
            return f"under a service manager ({name} is set)"
    port_range: tuple[int, int] | None = None  # the settings' default: the family range
    for name, raw in environ.items():
        if not name.startswith(_ENV_PREFIX) or raw == "":
            continue
        setting = name[len(_ENV_PREFIX) :].lower()
        if setting not in SETTING_FIELDS:
            continue  # not a setting (the command override, the hook's switch)
        if _setting_refused(setting, raw):
            return f"{name}={raw!r} is left to the settings loader"
        if setting == "port_range":
            low, _, high = raw.partition("-")
            port_range = (int(low), int(high))
    python = request.get("python")
    version = request.get("package_version")
    cwd = request.get("cwd")
    env = request.get("env", {})
    if set(request) - {"python", "package_version", "cwd", "env", "replace"}:
        return "the handed request has a field this stage does not know"
    if request.get("replace", False) is not False:
        return "the handed request asks to replace a daemon"
    if not isinstance(python, str) or not (version is None or isinstance(version, str)):
        return "the handed request has no interpreter"
    if not (cwd is None or isinstance(cwd, str)):
        return "the handed request's cwd is not a path"
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        return "the handed request's environment is not a mapping of strings"
    return Invocation(argv[2], port_range, python, version, cwd, dict(env))


@dataclass(frozen=True)
class EarlyFacts:
    """What the stage found once it held the root's lock (each a short word, for the verdict)."""

    #: ``absent``, ``no_live`` (names only dead pids), ``live``, ``quarantined``, ``unreadable``
    journal: str
    #: ``R/sync-daemon``: ``absent``, ``dead`` (names a dead pid), ``live``, ``unreadable``
    recorded: str
    #: ``R/sync-daemon.lock``: ``taken``, ``busy``, ``refused``
    legacy_lock: str
    #: The interpreter's release read from its venv's files (ADR 0010), None when not certain.
    installed_version: str | None
    #: What the request says of it (None, or "unknown" from a 3.1 CLI, says nothing).
    claimed_version: str | None


@dataclass(frozen=True)
class EarlyVerdict:
    spawn: bool
    reason: str


def decide_early_spawn(facts: EarlyFacts) -> EarlyVerdict:
    """Spawn now only when recovery is certain to find nothing: no live journal entry, no live
    recorded daemon, the upstream lock ours. A spawn before recovery could otherwise duplicate
    a daemon the supervisor is about to re-adopt."""
    if facts.journal == "live":
        return EarlyVerdict(False, "the journal names a live process: recovery decides")
    if facts.journal == "quarantined":
        return EarlyVerdict(False, "the journal says the root is quarantined")
    if facts.journal == "unreadable":
        return EarlyVerdict(False, "the journal is not readable here: recovery decides")
    if facts.recorded == "live":
        return EarlyVerdict(False, "R/sync-daemon names a live process: recovery decides")
    if facts.recorded == "unreadable":
        return EarlyVerdict(False, "R/sync-daemon is not readable here: recovery decides")
    if facts.legacy_lock != "taken":
        return EarlyVerdict(False, f"R/sync-daemon.lock is {facts.legacy_lock}")
    if facts.installed_version is None:
        return EarlyVerdict(False, "the interpreter's release is not readable from its files")
    claimed = facts.claimed_version
    if claimed not in (None, UNKNOWN_VERSION, facts.installed_version):
        return EarlyVerdict(False, "the request's version is not the installed one")
    return EarlyVerdict(True, "nothing alive is recorded for the root")


@dataclass
class EarlyChild:
    """The daemon spawned before the heavy imports, until the lifecycle takes it over."""

    spawned: SpawnedDaemon
    package_version: str
    env: dict[str, str]
    cwd: str
    #: ``R/sync-daemon.lock``, held since before the spawn, as the lifecycle's spawn holds it.
    legacy_lock_fd: int


@dataclass
class EarlyStart:
    """What the first stage did, handed to ``run_supervisor``: it holds the root's lock.

    ``child`` is None when the stage decided not to spawn (``verdict`` says why; with no
    handed request, ``request`` is empty and the stage only serves).
    """

    user_umask: int
    fd_limits: FdLimits
    prepared: list[str]
    lock: SupervisorLock
    verdict: EarlyVerdict
    request: dict[str, Any] = field(default_factory=dict)
    child: EarlyChild | None = None
    #: The socket, bound and answered while the rest is imported (None: the runner binds it).
    starting: StartingServer | None = None

    def take_child(self) -> EarlyChild | None:
        """The child, now the caller's to take over or stop; the stage forgets it."""
        child, self.child = self.child, None
        return child

    def let_go(self) -> None:
        """The start failed before serving: stop the child, close the socket, free the root.

        In this order: nobody may find the root free while our socket still accepts, or
        while a daemon of ours runs unrecorded.
        """
        self.discard()
        if self.starting is not None:
            self.starting.close()
        self.lock.release()

    def discard(self, grace: float = 3.0) -> None:
        """Stop a child nobody took over (the start failed before the lifecycle ran).

        As the lifecycle abandons a spawn: token shutdown, then SIGTERM, then SIGKILL, each
        through ``_signals`` with the identity re-checked. It was never journaled or written
        to ``R/sync-daemon``, and it is our unreaped child, reaped here.
        """
        child = self.take_child()
        if child is None:
            return
        # Imported only on this failure path: they are the heavy modules this stage avoids.
        import anyio

        from ._signals import SignalRefused, SignalTarget, stop_gracefully

        spawned = child.spawned
        target = SignalTarget(spawned.identity, spawned.port)
        try:
            anyio.run(stop_gracefully, target, spawned.token, grace)
        except (SignalRefused, TimeoutError):
            pass  # it is gone, or not ours any more: nothing else may be signalled
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spawned.process.wait(timeout=grace)
            with contextlib.suppress(OSError):
                os.close(child.legacy_lock_fd)


def _journal_look(layout: RootLayout) -> str:
    try:
        raw = read_regular_file(layout.state, _MAX_JOURNAL_BYTES)
    except (RefusedFile, OSError):
        return "unreadable"
    if raw is None:
        return "absent"
    try:
        document = json.loads(raw)
        daemons = document["daemons"]
        pids = [int(entry["pid"]) for entry in daemons]
        quarantined = document.get("quarantine_reason") is not None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return "unreadable"
    if quarantined:
        return "quarantined"
    return "live" if any(read_identity(pid) is not None for pid in pids) else "no_live"


def _recorded_look(layout: RootLayout) -> str:
    try:
        raw = read_regular_file(layout.legacy_state, _MAX_RECORD_BYTES)
    except (RefusedFile, OSError):
        return "unreadable"
    if raw is None:
        return "absent"
    record = parse_legacy_state(raw)
    if record is None:
        return "unreadable"
    return "live" if read_identity(record.pid) is not None else "dead"


def _take_legacy_lock(layout: RootLayout) -> tuple[str, int | None]:
    try:
        fd = open_upstream_file(layout.legacy_lock, os.O_RDWR, single_link=False)
    except (RefusedFile, OSError):
        return "refused", None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return "busy", None
    return "taken", fd


def first_stage_invocation(argv: Sequence[str], environ: Mapping[str, str]) -> FirstStage | str:
    """Whether the first stage may take the root and serve its socket, or why not. Pure.

    Only a plain ``run --root R`` (an auto-start's, or the same by hand) outside any service
    manager, with settings in the environment that the settings model certainly accepts: a
    supervisor that answers health while it starts must not be one that then refuses its
    settings. Everything else (flags, ``--service``, ``--takeover``, systemd's socket
    activation, launchd) starts as before: the runner binds the socket after the imports.
    """
    if len(argv) not in (3, 4) or tuple(argv[:2]) != ("run", "--root"):
        return "not a plain `run --root R` command line"
    if len(argv) == 4 and argv[3] != "--auto-started":
        return "not a plain `run --root R` command line"
    if argv[2].startswith("-"):
        return "not a plain `run --root R` command line"
    for name in _SERVICE_VARIABLES:
        if name in environ:
            return f"under a service manager ({name} is set)"
    if environ.get("XPC_SERVICE_NAME", "0") != "0":
        return "under a service manager (XPC_SERVICE_NAME is set)"
    for name, raw in environ.items():
        if not name.startswith(_ENV_PREFIX) or raw == "":
            continue
        setting = name[len(_ENV_PREFIX) :].lower()
        if setting in SETTING_FIELDS and _setting_refused(setting, raw):
            return f"{name}={raw!r} is left to the settings loader"
    return FirstStage(argv[2])


def start_early(argv: Sequence[str], environ: MutableMapping[str, str]) -> EarlyStart | str | None:
    """The first stage of ``run``.

    None when it did nothing and was handed no request; a reason when it was handed one but
    changed nothing (the normal start follows and logs it); else what it did, holding the
    root's lock: serving the socket (:mod:`._starting`) and, when it was handed an ensure
    and nothing alive is recorded, the daemon it spawned.
    """
    request = take_handed_request(environ)
    invocation = None if request is None else early_invocation(argv, environ, request)
    stage = first_stage_invocation(argv, environ)
    if isinstance(stage, str):
        if invocation is None:
            return None
        return invocation if isinstance(invocation, str) else stage
    layout = RootLayout(resolve_daemon_root(stage.root))
    if os.path.lexists(layout.config):
        return (
            None
            if request is None
            else "R/supervisor/config.toml is read by the settings loader only"
        )
    user_umask = os.umask(0o077)  # as run_supervisor does first
    lock = SupervisorLock(layout.lock)
    try:
        prepared = layout.prepare()
        taken = lock.try_acquire()
    except OSError:
        taken = False  # the normal start says what is wrong, with the fix
    if not taken:
        os.umask(user_umask)
        if request is None:
            return None
        return "the root's lock is held by another supervisor, or could not be taken"
    fd_limits = raise_fd_limit()  # before the spawn: its child gets the inherited limit back
    starting = _start_serving(layout)
    if isinstance(invocation, Invocation):
        verdict, child = _spawn_if_safe(layout, invocation, user_umask)
    else:
        verdict, child = (
            EarlyVerdict(False, invocation or "no ensure request was handed over"),
            None,
        )
    return EarlyStart(
        user_umask, fd_limits, prepared, lock, verdict, request or {}, child, starting
    )


def _start_serving(layout: RootLayout) -> StartingServer | None:
    """Bind the socket and answer it from the standard library; None when the bind is refused
    (the runner meets the same refusal, and says it)."""
    try:
        listener = bind_control_socket(layout.socket)
    except (OSError, SocketTaken):
        return None
    health = health_body(os.getpid(), __version__, str(layout.daemon_root))
    server = StartingServer(listener, layout.socket, health)
    server.start()
    return server


def _spawn_if_safe(
    layout: RootLayout, invocation: Invocation, user_umask: int
) -> tuple[EarlyVerdict, EarlyChild | None]:
    legacy_lock, legacy_fd = _take_legacy_lock(layout)
    release = release_from_files(invocation.python)
    facts = EarlyFacts(
        journal=_journal_look(layout),
        recorded=_recorded_look(layout),
        legacy_lock=legacy_lock,
        installed_version=release[0] if release is not None else None,
        claimed_version=invocation.package_version,
    )
    verdict = decide_early_spawn(facts)
    if not verdict.spawn or facts.installed_version is None or legacy_fd is None:
        if legacy_fd is not None:
            os.close(legacy_fd)
        return verdict, None
    version = facts.installed_version
    daemon_root = layout.daemon_root
    try:
        # As the lifecycle's ensure does (_ensure._spawn_for, _spawning._spawn_healthy).
        resolved_python = validate_interpreter(invocation.python)
        env = child_environment(invocation.env, daemon_root, version)
        check_root_supported(env["HOME"], daemon_root, version)
        cwd = resolve_working_directory(invocation.cwd, daemon_root)
        port = first_free_port(invocation.spawn_range(), set(), port_is_free)
        spawned = spawn_daemon(
            layout,
            python=invocation.python,
            resolved_python=resolved_python,
            port=port,
            env=env,
            cwd=cwd,
            umask=user_umask,
        )
    except LifecycleError as exc:
        # SpawnError included: the lifecycle meets the same refusal and answers it.
        os.close(legacy_fd)
        return EarlyVerdict(False, f"{exc.code}: {exc}"), None
    return verdict, EarlyChild(spawned, version, env, cwd, legacy_fd)

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
import subprocess
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

from spec_kitty_supervisor_client._discover import release_from_files
from spec_kitty_supervisor_client._releases import UNKNOWN_VERSION
from spec_kitty_supervisor_client._terms import FAMILY_PORT_RANGE
from spec_kitty_supervisor_client._wire import HANDED_REQUEST_FD_ENV

from ._errors import LifecycleError
from ._fd_limit import FdLimits
from ._files import RefusedFile, open_upstream_file, read_regular_file
from ._first_stage import (
    ENV_PREFIX,
    SERVICE_VARIABLES,
    SETTING_FIELDS,
    TakenRoot,
    setting_refused,
    take_root,
)
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
from ._starting import StartingServer

__all__ = [
    "EarlyChild",
    "EarlyFacts",
    "EarlyStart",
    "EarlyVerdict",
    "decide_early_spawn",
    "SETTING_FIELDS",
    "early_invocation",
    "start_early",
    "take_handed_request",
]

#: The largest request body the control socket reads (``_http.MAX_BODY``).
MAX_HANDED_BYTES = 1024 * 1024
#: ``run`` exactly as a client's auto-start runs it (``_wire._spawn_and_wait``).
_AUTO_START_WORDS = ("run", "--root", "--auto-started")
#: What the service managers set (``_runner._under_service_manager``, ``_sd_notify``).
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


# No dataclasses here or in the modules this one imports: ``dataclasses`` imports ``inspect``
# (with ``ast``, ``dis``, ``tokenize``), a third of this stage's own imports, on the path of
# the auto-started supervisor to its early spawn. Named tuples where nothing treats the value
# as a tuple, small value classes elsewhere (``tests/unit/test_lazy_imports``).


class Invocation(NamedTuple):
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
    for name in SERVICE_VARIABLES:
        if name in environ:
            return f"under a service manager ({name} is set)"
    port_range: tuple[int, int] | None = None  # the settings' default: the family range
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or raw == "":
            continue
        setting = name[len(ENV_PREFIX) :].lower()
        if setting not in SETTING_FIELDS:
            continue  # not a setting (the command override, the hook's switch)
        if setting_refused(setting, raw):
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


class EarlyFacts:
    """What the stage found once it held the root's lock (each a short word, for the verdict).

    A frozen value class with its fields in ``__dict__`` (as a dataclass had them; a test
    builds variants from it), compared and hashed by its fields.
    """

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

    def __init__(
        self,
        journal: str,
        recorded: str,
        legacy_lock: str,
        installed_version: str | None,
        claimed_version: str | None,
    ) -> None:
        # Frozen as the dataclass was: __setattr__ refuses, so the fields go in directly.
        self.__dict__.update(
            journal=journal,
            recorded=recorded,
            legacy_lock=legacy_lock,
            installed_version=installed_version,
            claimed_version=claimed_version,
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: EarlyFacts is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: EarlyFacts is frozen")

    def _fields(self) -> tuple[str, str, str, str | None, str | None]:
        return (
            self.journal,
            self.recorded,
            self.legacy_lock,
            self.installed_version,
            self.claimed_version,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EarlyFacts) or other.__class__ is not self.__class__:
            return NotImplemented
        return other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"EarlyFacts(journal={self.journal!r}, recorded={self.recorded!r}, "
            f"legacy_lock={self.legacy_lock!r}, installed_version={self.installed_version!r}, "
            f"claimed_version={self.claimed_version!r})"
        )


class EarlyVerdict(NamedTuple):
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


class EarlyChild:
    """The daemon spawned before the heavy imports, until the lifecycle takes it over.

    ``legacy_lock_fd`` is ``R/sync-daemon.lock``, held since before the spawn, as the
    lifecycle's spawn holds it. Mutable, compared by its fields, not hashable (as the
    dataclass it was).
    """

    __slots__ = ("cwd", "env", "legacy_lock_fd", "package_version", "spawned")

    def __init__(
        self,
        spawned: SpawnedDaemon,
        package_version: str,
        env: dict[str, str],
        cwd: str,
        legacy_lock_fd: int,
    ) -> None:
        self.spawned = spawned
        self.package_version = package_version
        self.env = env
        self.cwd = cwd
        self.legacy_lock_fd = legacy_lock_fd

    def _fields(self) -> tuple[SpawnedDaemon, str, dict[str, str], str, int]:
        return (self.spawned, self.package_version, self.env, self.cwd, self.legacy_lock_fd)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EarlyChild) or other.__class__ is not self.__class__:
            return NotImplemented
        return other._fields() == self._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value

    def __repr__(self) -> str:
        return (
            f"EarlyChild(spawned={self.spawned!r}, package_version={self.package_version!r}, "
            f"env={self.env!r}, cwd={self.cwd!r}, legacy_lock_fd={self.legacy_lock_fd!r})"
        )


class EarlyStart:
    """What the first stage did, handed to ``run_supervisor``: it holds the root's lock.

    ``child`` is None when the stage decided not to spawn (``verdict`` says why; with no
    handed request, ``request`` is empty and the stage only serves). ``starting`` is the
    socket, bound and answered while the rest is imported (None: the runner binds it).
    Mutable, compared by its fields, not hashable (as the dataclass it was).
    """

    __slots__ = (
        "child",
        "fd_limits",
        "lock",
        "prepared",
        "request",
        "starting",
        "user_umask",
        "verdict",
    )

    def __init__(  # noqa: PLR0917  (the dataclass's signature: positions kept for callers)
        self,
        user_umask: int,
        fd_limits: FdLimits,
        prepared: list[str],
        lock: SupervisorLock,
        verdict: EarlyVerdict,
        request: dict[str, Any] | None = None,
        child: EarlyChild | None = None,
        starting: StartingServer | None = None,
    ) -> None:
        self.user_umask = user_umask
        self.fd_limits = fd_limits
        self.prepared = prepared
        self.lock = lock
        self.verdict = verdict
        self.request: dict[str, Any] = {} if request is None else request  # a new one each
        self.child = child
        self.starting = starting

    def _fields(self) -> tuple[object, ...]:
        return (
            self.user_umask,
            self.fd_limits,
            self.prepared,
            self.lock,
            self.verdict,
            self.request,
            self.child,
            self.starting,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EarlyStart) or other.__class__ is not self.__class__:
            return NotImplemented
        return other._fields() == self._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value

    def __repr__(self) -> str:
        return (
            f"EarlyStart(user_umask={self.user_umask!r}, fd_limits={self.fd_limits!r}, "
            f"prepared={self.prepared!r}, lock={self.lock!r}, verdict={self.verdict!r}, "
            f"request={self.request!r}, child={self.child!r}, starting={self.starting!r})"
        )

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


def start_early(
    argv: Sequence[str],
    environ: MutableMapping[str, str],
    taken: TakenRoot | str | None = None,
) -> EarlyStart | str | None:
    """The first stage of ``run``, after :func:`._first_stage.take_root` (``taken``; taken
    here when None).

    None when the stage did nothing and was handed no request; a reason when it was handed
    one but changed nothing (the normal start follows and logs it); else what it did, holding
    the root's lock: serving the socket (:mod:`._starting`) and, when it was handed an ensure
    and nothing alive is recorded, the daemon it spawned.
    """
    if taken is None:
        taken = take_root(argv, environ)
    request = take_handed_request(environ)
    invocation = None if request is None else early_invocation(argv, environ, request)
    if isinstance(taken, str):
        if invocation is None:
            return None
        return invocation if isinstance(invocation, str) else taken
    if isinstance(invocation, Invocation):
        verdict, child = _spawn_if_safe(taken.layout, invocation, taken.user_umask)
    else:
        verdict = EarlyVerdict(False, invocation or "no ensure request was handed over")
        child = None
    return EarlyStart(
        taken.user_umask,
        taken.fd_limits,
        taken.prepared,
        taken.lock,
        verdict,
        request or {},
        child,
        taken.starting,
    )


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

"""The hook ``integrate`` installs into spec-kitty's own environment (standard library only).

``spec-kitty-supervisor integrate`` writes one module into the site-packages of spec-kitty's
interpreter: :mod:`._wire` byte for byte, followed by everything below the ``HOOK BODY`` line
of this file, followed by the command that starts the supervisor installation that wrote it.
A one-line ``.pth`` file registers a tiny finder that imports that module only when
``specify_cli.sync.daemon`` is being imported.

When that module has executed, its own ``ensure_sync_daemon_running`` and ``stop_sync_daemon``
are replaced (and every binding of them that ``from ... import`` made meanwhile):

- ``ensure_sync_daemon_running(...)``: the release's own skip decision first (rollout flag,
  disable variables, ``LOCAL_ONLY``, the ``manual`` policy); when it skips, upstream runs
  unchanged. Otherwise the supervisor of upstream's own root is asked for the daemon of
  ``sys.executable`` and the CLI's own version, without ``R/sync-daemon.lock`` (the supervisor
  takes that lock to spawn), and the answer is upstream's ``DaemonStartOutcome``.
- ``stop_sync_daemon(...)``: a running supervisor retires its current daemon.

Three more modules are patched the same way when they have executed: ``specify_cli.sync.restart``
(``restart_daemon`` whole: a make-before-break replacement), ``specify_cli.sync.orphan_sweep``
(``auth doctor``'s orphan records and reset) and ``specify_cli.cli.commands._auth_doctor`` (its
daemon summary, and in 3.2.0-3.2.3 the orphan finding's remediation).

A supervisor is started only from the ``spec-kitty`` command's own process; elsewhere (the
dashboard, other tools importing ``specify_cli``) a running one is asked. Whenever no supervisor
answers, or anything at all goes wrong, upstream's own function runs as if the hook were not
there, and the failure is counted in ``R/supervisor/integration.json`` for ``doctor``.
"""

from __future__ import annotations

from ._wire import (
    Connection,
    StartFailed,
    Unavailable,
    WireError,
    ensure_private_dir,
    passed_environment,
    read_own_file,
    replace_exiting_supervisor,
    resolve_daemon_root,
    socket_path_for_root,
    start_supervisor,
    supervisor_dir,
)

__all__ = [
    "DISABLE_ENV",
    "HOOK_MARKER",
    "INTEGRATION_FILE",
    "SUPERVISOR_COMMAND",
    "PATCHED_MODULES",
    "TARGET_MODULE",
    "HookFinder",
    "Refused",
    "WireError",
    "ensure_private_dir",
    "inert_reason",
    "is_spec_kitty_command",
    "patch_module",
    "shape_problem",
    "start_supervisor",
    "supervised_daemon_pid",
]

# ---- HOOK BODY: `integrate` installs the wire, then everything below this line ----
import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

#: The command that starts the supervisor installation that installed this hook. The installed
#: copy redefines it at its very end; here (the repository's copy) there is none.
SUPERVISOR_COMMAND: tuple[str, ...] = ()

TARGET_MODULE = "specify_cli.sync.daemon"
#: ``spec-kitty doctor restart-daemon`` (3.2.0+); its module imports the daemon's lazily.
RESTART_MODULE = "specify_cli.sync.restart"
#: What ``spec-kitty auth doctor`` scans and sweeps with; its module imports the names.
ORPHAN_MODULE = "specify_cli.sync.orphan_sweep"
#: Where 3.2.4+ defines the schema-2 record and its enums (imported by the orphan module).
CLASSIFICATION_MODULE = "specify_cli.sync.classification"
DISABLE_ENV = "SPEC_KITTY_SUPERVISOR_DISABLE"
#: ``integration.json`` holds two small counters; more than this is not ours to parse.
INTEGRATION_RECORD_LIMIT = 64 * 1024
#: Set on the patched module: which names were wrapped, or why none was.
HOOK_MARKER = "__spec_kitty_supervisor_hook__"
INTEGRATION_FILE = "integration.json"

#: Upstream's default health wait after a spawn: ``[0.1] * 10 + [0.25] * 40 + [0.5] * 20``
#: seconds in every release from 3.2.0 to 3.2.7. A call bounded by it is never slower than
#: upstream would have been.
UPSTREAM_HEALTH_WAIT_SECONDS = 21.0

_ENSURE = "ensure_sync_daemon_running"
_STOP = "stop_sync_daemon"
_ENSURE_KEYWORDS = frozenset({"intent", "config", "health_wait_seconds"})
_FORCE = "force_explicit"
_RESTART = "restart_daemon"


class Refused(WireError):
    """Raised when the supervisor answered, but not with a daemon.

    ``code`` and ``reason`` are the supervisor's own error, when its answer carried one.
    """

    def __init__(self, message: str, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def inert_reason() -> str | None:
    """Why the hook must not act in this process, or None.

    A daemon process imports ``specify_cli.sync.daemon`` to run itself: it must never ask a
    supervisor for a daemon (3.1 daemon scripts do not even set the minimal-import variable, so
    the argv is what says it).
    """
    if os.environ.get(DISABLE_ENV, "") == "1":
        return f"{DISABLE_ENV}=1"
    if any("run_sync_daemon" in argument for argument in getattr(sys, "orig_argv", sys.argv)):
        return "this process runs a sync daemon"
    return None


def is_spec_kitty_command() -> bool:
    """True in the ``spec-kitty`` command's own process: only that one may start a supervisor."""
    program = sys.argv[0] if sys.argv else ""
    return os.path.basename(program) == "spec-kitty" or program.endswith(
        os.path.join("specify_cli", "__main__.py")
    )


class HookFinder:
    """Finds ``specify_cli.sync.daemon`` with the other finders and patches it once executed.

    It never imports a module to patch it: the module is patched at the end of its own
    execution, when whoever imported it would have gone on anyway.
    """

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        patch = _patcher(name)
        if patch is None or inert_reason() is not None:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "spec_kitty_supervisor_trampoline", False) or finder is HookFinder:
                continue
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        execute = getattr(loader, "exec_module", None)
        if execute is None:
            return spec

        def exec_module(module: ModuleType) -> None:
            execute(module)
            patch(module)

        with contextlib.suppress(AttributeError, TypeError):
            loader.exec_module = exec_module
        return spec


# The shape a release must have to be patched


def _parameters(function: object) -> tuple[list[str], set[str]] | None:
    if not isinstance(function, FunctionType):
        return None
    code = function.__code__
    positional = list(code.co_varnames[: code.co_argcount])
    keyword_only = set(
        code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    )
    return positional, keyword_only


def shape_problem(module: ModuleType) -> str | None:
    """Why ``module`` cannot be patched whole, or None when it has every expected shape."""
    ensure = _parameters(getattr(module, _ENSURE, None))
    if ensure is None or ensure[0] or not ensure[1] >= _ENSURE_KEYWORDS:
        return f"{_ENSURE} is not a function of keyword-only intent, config, health_wait_seconds"
    if not ensure[1] <= _ENSURE_KEYWORDS | {_FORCE}:
        return f"{_ENSURE} takes unknown keywords {sorted(ensure[1] - _ENSURE_KEYWORDS)}"
    skip = _parameters(getattr(module, "_daemon_start_skip_reason", None))
    if (
        skip is None
        or skip[0][:2] != ["intent", "policy"]
        or (_FORCE in skip[1]) != (_FORCE in ensure[1])
    ):
        return "_daemon_start_skip_reason is not (intent, policy[, *, force_explicit])"
    stop = _parameters(getattr(module, _STOP, None))
    if stop is None or stop[0][:1] != ["timeout"]:
        return f"{_STOP} is not a function of timeout"
    fields = getattr(getattr(module, "DaemonStartOutcome", None), "__dataclass_fields__", {})
    if list(fields) != ["started", "skipped_reason", "pid"]:
        return "DaemonStartOutcome is not (started, skipped_reason, pid)"
    for helper in ("_get_package_version", "_daemon_root"):
        if not callable(getattr(module, helper, None)):
            return f"{helper} is missing"
    return None


def patch_module(module: ModuleType) -> None:
    """Wrap the lifecycle functions of an executed ``specify_cli.sync.daemon``, all or none."""
    try:
        problem = shape_problem(module)
        if problem is not None:
            setattr(module, HOOK_MARKER, {"patched": [], "unpatched": problem})
            _note(resolve_daemon_root(), "unpatched", problem)
            return
        originals: dict[str, Callable[..., Any]] = {
            _ENSURE: getattr(module, _ENSURE),
            _STOP: getattr(module, _STOP),
        }
        wrappers = {
            _ENSURE: _ensure_wrapper(module, originals[_ENSURE]),
            _STOP: _stop_wrapper(module, originals[_STOP]),
        }
        _install(module, originals, wrappers)
    except Exception:  # a broken integration never breaks spec-kitty
        return


def _install(
    module: ModuleType,
    originals: dict[str, Callable[..., Any]],
    wrappers: dict[str, Callable[..., Any]],
) -> None:
    for name, wrapper in wrappers.items():
        setattr(module, name, wrapper)
    # A module that imported the names by `from ... import` while this one was still
    # executing (an import cycle) holds the originals: rebind those too.
    for other in list(sys.modules.values()):
        namespace = getattr(other, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, original in originals.items():
            if namespace.get(name) is original:
                namespace[name] = wrappers[name]
    setattr(module, HOOK_MARKER, {"patched": sorted(wrappers), "unpatched": None})


def restart_shape_problem(module: ModuleType) -> str | None:
    """Why ``specify_cli.sync.restart`` cannot be patched, or None (3.2.0-3.2.7 have it)."""
    restart = _parameters(getattr(module, _RESTART, None))
    if restart is None or len(restart[0]) != 1 or restart[1]:
        return f"{_RESTART} is not a function of one positional argument"
    fields = getattr(getattr(module, "RestartResult", None), "__dataclass_fields__", {})
    if list(fields) != ["status", "exit_code", "previous_pid", "new_pid", "error"]:
        return "RestartResult is not (status, exit_code, previous_pid, new_pid, error)"
    return None


def patch_restart_module(module: ModuleType) -> None:
    """Wrap ``restart_daemon`` of an executed ``specify_cli.sync.restart`` whole."""
    try:
        problem = restart_shape_problem(module)
        if problem is not None:
            setattr(module, HOOK_MARKER, {"patched": [], "unpatched": problem})
            _note(resolve_daemon_root(), "unpatched", problem)
            return
        original = getattr(module, _RESTART)
        _install(module, {_RESTART: original}, {_RESTART: _restart_wrapper(module, original)})
    except Exception:  # a broken integration never breaks spec-kitty
        return


def _patcher(name: str) -> Callable[[ModuleType], None] | None:
    return PATCHED_MODULES.get(name)


# ensure


def _ensure_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    takes_force = _FORCE in (_parameters(original) or ([], set()))[1]

    @functools.wraps(original)
    def ensure_sync_daemon_running(*args: Any, **kwargs: Any) -> Any:
        if args or "intent" not in kwargs or inert_reason() is not None:
            return original(*args, **kwargs)
        try:
            skipped = _skip_reason(module, kwargs, takes_force)
        except Exception:
            return original(*args, **kwargs)
        if skipped is not None:
            return original(*args, **kwargs)
        root = None
        try:
            root = resolve_daemon_root(str(module._daemon_root()))
            pid = supervised_daemon_pid(
                root,
                str(module._get_package_version()),
                _bound(kwargs.get("health_wait_seconds")),
                may_start=is_spec_kitty_command(),
            )
        except Exception as exc:
            if root is not None and not (
                isinstance(exc, Unavailable) and not is_spec_kitty_command()
            ):
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)
        return module.DaemonStartOutcome(started=True, skipped_reason=None, pid=pid)

    return ensure_sync_daemon_running


def _skip_reason(module: ModuleType, kwargs: dict[str, Any], takes_force: bool) -> Any:
    """The release's own decision, made exactly as its ``ensure_sync_daemon_running`` makes it."""
    from specify_cli.sync.config import SyncConfig  # type: ignore[import-not-found]

    config = kwargs.get("config")
    if config is None:
        config = SyncConfig()
    policy = config.get_background_daemon()
    if takes_force:
        return module._daemon_start_skip_reason(
            kwargs["intent"], policy, force_explicit=kwargs.get(_FORCE, False)
        )
    return module._daemon_start_skip_reason(kwargs["intent"], policy)


def _bound(health_wait_seconds: object) -> float:
    if isinstance(health_wait_seconds, int | float) and health_wait_seconds > 0:
        return float(health_wait_seconds)
    return UPSTREAM_HEALTH_WAIT_SECONDS


def supervised_daemon_pid(
    root: Path, version: str, bound: float, *, may_start: bool, replace: bool = False
) -> int:
    """The pid of the supervisor's current daemon of ``root`` for this interpreter and version.

    Asks the running supervisor; when none answers and ``may_start``, starts one with the
    recorded command first. Everything, the start included, happens within ``bound`` seconds.
    ``replace`` asks for a new daemon even when the current one would serve (restart-daemon).
    """
    deadline = time.monotonic() + bound
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    request: dict[str, Any] = {
        "python": sys.executable,
        "package_version": version,
        "cwd": cwd,
        "env": passed_environment(os.environ),
    }
    if replace:
        request["replace"] = True  # only when asked: an ordinary ensure stays as it was
    body = json.dumps(request).encode()
    connection = Connection(socket_path_for_root(root), bound)
    try:
        try:
            reply = connection.request("POST", "/v1/sync/ensure", body)
        except Unavailable:
            if not may_start:
                raise
            start_supervisor(root, trusted_command, _remaining(deadline), body)
            connection.timeout = _remaining(deadline)
            # It may have recorded a socket folder of its own (the predictable one was taken).
            connection.socket_path = socket_path_for_root(root)
            reply = connection.request("POST", "/v1/sync/ensure", body)
        else:
            if may_start and _is_exiting(reply):
                # It is going away (idle exit, hand-over): a successor answers instead.
                connection.close()
                replace_exiting_supervisor(root, trusted_command, _remaining(deadline), body)
                connection.timeout = _remaining(deadline)
                reply = connection.request("POST", "/v1/sync/ensure", body)
    finally:
        connection.close()
    daemon = _answer(reply, "daemon")
    pid = daemon.get("pid") if isinstance(daemon, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise Refused("the supervisor's answer names no daemon pid")
    return pid


def _is_exiting(reply: Any) -> bool:
    if reply.status != 503:
        return False
    try:
        return bool(reply.json()["error"]["code"] == "supervisor_exiting")
    except (ValueError, KeyError, TypeError):
        return False


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise StartFailed("upstream's health wait ran out")
    return left


def _answer(reply: Any, key: str) -> Any:
    """``key`` of a successful answer of protocol 1, else :class:`Refused` with its reason."""
    if reply.protocol is not None and reply.protocol != "1":
        raise Refused(f"the supervisor speaks protocol {reply.protocol}, this hook speaks 1")
    try:
        data = reply.json()
    except ValueError:
        raise Refused(f"the supervisor answered {reply.status} without JSON") from None
    if reply.status >= 400 or not isinstance(data, dict):
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            code, reason = str(error.get("code")), str(error.get("message"))
            raise Refused(f"{code}: {reason}", code, reason)
        raise Refused(f"the supervisor answered {reply.status}")
    return data.get(key)


def trusted_command() -> list[str]:
    """The recorded command, if it still exists, is the user's or root's, and only they write it."""
    if not SUPERVISOR_COMMAND:
        raise StartFailed("this hook records no command that starts a supervisor")
    program = SUPERVISOR_COMMAND[0]
    try:
        info = os.stat(program)
    except OSError as exc:
        raise StartFailed(
            f"the recorded supervisor command {program} is gone ({exc.strerror}); "
            "run `spec-kitty-supervisor integrate` from the installation you use"
        ) from None
    if info.st_uid not in (0, os.getuid()):
        raise StartFailed(f"{program} belongs to uid {info.st_uid}: not trusted")
    if info.st_mode & 0o022:
        raise StartFailed(f"{program} is writable by group or others: not trusted")
    return list(SUPERVISOR_COMMAND)


# stop


def _stop_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def stop_sync_daemon(*args: Any, **kwargs: Any) -> Any:
        if inert_reason() is not None:
            return original(*args, **kwargs)
        timeout = kwargs.get("timeout", args[0] if args else 5.0)
        root = None
        try:
            root = resolve_daemon_root(str(module._daemon_root()))
            retired = retire_current_daemon(root, _bound(timeout) + 5.0)
        except Exception as exc:
            # No supervisor runs: upstream stops whatever R/sync-daemon names, as always.
            if root is not None and not isinstance(exc, Unavailable):
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)
        if not retired:
            return original(*args, **kwargs)
        return True, "Sync daemon stopped."

    return stop_sync_daemon


def retire_current_daemon(root: Path, timeout: float) -> bool:
    """Ask the running supervisor of ``root`` to retire its current daemon; False: it has none."""
    connection = Connection(socket_path_for_root(root), timeout)
    try:
        daemons = _answer(connection.request("GET", "/v1/status"), "daemons")
        current = [
            daemon
            for daemon in daemons or []
            if isinstance(daemon, dict) and daemon.get("role") == "current"
        ]
        if not current:
            return False
        body = json.dumps({"pid": current[0].get("pid"), "reason": "spec-kitty stop_sync_daemon"})
        reply = connection.request("POST", "/v1/sync/retire", body.encode())
    finally:
        connection.close()
    if reply.status == 404:
        return False  # it went away meanwhile
    _answer(reply, "retired")
    return True


# restart-daemon


def _restart_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    """``restart_daemon`` whole: the supervisor replaces its current daemon make-before-break.

    Upstream composes stop then ensure (retire, then spawn: a moment with no daemon). When a
    supervisor runs and has a current daemon, it is asked instead for a new daemon of this
    interpreter, version, environment and working directory, healthy before the old one is
    retired; the answer is upstream's ``RestartResult``: ``restarted`` (exit 0), or
    ``respawn_failed`` (exit 2) with the supervisor's reason. In every other case (no
    supervisor, no current daemon, the release's own skip decision, the hook inert) upstream's
    restart runs, whose stop and ensure are the hook's wrappers; it gives exits 1 and 3.
    """

    @functools.wraps(original)
    def restart_daemon(*args: Any, **kwargs: Any) -> Any:
        if inert_reason() is not None:
            return original(*args, **kwargs)
        root = None
        try:
            daemon = sys.modules.get(TARGET_MODULE)
            if daemon is None:
                import importlib

                daemon = importlib.import_module(TARGET_MODULE)
            if not getattr(daemon, HOOK_MARKER, {}).get("patched"):
                return original(*args, **kwargs)
            # Upstream's restart ensures with REMOTE_REQUIRED and, where the release has it,
            # force_explicit: its skip decision is made the same way first.
            takes_force = (
                _FORCE in (_parameters(daemon._daemon_start_skip_reason) or ([], set()))[1]
            )
            intent = {"intent": daemon.DaemonIntent.REMOTE_REQUIRED, _FORCE: True}
            if _skip_reason(daemon, intent, takes_force) is not None:
                return original(*args, **kwargs)
            root = resolve_daemon_root(str(daemon._daemon_root()))
            previous = current_daemon_pid(root, UPSTREAM_HEALTH_WAIT_SECONDS)
            if previous is None:
                return original(*args, **kwargs)
            version = str(daemon._get_package_version())
        except Exception as exc:
            if root is not None and not isinstance(exc, Unavailable):
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)
        try:
            new = supervised_daemon_pid(
                root,
                version,
                UPSTREAM_HEALTH_WAIT_SECONDS,
                may_start=is_spec_kitty_command(),
                replace=True,
            )
        except Refused as exc:
            if predates_replace(exc.code, exc.reason):
                return _restart_without_replace(root, original, args, kwargs)
            return module.RestartResult(
                status="respawn_failed",
                exit_code=2,
                previous_pid=previous,
                new_pid=None,
                error=f"Respawn failed: {exc}",
            )
        except Exception as exc:
            _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)
        return module.RestartResult(
            status="restarted", exit_code=0, previous_pid=previous, new_pid=new, error=None
        )

    return restart_daemon


def predates_replace(code: str | None, reason: str | None) -> bool:
    """Whether an error answer to ``replace`` says the supervisor does not know the option.

    A supervisor older than ``replace`` validates requests strictly and answers
    ``400 invalid_request`` with ``replace: Extra inputs are not permitted``; it did nothing.
    """
    if code != "invalid_request" or reason is None:
        return False
    return any(problem.strip().startswith("replace:") for problem in reason.split(";"))


def _restart_without_replace(
    root: Path, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Upstream's own restart (the wrapped stop, then ensure), saying why it is not replace."""
    message = (
        "the running supervisor predates the `replace` ensure option, so restart-daemon ran "
        "as upstream's stop then start (a moment without a daemon); restart the supervisor "
        "(`spec-kitty-supervisor stop`, the next spec-kitty command starts the new one) for "
        "a make-before-break restart"
    )
    _note(root, "failure", message)
    with contextlib.suppress(Exception):
        print(f"spec-kitty-supervisor: {message}", file=sys.stderr)
    return original(*args, **kwargs)


def current_daemon_pid(root: Path, timeout: float) -> int | None:
    """The pid of the running supervisor's current daemon of ``root``, or None when it has none."""
    connection = Connection(socket_path_for_root(root), timeout)
    try:
        daemons = _answer(connection.request("GET", "/v1/status"), "daemons")
    finally:
        connection.close()
    for daemon in daemons or []:
        if isinstance(daemon, dict) and daemon.get("role") == "current":
            pid = daemon.get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool):
                return pid
    return None


# auth doctor


_ENUMERATE_RECORDS = "enumerate_identity_records"
_ENUMERATE_ORPHANS = "enumerate_orphans"
_SWEEP_ORPHANS = "sweep_orphans"
_RESET_ORPHANS = "reset_orphans"
#: The fields of upstream's schema-2 ``DaemonIdentityRecord``, in order: the keys of one
#: ``orphans[]`` entry of ``spec-kitty auth doctor --json`` (3.2.4+).
ORPHAN_RECORD_FIELDS: tuple[str, ...] = (
    "daemon_family",
    "pid",
    "port",
    "protocol_version",
    "package_version",
    "singleton_scope_id",
    "daemon_root",
    "queue_db_path",
    "auth_scope",
    "server_url",
    "owner_present",
    "identity_source",
    "executable_summary",
    "spawn_shape_ok",
    "self_report_matches_listener",
    "is_recorded_singleton",
    "cleanup_class",
    "skip_reason",
)
_RESET_ENTRIES = {
    "SweptEntry": ["pid", "port", "package_version", "protocol_version", "cleanup_path", "reason"],
    "SkippedEntry": ["pid", "port", "cleanup_class", "skip_reason"],
    "FailedEntry": ["pid", "port", "failure_reason"],
}
#: A doctor question may scan the whole family range; it is bounded all the same.
DOCTOR_TIMEOUT_SECONDS = 120.0


def orphan_shape_problem(module: ModuleType) -> str | None:
    """Why ``specify_cli.sync.orphan_sweep`` (3.2.4+) cannot be patched, or None."""
    enumerate_ = _parameters(getattr(module, _ENUMERATE_RECORDS, None))
    if enumerate_ is None or enumerate_[0] or enumerate_[1]:
        return f"{_ENUMERATE_RECORDS} is not a function of no arguments"
    reset = _parameters(getattr(module, _RESET_ORPHANS, None))
    if reset is None or reset[0] != ["records"] or reset[1] != {"include_operator_required"}:
        return f"{_RESET_ORPHANS} is not (records, *, include_operator_required)"
    classes = {"ResetResult": ["swept", "skipped", "failed"], **_RESET_ENTRIES}
    for name, expected in classes.items():
        if list(getattr(getattr(module, name, None), "__dataclass_fields__", {})) != expected:
            return f"{name} is not ({', '.join(expected)})"
    classification = sys.modules.get(CLASSIFICATION_MODULE)
    record = getattr(classification, "DaemonIdentityRecord", None)
    if tuple(getattr(record, "__dataclass_fields__", {})) != ORPHAN_RECORD_FIELDS:
        return "DaemonIdentityRecord does not have schema 2's fields"
    for enum in ("IdentitySource", "CleanupClass", "SkipReason"):
        if not callable(getattr(classification, enum, None)):
            return f"{CLASSIFICATION_MODULE}.{enum} is missing"
    return _daemon_root_problem()


def _daemon_root_problem() -> str | None:
    if not callable(getattr(sys.modules.get(TARGET_MODULE), "_daemon_root", None)):
        return f"{TARGET_MODULE}._daemon_root is missing"
    return None


def legacy_orphan_shape_problem(module: ModuleType) -> str | None:
    """Why ``specify_cli.sync.orphan_sweep`` of 3.2.0-3.2.3 cannot be patched, or None."""
    enumerate_ = _parameters(getattr(module, _ENUMERATE_ORPHANS, None))
    if enumerate_ is None or enumerate_[0] or enumerate_[1]:
        return f"{_ENUMERATE_ORPHANS} is not a function of no arguments"
    sweep = _parameters(getattr(module, _SWEEP_ORPHANS, None))
    if sweep is None or sweep[0] != ["orphans"] or sweep[1] != {"timeout_s"}:
        return f"{_SWEEP_ORPHANS} is not (orphans, *, timeout_s)"
    classes = {
        "OrphanDaemon": ["port", "pid", "package_version", "protocol_version"],
        "SweepReport": ["swept", "failed", "duration_s"],
    }
    for name, expected in classes.items():
        if list(getattr(getattr(module, name, None), "__dataclass_fields__", {})) != expected:
            return f"{name} is not ({', '.join(expected)})"
    return _daemon_root_problem()


def patch_orphan_module(module: ModuleType) -> None:
    """Wrap what ``auth doctor`` scans and sweeps with (3.2.4+), all or none."""
    try:
        # 3.2.4+ scan with identity records (schema 2); 3.2.0-3.2.3 with OrphanDaemon (schema 1).
        # 3.2.4+ still define the schema-1 pair, but their `auth doctor` does not use it.
        schema_2 = hasattr(module, _ENUMERATE_RECORDS)
        problem = (orphan_shape_problem if schema_2 else legacy_orphan_shape_problem)(module)
        if problem is not None:
            setattr(module, HOOK_MARKER, {"patched": [], "unpatched": problem})
            _note(resolve_daemon_root(), "unpatched", problem)
            return
        if schema_2:
            names = (_ENUMERATE_RECORDS, _RESET_ORPHANS)
            makers = (_enumerate_wrapper, _reset_wrapper)
        else:
            names = (_ENUMERATE_ORPHANS, _SWEEP_ORPHANS)
            makers = (_enumerate_orphans_wrapper, _sweep_wrapper)
        originals = {name: getattr(module, name) for name in names}
        wrappers = {
            name: make(module, originals[name]) for name, make in zip(names, makers, strict=True)
        }
        _install(module, originals, wrappers)
    except Exception:  # a broken integration never breaks spec-kitty
        return


class _Raw(str):
    """A classification value this release's enum does not know, kept as the supervisor said."""

    @property
    def value(self) -> str:
        return str(self)


def _member(enum: Any, value: Any) -> Any:
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        return _Raw(value)


def _identity_record(entry: dict[str, Any]) -> Any:
    """Upstream's own record (schema 2) of one orphan the supervisor classified."""
    classification = sys.modules[CLASSIFICATION_MODULE]
    values = {name: entry.get(name) for name in ORPHAN_RECORD_FIELDS}
    values["identity_source"] = _member(
        classification.IdentitySource, values["identity_source"] or "none"
    )
    values["cleanup_class"] = _member(classification.CleanupClass, values["cleanup_class"])
    values["skip_reason"] = _member(classification.SkipReason, values["skip_reason"])
    return classification.DaemonIdentityRecord(**values)


def _reset_result(module: ModuleType, result: Any) -> Any:
    if not isinstance(result, dict):
        raise Refused("the supervisor's reset answer has no reset_result")
    lists = {}
    for key, name in (
        ("swept", "SweptEntry"),
        ("skipped", "SkippedEntry"),
        ("failed", "FailedEntry"),
    ):
        entry_class = getattr(module, name)
        lists[key] = [
            entry_class(**{field: entry.get(field) for field in _RESET_ENTRIES[name]})
            for entry in result.get(key) or []
            if isinstance(entry, dict)
        ]
    return module.ResetResult(**lists)


def supervisor_doctor(root: Path, reset: bool, force: bool) -> dict[str, Any]:
    """The supervisor's doctor report of ``root`` (after a reset when ``reset``).

    A running supervisor is asked; with none, the recorded command's ``doctor --json`` runs,
    which probes the range itself under the supervisor's lock. Neither starts a supervisor: a
    doctor must not start what it diagnoses.
    """
    connection = Connection(socket_path_for_root(root), DOCTOR_TIMEOUT_SECONDS)
    try:
        if reset:
            body = json.dumps({"force": force}).encode()
            reply = connection.request("POST", "/v1/reset", body)
        else:
            reply = connection.request("GET", "/v1/doctor")
        _answer(reply, "orphans")  # an error answer raises here
        report = reply.json()
    except Unavailable:
        report = _doctor_command(root, reset, force)
    finally:
        connection.close()
    if not isinstance(report, dict) or not isinstance(report.get("orphans"), list):
        raise Refused("the supervisor's doctor report has no orphans")
    return report


def _doctor_command(root: Path, reset: bool, force: bool) -> Any:
    import subprocess

    command = [*trusted_command(), "doctor", "--json", "--root", str(root)]
    if reset:
        command.append("--reset")
        if force:
            command.append("--force")
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT_SECONDS,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    # Exit 1 means "something needs attention", with the report on stdout all the same.
    try:
        return json.loads(result.stdout)
    except ValueError:
        last = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise Refused(f"`spec-kitty-supervisor doctor` failed: {last}") from None


def _orphan_root(module: ModuleType) -> Path:
    return resolve_daemon_root(str(sys.modules[TARGET_MODULE]._daemon_root()))


#: What 3.2.0-3.2.3 cannot do from `auth doctor` (it has no --force): the command that can.
FORCE_COMMAND = "spec-kitty-supervisor doctor --reset --force"


def _enumerate_orphans_wrapper(
    module: ModuleType, original: Callable[..., Any]
) -> Callable[..., Any]:
    """3.2.0-3.2.3: the supervisor's orphans, as schema 1's ``OrphanDaemon`` (four fields)."""

    @functools.wraps(original)
    def enumerate_orphans(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs or inert_reason() is not None:
            return original(*args, **kwargs)
        root = None
        try:
            _LEGACY_CLASSES.clear()  # what a fallback to upstream's scan lists is unknown here
            root = _orphan_root(module)
            report = _report_to_enumerate(root)
            orphans = [_orphan_daemon(module, entry) for entry in report["orphans"]]
            _LEGACY_CLASSES.update(
                {
                    (orphan.port, orphan.pid): (
                        entry.get("cleanup_class"),
                        entry.get("skip_reason"),
                    )
                    for orphan, entry in zip(orphans, report["orphans"], strict=True)
                }
            )
            return orphans
        except Exception as exc:
            if root is not None:
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)

    return enumerate_orphans


def _orphan_daemon(module: ModuleType, entry: Any) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get("port"), int):
        raise Refused("an orphan of the supervisor's report has no port")
    return module.OrphanDaemon(
        port=entry["port"],
        pid=entry.get("pid"),
        package_version=entry.get("package_version"),
        protocol_version=entry.get("protocol_version"),
    )


def _sweep_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    """3.2.0-3.2.3's ``--reset``: the supervisor stops only ``safe_auto`` orphans (no --force).

    What it skipped is reported in ``failed`` (schema 1 has no other place), its reason naming
    the command that can do more.
    """

    @functools.wraps(original)
    def sweep_orphans(orphans: Any, *args: Any, **kwargs: Any) -> Any:
        if args or set(kwargs) - {"timeout_s"} or inert_reason() is not None:
            return original(orphans, *args, **kwargs)
        root = None
        started = time.monotonic()
        try:
            root = _orphan_root(module)
            report = supervisor_doctor(root, reset=True, force=False)
            result = report.get("reset_result")
            if not isinstance(result, dict):
                raise Refused("the supervisor's reset answer has no reset_result")
            swept = [_orphan_daemon(module, entry) for entry in result.get("swept") or []]
            failed = [
                (_orphan_daemon(module, entry), str(entry.get("failure_reason")))
                for entry in result.get("failed") or []
            ]
            failed += [
                (
                    _orphan_daemon(module, entry),
                    f"not stopped: {entry.get('cleanup_class')} ({entry.get('skip_reason')}); "
                    f"`{FORCE_COMMAND}` can stop it",
                )
                for entry in result.get("skipped") or []
            ]
        except Exception as exc:
            if root is not None:
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(orphans, *args, **kwargs)
        return module.SweepReport(swept=swept, failed=failed, duration_s=time.monotonic() - started)

    return sweep_orphans


def _enumerate_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def enumerate_identity_records(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs or inert_reason() is not None:
            return original(*args, **kwargs)
        root = None
        try:
            root = _orphan_root(module)
            report = _report_to_enumerate(root)
            return [
                _identity_record(entry) for entry in report["orphans"] if isinstance(entry, dict)
            ]
        except Exception as exc:
            if root is not None:
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)

    return enumerate_identity_records


def _reset_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def reset_orphans(records: Any, *args: Any, **kwargs: Any) -> Any:
        if args or set(kwargs) - {"include_operator_required"} or inert_reason() is not None:
            return original(records, *args, **kwargs)
        root = None
        try:
            root = _orphan_root(module)
            # The supervisor classifies again at the moment it sweeps: what it stops is what
            # is an orphan then, never a record that went stale meanwhile.
            force = bool(kwargs.get("include_operator_required", False))
            report = supervisor_doctor(root, reset=True, force=force)
            return _reset_result(module, report.get("reset_result"))
        except Exception as exc:
            if root is not None:
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(records, *args, **kwargs)

    return reset_orphans


# auth doctor's daemon summary, and its orphan finding in 3.2.0-3.2.3

#: ``spec-kitty auth doctor`` itself (3.2.0+): its daemon summary, and 3.2.0-3.2.3's findings.
AUTH_DOCTOR_MODULE = "specify_cli.cli.commands._auth_doctor"
_DAEMON_SUMMARY = "_read_daemon_summary"
_FINDINGS = "_compute_findings"
_DAEMON_SUMMARY_FIELDS = ("active", "pid", "port", "package_version", "protocol_version")
_FINDING_FIELDS = ("id", "severity", "summary", "remediation_command", "remediation_description")
_SCHEMA_1_FINDINGS_KEYWORDS = frozenset({"session", "refresh_lock", "daemon", "orphans"})
#: ``auth doctor`` reads its daemon summary and at once enumerates the orphans: the report
#: fetched for the one serves the other, if it is this young (one question, one snapshot).
SHARED_REPORT_SECONDS = 10.0

#: The doctor report ``_read_daemon_summary`` fetched, for the enumeration that follows it.
_SHARED_REPORT: dict[str, Any] = {}
#: 3.2.0-3.2.3: the supervisor's class of each orphan it listed last, by (port, pid); schema 1's
#: ``OrphanDaemon`` has no place for it, and the orphan finding needs it.
_LEGACY_CLASSES: dict[tuple[Any, Any], tuple[Any, Any]] = {}


def _report_to_enumerate(root: Path) -> dict[str, Any]:
    """The report the daemon summary just fetched for ``root`` (taken once), else a new one."""
    shared = _SHARED_REPORT.copy()
    _SHARED_REPORT.clear()
    if shared.get("root") == root and time.monotonic() - shared["at"] <= SHARED_REPORT_SECONDS:
        report: dict[str, Any] = shared["report"]
        return report
    return supervisor_doctor(root, reset=False, force=False)


def daemon_summary_fields(report: dict[str, Any]) -> dict[str, Any] | None:
    """Upstream's ``DaemonSummary`` fields for the root's daemon in a supervisor's doctor report.

    With a supervisor (``report["supervisor"]``): its current daemon, ``active`` when the
    supervisor holds it healthy, the protocol from that daemon's own health answer (its
    listener record); None when it has no current daemon. Without one (the recorded command's
    ``doctor --json`` probed the range): the listener ``R/sync-daemon`` records, ``active``
    when its self-report provably came from that listener; None when no live listener is
    recorded, since then no daemon of the root runs.
    """
    listeners = [entry for entry in report.get("listeners") or [] if isinstance(entry, dict)]
    if report.get("supervisor") is not None:
        current = next(
            (
                daemon
                for daemon in report.get("daemons") or []
                if isinstance(daemon, dict) and daemon.get("role") == "current"
            ),
            None,
        )
        if current is None:
            return None
        heard = next(
            (
                entry
                for entry in listeners
                if (entry.get("pid"), entry.get("port"))
                == (current.get("pid"), current.get("port"))
            ),
            {},
        )
        return {
            "active": current.get("state") == "healthy",
            "pid": current.get("pid"),
            "port": current.get("port"),
            "package_version": current.get("package_version"),
            "protocol_version": heard.get("protocol_version"),
        }
    recorded = next(
        (entry for entry in listeners if entry.get("is_recorded_singleton") is True), None
    )
    if recorded is None:
        return None
    return {
        "active": recorded.get("self_report_matches_listener") is True,
        "pid": recorded.get("pid"),
        "port": recorded.get("port"),
        "package_version": recorded.get("package_version"),
        "protocol_version": recorded.get("protocol_version"),
    }


def auth_doctor_shape_problem(module: ModuleType) -> str | None:
    """Why ``auth doctor``'s module cannot be patched, or None (3.2.0-3.2.7 have the shape)."""
    summary = _parameters(getattr(module, _DAEMON_SUMMARY, None))
    if summary is None or summary[0] or summary[1]:
        return f"{_DAEMON_SUMMARY} is not a function of no arguments"
    fields = getattr(getattr(module, "DaemonSummary", None), "__dataclass_fields__", {})
    if tuple(fields) != _DAEMON_SUMMARY_FIELDS:
        return f"DaemonSummary is not ({', '.join(_DAEMON_SUMMARY_FIELDS)})"
    if _is_schema_1(module):
        findings = _parameters(getattr(module, _FINDINGS, None))
        if findings is None or findings[0] or findings[1] != _SCHEMA_1_FINDINGS_KEYWORDS:
            return f"{_FINDINGS} is not (*, session, refresh_lock, daemon, orphans)"
        finding = getattr(getattr(module, "Finding", None), "__dataclass_fields__", {})
        if tuple(finding) != _FINDING_FIELDS:
            return f"Finding is not ({', '.join(_FINDING_FIELDS)})"
    return _daemon_root_problem()


def _is_schema_1(module: ModuleType) -> bool:
    # 3.2.0-3.2.3's doctor imports the schema-1 sweep; 3.2.4+'s imports reset_orphans instead.
    return hasattr(module, _SWEEP_ORPHANS) and not hasattr(module, _RESET_ORPHANS)


def patch_auth_doctor_module(module: ModuleType) -> None:
    """Wrap ``auth doctor``'s daemon summary (and 3.2.0-3.2.3's findings), all or none."""
    try:
        problem = auth_doctor_shape_problem(module)
        if problem is not None:
            setattr(module, HOOK_MARKER, {"patched": [], "unpatched": problem})
            _note(resolve_daemon_root(), "unpatched", problem)
            return
        originals = {_DAEMON_SUMMARY: getattr(module, _DAEMON_SUMMARY)}
        wrappers = {_DAEMON_SUMMARY: _daemon_summary_wrapper(module, originals[_DAEMON_SUMMARY])}
        if _is_schema_1(module):
            originals[_FINDINGS] = getattr(module, _FINDINGS)
            wrappers[_FINDINGS] = _findings_wrapper(module, originals[_FINDINGS])
        _install(module, originals, wrappers)
    except Exception:  # a broken integration never breaks spec-kitty
        return


def _daemon_summary_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    """The daemon summary from the supervisor's view, not from reading ``R/sync-daemon``."""

    @functools.wraps(original)
    def _read_daemon_summary(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs or inert_reason() is not None:
            return original(*args, **kwargs)
        root = None
        try:
            root = _orphan_root(module)
            report = supervisor_doctor(root, reset=False, force=False)
            fields = daemon_summary_fields(report)
            summary = None if fields is None else module.DaemonSummary(**fields)
        except Exception as exc:
            if root is not None:
                _note(root, "failure", f"{type(exc).__name__}: {exc}")
            return original(*args, **kwargs)
        _SHARED_REPORT.update({"root": root, "at": time.monotonic(), "report": report})
        return summary

    return _read_daemon_summary


def orphan_remediation(
    classes: list[tuple[Any, Any]],
) -> tuple[str, str] | None:
    """3.2.0-3.2.3: the orphan finding's command and description when the supervisor classed
    some orphans ``operator_required`` (their ``auth doctor --reset`` never stops those), else
    None (upstream's finding is right as it is)."""
    held = [reason for cleanup_class, reason in classes if cleanup_class == "operator_required"]
    if not held:
        return None
    reasons = ", ".join(sorted({str(reason) for reason in held}))
    if len(held) == len(classes):
        return (
            FORCE_COMMAND,
            f"`spec-kitty auth doctor --reset` leaves these: the supervisor classes them "
            f"operator_required ({reasons}); check them, then this command stops them.",
        )
    return (
        "spec-kitty auth doctor --reset",
        f"Sweep orphan daemons in the reserved port range. It leaves {len(held)} "
        f"operator_required ({reasons}); `{FORCE_COMMAND}` can stop those.",
    )


def _findings_wrapper(module: ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    """3.2.0-3.2.3: the orphan finding (F-002) names the command that can stop what is left.

    Schema 1 has no ``--force``: orphans the supervisor classes ``operator_required`` stay
    after ``--reset``. The finding's remediation, which upstream prints as ``Run: ...`` and
    puts into ``--json``, says so and names ``spec-kitty-supervisor doctor --reset --force``.
    """

    @functools.wraps(original)
    def _compute_findings(*args: Any, **kwargs: Any) -> Any:
        findings = original(*args, **kwargs)
        try:
            orphans = kwargs.get("orphans") or []
            classes = [_LEGACY_CLASSES.get((o.port, o.pid), (None, None)) for o in orphans]
            remediation = orphan_remediation(classes)
            if remediation is None or inert_reason() is not None:
                return findings
            import dataclasses

            command, description = remediation
            return [
                dataclasses.replace(
                    finding, remediation_command=command, remediation_description=description
                )
                if finding.id == "F-002"
                else finding
                for finding in findings
            ]
        except Exception:
            return findings

    return _compute_findings


#: Each module the hook patches, and how. The ``.pth`` line forwards exactly these names.
PATCHED_MODULES: dict[str, Callable[[ModuleType], None]] = {
    TARGET_MODULE: patch_module,
    RESTART_MODULE: patch_restart_module,
    ORPHAN_MODULE: patch_orphan_module,
    AUTH_DOCTOR_MODULE: patch_auth_doctor_module,
}


# What doctor shows


def _note(root: Path, kind: str, message: str) -> None:
    """Count a failure (or record why nothing was patched) in ``R/supervisor/integration.json``.

    Read-modify-write without a lock: two processes failing at the same instant may count once.
    """
    try:
        folder = ensure_private_dir(supervisor_dir(root))
        path = folder / INTEGRATION_FILE
        # Never through a link, never blocked by a FIFO: anything but our own regular file is
        # an empty record, replaced below by rename (which replaces the entry, never its target).
        try:
            data = json.loads(read_own_file(path, INTEGRATION_RECORD_LIMIT) or b"{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = data.get(kind)
        if not isinstance(entry, dict):
            entry = {}
        data[kind] = {
            "count": int(entry.get("count", 0)) + 1,
            "last_error": message,
            "time": now,
            "python": sys.executable,
        }
        temporary = folder / f".{INTEGRATION_FILE}.{os.getpid()}"
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(temporary, path)
    except Exception:
        return

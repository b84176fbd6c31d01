"""Spawning a real sync daemon, in upstream's production shape, for a client.

The interpreter, environment and working directory come from the client's request and are
validated here; anything that would make us exec something other than the user's own Python,
or leak the service manager's variables into a daemon, is refused with a clear error.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from spec_kitty_supervisor_client._environment import passed_environment
from spec_kitty_supervisor_client._releases import ignores_spec_kitty_home, without_daemon_reason
from spec_kitty_supervisor_client._terms import in_family_range

from ._daemon_shape import build_daemon_argv
from ._errors import ErrorCode, LifecycleError
from ._fd_limit import child_limit_restorer
from ._files import RefusedFile, open_upstream_file, upstream_file_refused
from ._identity import ProcessIdentity, read_identity
from ._layout import RootLayout
from ._sd_notify import child_environment_scrub

__all__ = [
    "SpawnError",
    "SpawnedDaemon",
    "child_environment",
    "first_free_port",
    "new_token",
    "port_is_free",
    "resolve_working_directory",
    "spawn_daemon",
    "validate_interpreter",
]


class SpawnError(LifecycleError):
    """Raised when a daemon cannot be spawned; ``code`` is the API error code."""

    def __init__(self, code: ErrorCode, message: str, log_tail: str = "") -> None:
        super().__init__(code, message, {"log_tail": log_tail} if log_tail else None)
        self.log_tail = log_tail


class SpawnedDaemon:
    """A daemon just spawned, before it is healthy. Mutable, compared by its fields, not
    hashable (as the dataclass it was: no dataclass on the early spawn's path)."""

    __slots__ = ("identity", "log_offset", "port", "process", "python", "resolved_python", "token")

    def __init__(  # noqa: PLR0917  (the dataclass's signature: positions kept for callers)
        self,
        process: subprocess.Popen[bytes],
        identity: ProcessIdentity,
        port: int,
        token: str,
        python: str,
        resolved_python: str,
        log_offset: int,
    ) -> None:
        self.process = process
        self.identity = identity
        self.port = port
        self.token = token
        self.python = python
        self.resolved_python = resolved_python
        self.log_offset = log_offset

    def _fields(self) -> tuple[object, ...]:
        return (
            self.process,
            self.identity,
            self.port,
            self.token,
            self.python,
            self.resolved_python,
            self.log_offset,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpawnedDaemon) or other.__class__ is not self.__class__:
            return NotImplemented
        return other._fields() == self._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value

    def __repr__(self) -> str:
        return (
            f"SpawnedDaemon(process={self.process!r}, identity={self.identity!r}, "
            f"port={self.port!r}, token={self.token!r}, python={self.python!r}, "
            f"resolved_python={self.resolved_python!r}, log_offset={self.log_offset!r})"
        )


def new_token() -> str:
    # What secrets.token_hex(16) returns (os.urandom, hex), without importing secrets, whose
    # hmac and hashlib (OpenSSL) would cost the supervisor's first stage (_early_spawn).
    return os.urandom(16).hex()


def validate_interpreter(python: str) -> str:
    """The resolved interpreter; raises unless absolute, existing, executable, ours or root's.

    The unresolved path is the daemon's key (venvs share one resolved base interpreter), the
    resolved one goes into the exec marker, as upstream spawners do.
    """
    if not os.path.isabs(python):
        raise SpawnError("invalid_python", f"python must be an absolute path, got {python!r}")
    if "\0" in python:
        # os.stat would raise ValueError, not OSError: refuse it here, with the reason.
        raise SpawnError("invalid_python", f"python {python!r} contains a NUL byte")
    try:
        info = os.stat(python)
    except FileNotFoundError:
        raise SpawnError("invalid_python", f"python {python} does not exist") from None
    except OSError as exc:
        raise SpawnError("invalid_python", f"python {python}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode) or not os.access(python, os.X_OK):
        raise SpawnError("invalid_python", f"python {python} is not an executable file")
    resolved = os.path.realpath(python)
    resolved_info = os.stat(resolved)
    for path, mode_info in ((python, info), (resolved, resolved_info)):
        if mode_info.st_mode & 0o002:
            raise SpawnError(
                "invalid_python", f"python {path} is writable by others; refusing to run it"
            )
        if mode_info.st_uid not in (0, os.getuid()):
            raise SpawnError(
                "invalid_python",
                f"python {path} belongs to uid {mode_info.st_uid}, neither you nor root",
            )
    return resolved


class ValidatedInterpreters:
    """:func:`validate_interpreter`'s answers, kept while the file stays the same.

    The warm ``ensure`` is spec-kitty's hot path: one ``stat`` proves the interpreter is the
    file we already checked, instead of a ``realpath`` walk and three more ``stat`` calls.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, ...], str]] = {}

    def resolve(self, python: str) -> str:
        try:
            info = os.stat(python)
        except (OSError, ValueError):
            return validate_interpreter(python)  # raises with the precise reason
        key = (info.st_dev, info.st_ino, info.st_mode, info.st_uid, info.st_mtime_ns)
        known = self._known.get(python)
        if known is not None and known[0] == key:
            return known[1]
        resolved = validate_interpreter(python)
        self._known[python] = (key, resolved)
        return resolved


def resolve_working_directory(cwd: str | None, fallback: Path) -> str:
    """The client's directory (3.2.7 finds its project from it), when it is a usable directory."""
    if cwd is None:
        return str(fallback)
    if not os.path.isabs(cwd) or "\0" in cwd:
        raise SpawnError("invalid_cwd", f"cwd must be an absolute path, got {cwd!r}")
    if not os.path.isdir(cwd) or not os.access(cwd, os.X_OK):
        raise SpawnError("invalid_cwd", f"cwd {cwd} is not an accessible directory")
    return cwd


def child_environment(
    client_env: Mapping[str, str], daemon_root: Path, package_version: str
) -> dict[str, str]:
    """An allow-listed copy of the client's environment, plus the root and the version.

    The service manager's variables are dropped even when a client sends them: a daemon that
    inherited ``NOTIFY_SOCKET`` or ``LISTEN_*`` could speak to systemd in our name.
    """
    env = child_environment_scrub(passed_environment(client_env))
    env.setdefault("PATH", os.defpath)
    env.setdefault("HOME", os.path.expanduser("~"))
    env["SPEC_KITTY_HOME"] = str(daemon_root)
    env["SPEC_KITTY_CLI_VERSION"] = package_version
    for name, value in env.items():
        if "\0" in value:
            # exec cannot pass it: refuse the request instead of failing inside Popen.
            raise SpawnError("invalid_env", f"{name} contains a NUL byte")
    return env


def check_root_supported(python_home: str, daemon_root: Path, package_version: str) -> None:
    """Refuse, before any spawn, a release that cannot serve ``daemon_root``.

    Releases without a daemon (2.x, 3.0.x, 4.0) have nothing to spawn: every attempt would
    only leave a traceback in ``R/sync-daemon.log``. Releases that ignore ``SPEC_KITTY_HOME``
    (3.1.x, 3.2.0-3.2.2) always use ``$HOME/.spec-kitty``: for any other root their daemon
    would write another root's queue, and a CLI of that release would start a second one.
    """
    no_daemon = without_daemon_reason(package_version)
    if no_daemon is not None:
        raise SpawnError(
            "no_sync_daemon",
            f"{no_daemon}. Use a spec-kitty-cli 3.1 to 3.2 interpreter, or none at all.",
        )
    if not ignores_spec_kitty_home(package_version):
        return
    expected = (Path(python_home) / ".spec-kitty").resolve()
    if expected != daemon_root:
        raise SpawnError(
            "unsupported_root",
            f"spec-kitty-cli {package_version} ignores SPEC_KITTY_HOME and always uses "
            f"{expected}; it cannot serve the root {daemon_root}. Use that root (unset "
            "SPEC_KITTY_HOME, or pass --root to match), or upgrade to spec-kitty-cli 3.2.3 or "
            "later, which honours SPEC_KITTY_HOME.",
        )


def port_is_free(port: int) -> bool:
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


def first_free_port(
    port_range: tuple[int, int], taken: Collection[int], is_free: Callable[[int], bool]
) -> int:
    """The first port of the half-open range that no daemon of ours has and ``is_free`` passes."""
    low, high = port_range
    for port in range(low, high):
        if port not in taken and is_free(port):
            return port
    raise SpawnError(
        "no_free_port",
        f"no free port in {low}-{high} (half-open); set SPEC_KITTY_SUPERVISOR_PORT_RANGE "
        "or stop what holds them (`spec-kitty-supervisor doctor`)",
    )


def spawn_daemon(
    layout: RootLayout,
    *,
    python: str,
    resolved_python: str,
    port: int,
    env: Mapping[str, str],
    cwd: str,
    umask: int = -1,
) -> SpawnedDaemon:
    """Start one daemon in its own session; the caller waits for its health.

    Its output goes to ``R/sync-daemon.log``, as upstream's spawns do, but only when that is
    a regular file of ours with one link: a FIFO there would block the spawn, a link would
    send the daemon's output elsewhere (``LifecycleError("root_file_refused")``).
    """
    token = new_token()
    argv = build_daemon_argv(python, resolved_python, str(layout.daemon_root), port, token)
    try:
        log_fd = open_upstream_file(layout.daemon_log, os.O_WRONLY | os.O_APPEND, single_link=True)
    except RefusedFile as refused:
        raise upstream_file_refused(refused) from None
    with (
        open(os.devnull, "rb") as stdin,
        open(log_fd, "ab") as log,
    ):
        # Where this daemon's output starts: only that part explains a failure of this spawn.
        log_offset = log.seek(0, os.SEEK_END)
        try:
            process = subprocess.Popen(
                argv,
                executable=python,
                stdin=stdin,
                stdout=log,
                stderr=log,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                umask=umask,
                # One setrlimit call, nothing else: why that is safe here, see the function.
                preexec_fn=child_limit_restorer(),  # noqa: PLW1509
            )
        except OSError as exc:
            raise SpawnError("spawn_failed", f"could not start {python}: {exc}") from None
    identity = read_identity(process.pid)
    if identity is None:
        # It died before we could read its start: reap it and report what it logged.
        process.wait()
        raise SpawnError(
            "spawn_failed",
            f"the daemon exited at once (exit code {process.returncode})",
            log_tail=log_tail(layout.daemon_log, since=log_offset),
        )
    return SpawnedDaemon(
        process=process,
        identity=identity,
        port=port,
        token=token,
        python=python,
        resolved_python=resolved_python,
        log_offset=log_offset,
    )


def log_tail(path: Path, *, since: int = 0, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of the daemon log written after byte ``since``.

    Empty when the log is not a regular file (it is read without following a final link and
    without blocking on a FIFO, as it was written).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, max(since, size - max_bytes), os.SEEK_SET)
        return os.read(fd, max_bytes).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)

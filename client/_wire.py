"""The ``/v1`` wire, standard library only: paths, one kept-alive connection, auto-start.

Two users share this file. The client library's synchronous hot path speaks through
:class:`Connection`, and ``spec-kitty-supervisor integrate`` copies the file, byte for byte, as
the transport of the hook it installs into spec-kitty's own environment, where nothing of this
project may be imported and no dependency may be added. So it imports the standard library
only, and everything it knows about the protocol (the header, the socket's place, the
allow-listed environment, the auto-start lock) is written here once.

HTTP/1.1 over the root's Unix socket is small enough to speak by hand: the supervisor always
answers with ``content-length`` (it never chunks), and a request is one ``sendall``.

Failures, flat::

    WireError
    ├── Unavailable        nothing answers on the socket, or the connection broke mid-reply
    ├── Busy               a supervisor listens, but its listen queue stayed full until the deadline
    ├── StartFailed        no supervisor could be started for the root
    └── UnsafeDirectory    a folder we would trust belongs to someone else or is writable by others
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

__all__ = [
    "NOT_A_FILE_ERRNOS",
    "PASSED_ENV_NAMES",
    "PASSED_ENV_PREFIXES",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "SOCKET_DIR_RECORD",
    "SOCKET_PATH_LIMIT",
    "Busy",
    "Connection",
    "HANDED_REQUEST_FD_ENV",
    "Reply",
    "StartFailed",
    "UnsafeDirectory",
    "Unavailable",
    "WireError",
    "daemon_root_as_given",
    "daemon_root_spelled",
    "describe_mode",
    "ensure_private_dir",
    "open_own_file",
    "recorded_socket_dir",
    "refusal",
    "passed_environment",
    "read_own_file",
    "replace_exiting_supervisor",
    "resolve_daemon_root",
    "socket_accepts",
    "unwritable_folder",
    "socket_path_for_root",
    "start_supervisor",
    "started_supervisor_wrote",
    "supervisor_dir",
]

#: The protocol this wire speaks. A supervisor refuses a client of another major version.
PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "spec-kitty-supervisor-protocol"

#: ``sizeof(sockaddr_un.sun_path)`` minus the terminating NUL byte.
SOCKET_PATH_LIMIT = 103 if sys.platform == "darwin" else 107

# connect() on a Unix socket whose listen queue is full fails at once with EAGAIN (Linux) instead
# of waiting. Something listens, so that is "busy", never "absent": it is retried until the
# caller's deadline, and never a reason to start another supervisor.
_CONNECT_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


class WireError(Exception):
    """The base of every failure this module reports."""


class Unavailable(WireError, ConnectionError):
    """Raised when no supervisor answers on the socket, or it closed the connection mid-reply."""


class Busy(WireError, TimeoutError):
    """Raised when the socket's listen queue stayed full (EAGAIN) until the deadline."""


class StartFailed(WireError, RuntimeError):
    """Raised when no supervisor could be started for a root."""


class UnsafeDirectory(WireError, PermissionError):
    """Raised when a folder belongs to another user or is writable by group or others."""


# Paths


def resolve_daemon_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the daemon root exactly as spec-kitty (3.2.3+) derives it.

    An explicit ``root`` wins; else ``$SPEC_KITTY_HOME`` when set and non-empty; else
    ``~/.spec-kitty``. The result is ``Path.resolve()``d, as upstream does, so that the
    ``--spec-kitty-daemon-root=`` marker we write and compare is byte-identical to theirs.
    """
    return daemon_root_as_given(root).resolve()


def daemon_root_spelled(
    root: str | os.PathLike[str] | None = None,
) -> str | os.PathLike[str] | None:
    """Where the daemon root comes from, as spelled there, before any ``~`` expansion: the
    argument, else ``$SPEC_KITTY_HOME``; None for the default, ``.spec-kitty`` in the home
    folder. The one place that says which source wins."""
    if root is not None and str(root) != "":
        return root
    return os.environ.get("SPEC_KITTY_HOME", "") or None


def daemon_root_as_given(root: str | os.PathLike[str] | None = None) -> Path:
    """The daemon root before resolving: the path whose links :func:`resolve_daemon_root`
    follows (a dangling link is only visible here)."""
    spelled = daemon_root_spelled(root)
    if spelled is None:
        return Path.home() / ".spec-kitty"
    return Path(spelled).expanduser()


def supervisor_dir(daemon_root: Path) -> Path:
    """The supervisor's own folder inside a daemon root (mode 0700)."""
    return daemon_root / "supervisor"


def _short_socket_dirs() -> list[Path]:
    candidates = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and Path(runtime_dir).is_dir():
        candidates.append(Path(runtime_dir) / "spec-kitty-supervisor")
    candidates.append(Path("/tmp") / f"spec-kitty-supervisor-{os.getuid()}")
    return candidates


#: Names the descriptor (a pipe's read end) on which a starting supervisor finds the ensure
#: request its starter is about to send (docs/adr/0013): the supervisor spawns that daemon
#: before its heavy imports. The request itself never goes through argv or the environment
#: (``ps`` shows both to every user); the pipe is the starter's and the supervisor's alone.
HANDED_REQUEST_FD_ENV = "SPEC_KITTY_SUPERVISOR_HANDED_REQUEST_FD"

#: In ``R/supervisor/``: the socket folder a supervisor chose because the predictable one was
#: taken by someone else (its absolute path, one line).
SOCKET_DIR_RECORD = "socket-dir"


def recorded_socket_dir(daemon_root: Path) -> Path | None:
    """The folder ``R/supervisor/socket-dir`` names, if it is still a private folder of ours."""
    raw = read_own_file(supervisor_dir(daemon_root) / SOCKET_DIR_RECORD, 4096)
    if raw is None:
        return None
    folder = Path(raw.decode("utf-8", errors="replace").strip())
    if not folder.is_absolute():
        return None
    try:
        info = folder.lstat()
    except OSError:
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    return folder if private and not info.st_mode & 0o077 else None


@functools.lru_cache(maxsize=64)
def _preferred_socket_path(daemon_root: Path) -> Path | None:
    """``R/supervisor/supervisor.sock`` when it fits a socket address, else None.

    A function of the root's path alone, so it is remembered: every request of every client
    derives its socket from its root, and building the path and checking its length cost
    more instructions than the rest of the one call's own preparation.
    """
    preferred = supervisor_dir(daemon_root) / "supervisor.sock"
    return preferred if len(os.fsencode(preferred)) <= SOCKET_PATH_LIMIT else None


def socket_path_for_root(daemon_root: Path) -> Path:
    """The control socket of the supervisor that owns ``daemon_root``.

    Normally ``R/supervisor/supervisor.sock``. A Unix socket path longer than the platform
    limit cannot be bound, so a deep root falls back to a short per-user path, under
    ``$XDG_RUNTIME_DIR`` when there is one, named by a digest of the root so that two roots
    never share a socket. When that predictable folder was taken by someone else, the
    supervisor makes a private folder with a random name instead and records it in
    ``R/supervisor/socket-dir``, which wins here while it names a private folder of ours.
    The caller that creates a fallback folder makes it 0700 and checks that it owns it
    (:func:`ensure_private_dir`).
    """
    preferred = _preferred_socket_path(daemon_root)
    if preferred is not None:
        return preferred
    # Imported here, as subprocess below: loading OpenSSL's hashes costs a spec-kitty process
    # milliseconds, and only a deep root needs a digest (a supervisor start, a subprocess).
    import hashlib

    name = f"{hashlib.sha256(os.fsencode(daemon_root)).hexdigest()[:16]}.sock"
    recorded = recorded_socket_dir(daemon_root)
    if recorded is not None and len(os.fsencode(recorded / name)) <= SOCKET_PATH_LIMIT:
        return recorded / name
    for folder in _short_socket_dirs():
        if len(os.fsencode(folder / name)) <= SOCKET_PATH_LIMIT:
            return folder / name
    return _short_socket_dirs()[-1] / name


def _not_a_folder(path: Path, info: os.stat_result) -> UnsafeDirectory:
    # Moving it is the user's call (it may be theirs); nothing is ever followed through it.
    kind = "a regular file" if stat.S_ISREG(info.st_mode) else describe_mode(info.st_mode)
    return UnsafeDirectory(
        f"{path} is {kind}, not a folder; move it aside (`mv {path} {path}.moved`)"
    )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and prove it is private to this user.

    A supervisor or client that trusted a folder of someone else, or one others can write,
    could be handed a socket or lock file by them: :class:`UnsafeDirectory` then.
    """
    # mkdir's mode applies to the last folder only: create the parent (a new daemon root)
    # private too, rather than with the umask's 0755.
    for folder in (path.parent, path):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise _not_a_folder(folder, folder.lstat()) from None
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise _not_a_folder(path, info)
    if info.st_uid != os.getuid():
        raise UnsafeDirectory(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
            "refusing to use it"
        )
    if info.st_mode & 0o022:
        raise UnsafeDirectory(
            f"{path} is writable by group or others (mode {info.st_mode & 0o777:04o}); "
            f"run `chmod 700 {path}`"
        )
    return path


# Files of ours in R/supervisor/

#: Opening these errnos means the entry is not a file we could use: a final symlink (ELOOP;
#: EMLINK on some BSDs), a directory opened for writing, a socket file.
NOT_A_FILE_ERRNOS = frozenset(
    {errno.ELOOP, errno.EMLINK, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP}
)


def describe_mode(mode: int) -> str:
    """What an entry that is not a regular file is, in the words of our messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def refusal(info: os.stat_result, *, single_link: bool) -> str | None:
    """What makes the entry ``info`` describes unfit to open, or None when it is a regular
    file of ours (with one link when ``single_link``: a hard link would redirect a write)."""
    if not stat.S_ISREG(info.st_mode):
        return describe_mode(info.st_mode)
    if info.st_uid != os.getuid():
        return f"a file of uid {info.st_uid}"
    if single_link and info.st_nlink != 1:
        return f"a file with {info.st_nlink} hard links"
    return None


def _move_aside(path: Path) -> Path:
    for attempt in range(1000):
        target = path.with_name(f"{path.name}.refused-{attempt}")
        if not os.path.lexists(target):
            os.rename(path, target)
            return target
    raise FileExistsError(f"too many refused copies of {path}")


def read_own_file(path: Path, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``path`` if it is a regular file of this user, else None.

    Never follows a final symlink and never blocks on a FIFO; changes nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def open_own_file(path: Path, flags: int, mode: int = 0o600) -> tuple[int, str | None]:
    """Open, creating it if needed, a file that is ours alone; return ``(fd, what was moved)``.

    Never follows a final symlink, never blocks on a FIFO, never truncates (``flags`` must not
    carry ``O_TRUNC``: truncate the descriptor once this returned). A symlink, directory, FIFO,
    socket, another user's file or a file with other hard links at ``path`` is renamed
    ``<name>.refused-N`` (the entry itself, never what it points to) and a fresh file is made;
    the second element then says what was moved where, for the caller to log.
    """
    if flags & os.O_TRUNC:
        raise ValueError("open_own_file never truncates before it knows the file is ours")
    opened = flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    note = None
    for _ in range(3):
        try:
            fd = os.open(path, opened, mode)
        except OSError as exc:
            if exc.errno not in NOT_A_FILE_ERRNOS:
                raise
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
        else:
            info = os.fstat(fd)
            if refusal(info, single_link=True) is None:
                return fd, note
            os.close(fd)
        kind = refusal(info, single_link=True) or "a regular file"
        note = f"{path} was {kind}; moved to {_move_aside(path)}"
    raise OSError(errno.EBUSY, f"{path} keeps being replaced by something that is not a file")


# The environment a daemon inherits

PASSED_ENV_NAMES = frozenset(
    {
        "HOME",
        "PATH",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        "TZ",
        "LANG",
        "LANGUAGE",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "XDG_STATE_HOME",
        "VIRTUAL_ENV",
    }
)
PASSED_ENV_PREFIXES = ("LC_", "SPEC_KITTY_")
#: Set by the supervisor itself for each daemon; never taken from a client.
_SET_BY_SUPERVISOR = frozenset({"SPEC_KITTY_HOME", "SPEC_KITTY_CLI_VERSION"})
_PASSED_ENV_NAMES_BYTES = frozenset(os.fsencode(name) for name in PASSED_ENV_NAMES)
_PASSED_ENV_PREFIXES_BYTES = tuple(os.fsencode(prefix) for prefix in PASSED_ENV_PREFIXES)
_SET_BY_SUPERVISOR_BYTES = frozenset(os.fsencode(name) for name in _SET_BY_SUPERVISOR)


def passed_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``env``: what a client sends and what a daemon inherits.

    The supervisor applies the same list again before it spawns: it never trusts what it was
    sent.
    """
    if env is os.environ and os.name == "posix":
        # This runs on every ensure: os.environ's own bytes are filtered first and only what
        # passes is decoded, as os.environ decodes it (its encoding, surrogateescape), by the
        # bytes' own method: os.fsdecode would look both up again for every key and value.
        encoding = sys.getfilesystemencoding()
        return {
            key.decode(encoding, "surrogateescape"): value.decode(encoding, "surrogateescape")
            for key, value in os.environ._data.items()  # type: ignore[attr-defined]
            if key not in _SET_BY_SUPERVISOR_BYTES
            and (key in _PASSED_ENV_NAMES_BYTES or key.startswith(_PASSED_ENV_PREFIXES_BYTES))
        }
    # Keys first, values only for the few that pass.
    return {
        key: env[key]
        for key in env
        if key not in _SET_BY_SUPERVISOR
        and (key in PASSED_ENV_NAMES or key.startswith(PASSED_ENV_PREFIXES))
    }


# One connection


class Reply:
    """An answer: status, the supervisor's protocol header (None when absent), the body."""

    __slots__ = ("body", "protocol", "status")

    def __init__(self, status: int, protocol: str | None, body: bytes) -> None:
        self.status = status
        self.protocol = protocol
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class _ClosedBeforeReply(Exception):
    pass


_REQUEST_HEADERS = (
    f"host: supervisor\r\naccept: application/json\r\n{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\n"
)


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connected socket, waiting for room in a full listen queue (EAGAIN) up to ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fsencode(path))
        except OSError as exc:
            sock.close()
            if exc.errno not in _CONNECT_BUSY:
                raise Unavailable(
                    f"no supervisor answers on {path} ({exc.strerror or exc})"
                ) from None
            if time.monotonic() + pause > deadline:
                raise Busy(
                    f"the supervisor on {path} accepted no connection for {timeout:g} s "
                    "(its connection backlog is full)"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        return sock


class Connection:
    """One kept-alive HTTP/1.1 connection to a supervisor's socket.

    A request on a connection the supervisor closed meanwhile (idle timeout, restart) never
    reached it, so it is retried once on a new connection; a fresh connection is not retried.

    ``keep_alive=False`` is for a caller that asks once and leaves (the one call): each
    request says ``connection: close``, so the supervisor closes its end as soon as it has
    answered, in the same turn, instead of waiting for this end to hang up; closing this end
    then wakes nobody.
    """

    def __init__(self, socket_path: Path, timeout: float, *, keep_alive: bool = True) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._headers = _REQUEST_HEADERS + ("" if keep_alive else "connection: close\r\n")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buffer = b""

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        fresh = self._sock is None
        if fresh:
            self._sock = _connect_unix(self.socket_path, self.timeout)
        try:
            return self._exchange(method, path, body)
        except (OSError, ValueError, _ClosedBeforeReply) as exc:
            self.close()
            if fresh or isinstance(exc, TimeoutError):
                raise Unavailable(
                    f"the supervisor on {self.socket_path} did not answer: {exc}"
                ) from None
        self._sock = _connect_unix(self.socket_path, self.timeout)
        try:
            return self._exchange(method, path, body)
        except (OSError, ValueError, _ClosedBeforeReply) as exc:
            self.close()
            raise Unavailable(
                f"the supervisor on {self.socket_path} did not answer: {exc}"
            ) from None

    def _exchange(self, method: str, path: str, body: bytes | None) -> Reply:
        assert self._sock is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._headers}"
        if body is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        self._sock.sendall(head.encode("ascii") + b"\r\n" + (body or b""))
        status_line, headers = self._read_head()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            raise ValueError("an answer without content-length")
        payload = self._read_exactly(int(length))
        closing = headers.get(b"connection", b"").lower() == b"close" or parts[0] == b"HTTP/1.0"
        if closing:
            self.close()
        protocol = headers.get(PROTOCOL_HEADER.encode("ascii"))
        return Reply(
            status=status,
            protocol=None if protocol is None else protocol.decode("ascii", errors="replace"),
            body=payload,
        )

    def _fill(self) -> None:
        assert self._sock is not None
        received = self._sock.recv(65536)
        if not received:
            raise _ClosedBeforeReply("connection closed before a complete reply")
        self._buffer += received

    def _read_head(self) -> tuple[bytes, dict[bytes, bytes]]:
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > 65536:
                raise ValueError("an answer whose head exceeds 64 KiB")
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status_line, headers

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._fill()
        payload, self._buffer = self._buffer[:length], self._buffer[length:]
        return payload


# Starting a supervisor


def socket_accepts(path: Path) -> bool:
    """A socket that accepts connections means a supervisor is present (and is never unlinked).

    So does one whose listen queue is full (EAGAIN): something listens on it, only busy.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fsencode(path))
        except OSError as exc:
            return exc.errno in _CONNECT_BUSY
    return True


#: Errors that mean "not writable by us here", as opposed to a transient failure.
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def unwritable_folder(folder: Path, exc: OSError) -> str:
    """Why ``folder`` cannot be written, with the command that fixes it (client and
    supervisor say the same)."""
    if exc.errno == errno.EROFS:
        return (
            f"cannot write in {folder}: its file system is read-only; remount it read-write, "
            "or use another root (--root or SPEC_KITTY_HOME)"
        )
    return f"cannot write in {folder} ({exc.strerror}); run `chmod u+rwx {folder}`"


def _unwritable_start(daemon_root: Path, exc: OSError) -> StartFailed:
    where = Path(exc.filename).parent if exc.filename else daemon_root
    return StartFailed(
        f"cannot start a supervisor for {daemon_root}: {unwritable_folder(where, exc)}"
    )


def start_supervisor(
    daemon_root: Path,
    command: Callable[[], Sequence[str]],
    timeout: float = 15.0,
    first_request: bytes | None = None,
) -> None:
    """Make sure a supervisor answers for ``daemon_root``, starting ``command() run`` if needed.

    ``command`` is asked only when a supervisor must really be started, under the lock.
    ``first_request`` is the body of the ``POST /v1/sync/ensure`` the caller sends next: a
    supervisor this call starts gets it on a pipe, so that it can spawn that daemon while it
    imports the rest of itself (docs/adr/0013). It is a hint, never the request: the caller
    still sends it, and the supervisor's answer to it is the answer.

    Thirty clients that find no supervisor at once must end with exactly one. They serialise
    on ``R/supervisor/autostart.lock``: the first starts a supervisor and waits until its
    socket answers; the others, once they get the lock, find it answering and start nothing.
    The supervisor's own flock is the second line of defence: a redundant one exits at once.
    """
    socket_path = socket_path_for_root(daemon_root)
    if socket_accepts(socket_path):
        return
    try:
        folder = ensure_private_dir(supervisor_dir(daemon_root))
        fd, _moved = open_own_file(folder / "autostart.lock", os.O_RDWR)
    except OSError as exc:
        # A read-only or unwritable root: no supervisor could record anything there either
        # (it refuses to start, docs/runbook.md), so say why now instead of a traceback.
        if exc.errno in NOT_WRITABLE and not isinstance(exc, WireError):
            raise _unwritable_start(daemon_root, exc) from None
        raise
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StartFailed(
                        f"another client has been starting the supervisor of {daemon_root} "
                        f"for over {timeout:.0f} s"
                    ) from None
                time.sleep(0.01)
        if socket_accepts(socket_path_for_root(daemon_root)):
            return
        _spawn_and_wait(daemon_root, list(command()), deadline, first_request)
    finally:
        os.close(fd)


def replace_exiting_supervisor(
    daemon_root: Path,
    command: Callable[[], Sequence[str]],
    timeout: float = 15.0,
    first_request: bytes | None = None,
) -> None:
    """A supervisor answered ``supervisor_exiting``: wait until it has let go, then start one.

    It stops accepting first, then finishes the requests in flight, unlinks its socket and
    releases the root; a newcomer started before that would find the root still held. The
    wait is bounded: a supervisor that died on its way out leaves a socket file behind.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        socket_path = socket_path_for_root(daemon_root)
        if not (socket_accepts(socket_path) or socket_path.exists()):
            break
        time.sleep(0.01)
    start_supervisor(daemon_root, command, max(deadline - time.monotonic(), 0.1), first_request)


def _handed_request_pipe(first_request: bytes | None) -> int | None:
    """A pipe's read end holding ``first_request`` and its end, or None when it cannot.

    Written before the supervisor starts and closed at once, so its reader sees the request
    and then end-of-file; a request larger than the pipe's buffer is not handed at all
    (the supervisor then starts as it always did).
    """
    if not first_request:
        return None
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        written = os.write(write_end, first_request)
    except OSError:
        written = 0
    finally:
        os.close(write_end)
    if written != len(first_request):
        os.close(read_end)
        return None
    return read_end


def _spawn_and_wait(
    daemon_root: Path, command: list[str], deadline: float, first_request: bytes | None = None
) -> None:
    import subprocess

    argv = [*command, "run", "--root", str(daemon_root), "--auto-started"]
    stderr_path = supervisor_dir(daemon_root) / "autostart.stderr"
    for attempt in range(1, 4):
        try:
            stderr, _moved = open_own_file(stderr_path, os.O_RDWR)
        except OSError as exc:
            if exc.errno in NOT_WRITABLE:
                raise _unwritable_start(daemon_root, exc) from None
            raise
        handed = _handed_request_pipe(first_request)
        env = None if handed is None else {**os.environ, HANDED_REQUEST_FD_ENV: str(handed)}
        try:
            os.ftruncate(stderr, 0)  # only now that it is known to be ours
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
                pass_fds=() if handed is None else (handed,),
                env=env,
            )
        except OSError as exc:
            raise StartFailed(f"could not run {argv[0]}: {exc}") from None
        finally:
            os.close(stderr)
            if handed is not None:
                os.close(handed)
        while time.monotonic() < deadline:
            # Asked again each time: the supervisor may record a socket folder of its own.
            socket_path = socket_path_for_root(daemon_root)
            if socket_accepts(socket_path):
                _let_go(process)
                return
            if process.poll() is not None:
                break
            time.sleep(0.01)
        else:
            _let_go(process)
            raise StartFailed(
                f"the supervisor for {daemon_root} did not answer on "
                f"{socket_path_for_root(daemon_root)} in time; see {stderr_path}"
            )
        # A supervisor killed by a signal before it answered (a kill -9, the OOM killer) was
        # not refused: start another. One that exited with an error says why on its stderr.
        if process.returncode > 0 or attempt == 3:
            message = _tail(stderr_path)
            raise StartFailed(
                f"the supervisor for {daemon_root} exited with code {process.returncode}: {message}"
            )
        if process.returncode == 0:
            # Exit 0 without a socket: a supervisor that was shutting down still held the root.
            time.sleep(0.1)


def started_supervisor_wrote(daemon_root: Path) -> str:
    """The end of what the supervisor last started for ``daemon_root`` wrote to its stderr
    (``R/supervisor/autostart.stderr``, emptied at each start); "" when it wrote nothing.

    A supervisor writes there only when it cannot log (a traceback, a refusal), so a start
    that failed after its socket answered is reported with it, not as "did not answer".
    """
    path = supervisor_dir(daemon_root) / "autostart.stderr"
    if not path.is_file() or path.is_symlink():
        return ""
    return _tail(path)


def _tail(path: Path, limit: int = 4000) -> str:
    """The end of what a failed supervisor wrote, read without following a planted link."""
    try:
        fd, _moved = open_own_file(path, os.O_RDONLY)
    except OSError as exc:
        return f"(its stderr, {path}, could not be read: {exc})"
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode(errors="replace").strip()
    finally:
        os.close(fd)


def _let_go(process: subprocess.Popen[bytes]) -> None:
    """The supervisor is its own session and outlives us; this object must not warn about it.

    Its exit status is of no interest here (it reports through its socket and logs), so the
    Popen is marked finished instead of being kept around to be waited for.
    """
    if process.poll() is None:
        process.returncode = 0

"""Every file of a daemon root, upstream's and ours, named in one place."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from spec_kitty_supervisor_client._errors import UnsafeDirectoryError
from spec_kitty_supervisor_client._paths import (
    ensure_private_dir,
    socket_path_for_root,
    supervisor_dir,
)
from spec_kitty_supervisor_client._wire import (
    NOT_WRITABLE,
    SOCKET_DIR_RECORD,
    unwritable_folder,
)

from ._files import atomic_write, create_unique_file

__all__ = ["RootLayout", "UnwritableDirectory", "writable_by_others"]


class UnwritableDirectory(UnsafeDirectoryError):
    """Raised when the root or the supervisor's folder cannot be written; names the fix."""


def _unwritable(folder: Path, exc: OSError) -> UnwritableDirectory:
    return UnwritableDirectory(unwritable_folder(folder, exc))


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``; :class:`UnwritableDirectory` when we cannot."""
    try:
        fd, name = create_unique_file(folder, ".write-check.")
    except OSError as exc:
        if exc.errno in NOT_WRITABLE:
            raise _unwritable(folder, exc) from None
        raise
    os.close(fd)
    os.unlink(name)


class RootLayout:
    """The root's files. A plain value class, not a dataclass: the first stage imports this
    module before it serves the socket, and ``dataclasses`` (with ``inspect``) costs it a tenth
    of its start (docs/adr/0015)."""

    __slots__ = ("daemon_root",)

    def __init__(self, daemon_root: Path) -> None:
        self.daemon_root = daemon_root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootLayout) and other.daemon_root == self.daemon_root

    def __hash__(self) -> int:
        return hash(self.daemon_root)

    def __repr__(self) -> str:
        return f"RootLayout(daemon_root={self.daemon_root!r})"

    # Upstream's files (contract document, "Roots and files").
    @property
    def legacy_state(self) -> Path:
        return self.daemon_root / "sync-daemon"

    @property
    def legacy_lock(self) -> Path:
        return self.daemon_root / "sync-daemon.lock"

    @property
    def daemon_log(self) -> Path:
        return self.daemon_root / "sync-daemon.log"

    @property
    def owner_json(self) -> Path:
        return self.daemon_root / "sync" / "daemon" / "owner.json"

    # Ours.
    @property
    def supervisor_dir(self) -> Path:
        return supervisor_dir(self.daemon_root)

    @property
    def socket(self) -> Path:
        return socket_path_for_root(self.daemon_root)

    @property
    def lock(self) -> Path:
        return self.supervisor_dir / "supervisor.lock"

    @property
    def state(self) -> Path:
        return self.supervisor_dir / "state.json"

    @property
    def events(self) -> Path:
        return self.supervisor_dir / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.supervisor_dir / "supervisor.log"

    @property
    def config(self) -> Path:
        return self.supervisor_dir / "config.toml"

    def prepare(self) -> list[str]:
        """Create the root and our private folders, refusing folders that are not ours alone.

        Returns what was done instead of the obvious, for the log: a short socket folder taken
        by someone else is replaced by a fresh private one (recorded for clients).
        """
        try:
            return self._prepare()
        except OSError as exc:
            if isinstance(exc, UnsafeDirectoryError) or exc.errno not in NOT_WRITABLE:
                raise
            # What could not be made (or looked into) is in a folder we may not write.
            where = Path(exc.filename).parent if exc.filename else self.daemon_root
            raise _unwritable(where, exc) from None

    def _prepare(self) -> list[str]:
        self.daemon_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.daemon_root.stat().st_uid
        if owner != os.getuid():
            raise UnsafeDirectoryError(
                f"the daemon root {self.daemon_root} belongs to uid {owner}, not to you "
                f"(uid {os.getuid()}); refusing to supervise it"
            )
        problem = writable_by_others(self.daemon_root, self.daemon_root.stat())
        if problem is not None:
            raise UnsafeDirectoryError(problem)
        ensure_private_dir(self.supervisor_dir)
        # Everything the supervisor records lives in these two: refuse now, with the fix,
        # rather than fail on the first write with a traceback.
        check_writable(self.daemon_root)
        check_writable(self.supervisor_dir)
        folder = self.socket.parent
        if folder == self.supervisor_dir:
            return []
        try:
            ensure_private_dir(folder)
        except UnsafeDirectoryError as taken:
            # Another user made the predictable name first (or made it writable): a folder
            # with a random name beside it, 0700 from birth, recorded where clients look.
            import tempfile  # only here: the first stage avoids it (_files.create_unique_file)

            fresh = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=folder.parent))
            atomic_write(self.supervisor_dir / SOCKET_DIR_RECORD, f"{fresh}\n".encode())
            return [f"{taken}; the socket is in {fresh} instead (recorded in {SOCKET_DIR_RECORD})"]
        return []


def _is_private_group(gid: int) -> bool:
    """The user's own group (user private groups: same name, primary, no other member)."""
    try:
        user = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return (
        gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    )


def writable_by_others(path: Path, info: os.stat_result) -> str | None:
    """Why ``path`` can be written by someone else, with the fixing command; None when it cannot.

    Another user who can write in the daemon root can replace ``R/sync-daemon`` (which upstream
    CLIs act on) or the supervisor's folder. Group write is fine for the user's private group
    (umask 002 on distributions with one group per user).
    """
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        return (
            f"the daemon root {path} is writable by others (mode {mode:04o}); "
            f"run `chmod o-w {path}`"
        )
    if mode & stat.S_IWGRP and not _is_private_group(info.st_gid):
        return (
            f"the daemon root {path} is writable by group {_group_name(info.st_gid)} "
            f"(mode {mode:04o}), which is not your own private group; run `chmod g-w {path}`"
        )
    return None


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"

"""Where things live: the daemon root, the supervisor's folder and its control socket.

These are the only functions that derive these paths; the supervisor, the client, the service
units and the hook installed into spec-kitty all call them, so they can never disagree about
where a root's socket is. They are written in :mod:`._wire` (standard library only, copied
into spec-kitty's environment by ``integrate``) and re-exported here.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from ._wire import (
    SOCKET_PATH_LIMIT,
    UnsafeDirectory,
    daemon_root_as_given,
    daemon_root_spelled,
    socket_path_for_root,
    supervisor_dir,
)
from ._wire import ensure_private_dir as _ensure_private_dir

__all__ = [
    "SOCKET_PATH_LIMIT",
    "check_daemon_root",
    "ensure_private_dir",
    "resolve_daemon_root",
    "socket_path_for_root",
    "supervisor_dir",
]


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and prove it is private to this user.

    Raises :class:`UnsafeDirectoryError` when the folder belongs to another user or is writable
    by group or others: a supervisor or client that trusted such a folder could be handed a
    socket or lock file by someone else.
    """
    from ._errors import UnsafeDirectoryError

    try:
        return _ensure_private_dir(path)
    except UnsafeDirectory as exc:
        raise UnsafeDirectoryError(str(exc)) from None


def resolve_daemon_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the daemon root exactly as spec-kitty (3.2.3+) derives it, if it can be one.

    An explicit ``root`` wins; else ``$SPEC_KITTY_HOME`` when set and non-empty; else
    ``~/.spec-kitty``. The result is ``Path.resolve()``d, as upstream does, so that the
    ``--spec-kitty-daemon-root=`` marker we write and compare is byte-identical to theirs.
    Every command derives its root here, so a root nobody could use (a file, a dangling link,
    another user's folder) is refused before anything is created in it.
    """
    unlinked = _root_without_links(_given_text(root))
    if unlinked is not None:
        resolved, info = unlinked
        _check_folder(resolved, resolved, info)
        return resolved
    given = daemon_root_as_given(root)
    # What Path.resolve() returns (the realpath, as a Path), without its own stat: the check
    # below stats the same path, and reports a symbolic-link loop as a root that cannot be
    # read (Path.resolve() raised RuntimeError for it).
    resolved = Path(os.path.realpath(given))
    check_daemon_root(given, resolved)
    return resolved


def _given_text(root: str | os.PathLike[str] | None) -> str | None:
    """The root :func:`daemon_root_as_given` would name, as text, when that needs no ``~``
    expansion; None otherwise (then the general path derives it)."""
    spelled = daemon_root_spelled(root)
    if spelled is None:
        home = os.environ.get("HOME", "")
        # Path.home() is $HOME without its trailing slashes when $HOME is set.
        return home.rstrip("/") + "/.spec-kitty" if home.startswith("/") else None
    text = os.fspath(spelled)
    return None if not isinstance(text, str) or text.startswith("~") else text


@functools.lru_cache(maxsize=32)
def _walk(text: str) -> tuple[Path, tuple[str, ...]] | None:
    """For an absolute, normalised path: it as a Path, and every prefix a realpath would
    ``lstat`` (``/a``, ``/a/b``, ...); None for any other text.

    A pure function of the text, so it is remembered: building a Path costs more than the
    ``lstat`` calls that follow. Normalised means no ``.``, ``..``, repeated or
    trailing slash: then a path with no symbolic link among its components is its own
    realpath, and ``Path(text)`` is that text.
    """
    if not text.startswith("/") or text.startswith("//") or os.path.normpath(text) != text:
        return None
    parts = text.split("/")[1:]
    if not parts or not all(parts):
        return None
    return Path(text), tuple("/" + "/".join(parts[: i + 1]) for i in range(len(parts)))


def _root_without_links(text: str | None) -> tuple[Path, os.stat_result] | None:
    """``(root, its lstat)`` when ``text`` is an absolute, normalised path to an existing
    entry with no symbolic link anywhere along it: then it is its own realpath, proven by
    the same ``lstat`` of each component that :func:`os.path.realpath` makes, without the
    cost of its general walk (a third of the one call's own work). None otherwise, and
    the general path (realpath, then the precise refusals) decides.
    """
    walk = _walk(text) if text is not None else None
    if walk is None:
        return None
    try:
        for prefix in walk[1]:
            info = os.lstat(prefix)
            if stat.S_ISLNK(info.st_mode):
                return None
    except (OSError, ValueError):
        return None
    return walk[0], info


def check_daemon_root(given: Path, resolved: Path) -> None:
    """Refuse a root that is a file, a dangling link, or a folder of another user.

    A root that does not exist yet is fine (the supervisor creates it, for this user), unless
    the path reaches it through a link that points nowhere: then creating it would create the
    link's target, somewhere the user never named.
    """
    from ._errors import InvalidDaemonRoot

    try:
        info = resolved.stat()
    except FileNotFoundError:
        dangling = next((p for p in (given, *given.parents) if _is_dangling_link(p)), None)
        if dangling is not None:
            raise InvalidDaemonRoot(
                f"the daemon root {given} goes through {dangling}, a symbolic link to "
                f"{os.readlink(dangling)}, which does not exist; create its target or pass "
                "another root"
            ) from None
        return
    except OSError as exc:
        raise InvalidDaemonRoot(f"the daemon root {given} cannot be read: {exc.strerror}") from None
    _check_folder(given, resolved, info)


def _check_folder(given: Path, resolved: Path, info: os.stat_result) -> None:
    """Refuse a root (``info`` is its stat) that is not a folder, or not this user's."""
    from ._errors import InvalidDaemonRoot, UnsafeDirectoryError

    if not stat.S_ISDIR(info.st_mode):
        raise InvalidDaemonRoot(
            f"the daemon root {given} is not a folder; pass a folder, or a path that does not "
            "exist yet, as the root"
        )
    if info.st_uid != os.getuid():
        raise UnsafeDirectoryError(
            f"the daemon root {resolved} belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()}); refusing to use it"
        )


def _is_dangling_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()

"""After every chaos test: the daemon tokens of its roots, looked for where they do not belong.

``test_tokens.py`` drives one session through everything that prints or writes and searches
all of it. This is the suite-wide net behind it: when a chaos test's body has passed, while its
fixtures (and so its sandboxes) still exist, every daemon token that can be known is collected
and every file of the test's sandboxes is searched for it, outside the places a token belongs.

Known tokens: the daemons a fleet started, every token in the root's token files and in their
moved-aside copies, and the argv of every live daemon of the root. The supervisor's own log
and ledger are also searched for anything shaped like a token (32 lowercase hex characters on
their own): nothing else that the supervisor writes has that shape.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import psutil

from sks_harness import DaemonFleet, Sandbox, SupervisorUnderTest, daemon_pids, parse_daemon_argv

__all__ = ["TOKEN_HOMES", "is_token_home", "leaked_tokens", "sandboxes_of"]

_TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
#: Where a token belongs, relative to the root: upstream's state file, the supervisor's table
#: and the daemon's owner record; each also as a moved-aside copy (``<name>.<label>-<n>``), with
#: whatever a test planted inside one of them made a folder, and as the temporary file of an
#: atomic write (``.<stem>.<random>.tmp`` or upstream's ``.<stem>-<random>.tmp``), which a process
#: killed half-way through its write leaves behind.
TOKEN_HOMES = ("sync-daemon", "supervisor/state.json", "sync/daemon/owner.json")


def _home_pattern(home: str) -> str:
    folder, _, name = home.rpartition("/")
    prefix = re.escape(f"{folder}/" if folder else "")
    stem = re.escape(name.split(".")[0])
    copies = rf"{re.escape(home)}(\.[a-z]+-\d+)?(/.*)?"
    return rf"{copies}|{prefix}\.{stem}[.-][^/]*\.tmp"


_HOME = re.compile("|".join(_home_pattern(home) for home in TOKEN_HOMES))
#: The daemons' queues: SQLite files, not text anyone reads.
_DATABASES = (".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite")
#: Files whose every token-shaped string is a leak: the supervisor's own log and ledger.
_OURS = re.compile(r"supervisor/(supervisor\.log|events\.jsonl)(\.[\w.-]+)?")


def is_token_home(relative: str) -> bool:
    """Whether a path relative to the root (posix) is a place a daemon token belongs."""
    return _HOME.fullmatch(relative) is not None


def sandboxes_of(values: Iterable[object]) -> tuple[list[Sandbox], list[DaemonFleet]]:
    """The sandboxes and fleets a test's fixture values hold (directly, or through a harness)."""
    sandboxes: list[Sandbox] = []
    fleets: list[DaemonFleet] = []
    for value in values:
        held = (value, getattr(value, "sup", None), getattr(value, "sandbox", None))
        for found in held:
            candidate = found.sandbox if isinstance(found, SupervisorUnderTest) else found
            if isinstance(candidate, Sandbox) and candidate not in sandboxes:
                sandboxes.append(candidate)
            if isinstance(candidate, DaemonFleet) and candidate not in fleets:
                fleets.append(candidate)
    return sandboxes, fleets


def _files(base: Path) -> list[Path]:
    """Every entry below ``base`` that is not a folder; os.walk, unlike rglob, shrugs off a
    folder renamed or removed while it looks (a supervisor may be moving one aside)."""
    found = []
    for folder, _, names in os.walk(base):
        found.extend(Path(folder) / name for name in names)
    return sorted(found)


def _known_tokens(sandbox: Sandbox) -> set[str]:
    tokens: set[str] = set()
    for path in _files(sandbox.root):
        relative = path.relative_to(sandbox.root).as_posix()
        if is_token_home(relative) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                tokens.update(m.decode() for m in _TOKEN.findall(path.read_bytes()))
    for pid in daemon_pids(sandbox.root):
        with contextlib.suppress(psutil.Error):
            shape = parse_daemon_argv(psutil.Process(pid).cmdline())
            if shape is not None:
                tokens.add(shape.token)
    return tokens


def leaked_tokens(sandboxes: list[Sandbox], fleets: list[DaemonFleet]) -> list[str]:
    """Every place a known token (or, in our own log and ledger, any token) appears wrongly."""
    tokens = {daemon.token for fleet in fleets for daemon in fleet.daemons}
    for sandbox in sandboxes:
        tokens |= _known_tokens(sandbox)
    found = []
    for sandbox in sandboxes:
        for path in _files(sandbox.base):
            if (
                path.is_symlink()
                or not path.is_file()
                or path.suffix in (".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite")
            ):
                continue
            try:
                relative_to_root = path.relative_to(sandbox.root).as_posix()
            except ValueError:
                relative_to_root = None
            if relative_to_root is not None and is_token_home(relative_to_root):
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue  # a FIFO or a file of another uid a test planted
            leaked = sorted(t for t in tokens if t.encode() in data)
            if relative_to_root is not None and _OURS.fullmatch(relative_to_root):
                leaked += sorted({m.decode() for m in _TOKEN.findall(data)} - set(leaked))
            if leaked:
                shown = ", ".join(t[:6] + "…" for t in leaked)
                found.append(f"{len(leaked)} token(s) {shown} in {path}")
    return found

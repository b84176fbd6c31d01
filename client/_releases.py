"""What every spec-kitty-cli release does with its sync daemon: the release table, in one place.

Pure: standard library and other pure modules only, no I/O (a wall: tests/unit/test_walls.py).

Pure data and pure functions. It lives in the client package
because the client must refuse a release without a daemon *before* it auto-starts a supervisor
for it; the supervisor reads the same table (spawn refusals, the proof of "ours", versions).

Every row was read from the published wheels (``pip download --no-deps spec-kitty-cli==V``;
``scripts/release_facts.py`` prints the facts below for a folder of wheels, and
``docs/versions.md`` says how they were checked). Releases whose daemon files
(``specify_cli/sync/daemon.py``, ``owner.py``, ``orphan_sweep.py``) are byte-identical are one
family. What each row rests on, in the wheel's ``specify_cli/sync/daemon.py``:

* ``before_3_1`` (0.x to 3.0.x): no ``specify_cli/sync/daemon.py`` at all (0.16.2, 1.0.3, 2.1.3
  and 3.0.3 read).
* ``3_1`` (3.1.0-3.1.10 read; 3.1.0/3.1.1 and 3.1.2-3.1.10 differ only in Windows paths):
  ``_ensure_sync_daemon_running_locked`` spawns ``[sys.executable, "-c", _background_script()]``
  (two lines, no marker, no ``env=``, cwd inherited); ``_daemon_root()`` is
  ``Path.home() / ".spec-kitty"``; ``_get_package_version()`` asks for the distribution
  ``specify-cli``, which does not exist, so health says ``"unknown"`` and no
  ``SPEC_KITTY_CLI_VERSION`` is read; ``handle_health`` has no ``owner`` block; there is no
  ``_decide_self_retire`` and no ``write_owner_record``: it lives until stopped.
* ``3_2_0`` (3.2.0 = 3.2.1 = 3.2.2): root and exec markers in the argv; ``_daemon_root()`` still
  ``Path.home()``; ``write_owner_record`` into the shared ``owner.json`` (the health ``owner``
  block is read from that file); ``_decide_self_retire`` (superseded, whatever the sync state).
* ``3_2_3``: as 3.2.0, and the root honours ``SPEC_KITTY_HOME``.
* ``3_2_4`` (3.2.4 = 3.2.5): health carries ``daemon_family`` and its own ``owner`` block;
  an idle rule joins superseded, and neither fires while ``sync.running``.
* ``3_2_6`` (3.2.6, 3.2.6.x, 3.2.7): as 3.2.4, after an import probe; importing
  ``specify_cli`` loads ``.kitty.env`` files found from the working directory
  (``specify_cli/bootstrap/env_file.py``) and the sync runtime finds its consenting project
  with ``locate_project_root(Path.cwd())`` (``specify_cli/sync/background.py``).
* ``4_0`` (4.0.0rc7 read): no ``specify_cli/sync`` package at all.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

__all__ = [
    "RELEASE_FAMILIES",
    "UNKNOWN_VERSION",
    "ReleaseFamily",
    "effective_daemon_version",
    "ignores_spec_kitty_home",
    "release_family",
    "release_numbers",
    "without_daemon_reason",
]

UpstreamSpawn = Literal["none", "two_line_script", "marked_script", "marked_script_after_probe"]
HealthShape = Literal["none", "no_owner", "shared_owner", "own_owner"]
OwnerRecord = Literal["none", "shared", "own"]
SelfRetirement = Literal["none", "never", "superseded", "superseded_or_idle_unless_syncing"]
ProofOfOurs = Literal["none", "kernel_root", "argv_token", "owner_block"]

#: What a daemon says when it cannot name its own version (every 3.1.x daemon).
UNKNOWN_VERSION = "unknown"


class ReleaseFamily(NamedTuple):
    """One family of releases that treat their sync daemon alike.

    A named tuple, not a dataclass: the supervisor's early spawn imports this module, and
    ``dataclasses`` imports ``inspect``."""

    key: str
    releases: str  # for people: "3.2.0-3.2.2"
    first: tuple[int, ...]  # the first release number of the family (inclusive)
    has_daemon: bool
    #: How upstream's own CLI spawns the daemon (what an orphan of this family looks like).
    upstream_spawn: UpstreamSpawn
    health_shape: HealthShape
    #: False: the daemon's root is always ``$HOME/.spec-kitty`` (False, too, without a daemon).
    honours_spec_kitty_home: bool
    #: ``"unknown"`` for every daemon of the family, or its own version.
    reports_own_version: bool
    owner_json: OwnerRecord
    retires_itself: SelfRetirement
    #: How an orphan of this family (spawned by upstream, not by us) is proven this root's.
    proof_of_ours: ProofOfOurs
    #: Importing spec-kitty reads settings from files found from the working directory.
    reads_working_directory: bool


RELEASE_FAMILIES: tuple[ReleaseFamily, ...] = (
    ReleaseFamily(
        key="before_3_1",
        releases="0.x-3.0.x",
        first=(0,),
        has_daemon=False,
        upstream_spawn="none",
        health_shape="none",
        honours_spec_kitty_home=False,
        reports_own_version=False,
        owner_json="none",
        retires_itself="none",
        proof_of_ours="none",
        reads_working_directory=False,
    ),
    ReleaseFamily(
        key="3_1",
        releases="3.1.0-3.1.10",
        first=(3, 1),
        has_daemon=True,
        upstream_spawn="two_line_script",
        health_shape="no_owner",
        honours_spec_kitty_home=False,
        reports_own_version=False,
        owner_json="none",
        retires_itself="never",
        proof_of_ours="kernel_root",
        reads_working_directory=False,
    ),
    ReleaseFamily(
        key="3_2_0",
        releases="3.2.0-3.2.2",
        first=(3, 2, 0),
        has_daemon=True,
        upstream_spawn="marked_script",
        health_shape="shared_owner",
        honours_spec_kitty_home=False,
        reports_own_version=True,
        owner_json="shared",
        retires_itself="superseded",
        proof_of_ours="argv_token",
        reads_working_directory=False,
    ),
    ReleaseFamily(
        key="3_2_3",
        releases="3.2.3",
        first=(3, 2, 3),
        has_daemon=True,
        upstream_spawn="marked_script",
        health_shape="shared_owner",
        honours_spec_kitty_home=True,
        reports_own_version=True,
        owner_json="shared",
        retires_itself="superseded",
        proof_of_ours="argv_token",
        reads_working_directory=False,
    ),
    ReleaseFamily(
        key="3_2_4",
        releases="3.2.4-3.2.5",
        first=(3, 2, 4),
        has_daemon=True,
        upstream_spawn="marked_script",
        health_shape="own_owner",
        honours_spec_kitty_home=True,
        reports_own_version=True,
        owner_json="own",
        retires_itself="superseded_or_idle_unless_syncing",
        proof_of_ours="owner_block",
        reads_working_directory=False,
    ),
    ReleaseFamily(
        key="3_2_6",
        releases="3.2.6-3.2.7 (and later 3.x, assumed alike until read)",
        first=(3, 2, 6),
        has_daemon=True,
        upstream_spawn="marked_script_after_probe",
        health_shape="own_owner",
        honours_spec_kitty_home=True,
        reports_own_version=True,
        owner_json="own",
        retires_itself="superseded_or_idle_unless_syncing",
        proof_of_ours="owner_block",
        reads_working_directory=True,
    ),
    ReleaseFamily(
        key="4_0",
        releases="4.0 and later",
        first=(4,),
        has_daemon=False,
        upstream_spawn="none",
        health_shape="none",
        honours_spec_kitty_home=False,
        reports_own_version=False,
        owner_json="none",
        retires_itself="none",
        proof_of_ours="none",
        reads_working_directory=False,
    ),
)

_RELEASE_NUMBERS = re.compile(r"(\d+(?:\.\d+)*)")


def release_numbers(version: str) -> tuple[int, ...] | None:
    """The leading release numbers of a version: ``"4.0.0rc7"`` → ``(4, 0, 0)``; None if none.

    Only the release segment decides the family: a pre-release of 4.0 is already 4.0's.
    """
    match = _RELEASE_NUMBERS.match(version.strip().lstrip("vV"))
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def release_family(version: str) -> ReleaseFamily | None:
    """The family of ``version``; None when it is not a release number (``"unknown"``)."""
    numbers = release_numbers(version)
    if numbers is None:
        return None
    chosen: ReleaseFamily | None = None
    for family in RELEASE_FAMILIES:  # ordered by ``first``
        if numbers >= family.first:
            chosen = family
    return chosen


def without_daemon_reason(version: str) -> str | None:
    """Why ``version`` cannot have a sync daemon, or None when it has one (or is unknown)."""
    family = release_family(version)
    if family is None or family.has_daemon:
        return None
    return (
        f"spec-kitty-cli {version} has no sync daemon (releases {family.releases} sync "
        "without one); there is nothing to supervise for it"
    )


def ignores_spec_kitty_home(version: str) -> bool:
    """True when ``version``'s daemon always uses ``$HOME/.spec-kitty``, whatever R is."""
    family = release_family(version)
    return family is not None and family.has_daemon and not family.honours_spec_kitty_home


def effective_daemon_version(reported: str | None, interpreter_version: str) -> str:
    """A daemon's version: what it reports, unless it cannot tell.

    Every 3.1.x daemon reports ``"unknown"`` (it asks for a distribution name that does not
    exist); it runs the spec-kitty-cli installed for its interpreter, so that is its version.
    """
    if reported is None or reported == UNKNOWN_VERSION:
        return interpreter_version
    return reported

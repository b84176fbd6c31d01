"""Upstream's files in the root, and the hooks' record: never followed, never blocking.

``R/sync-daemon.lock``, ``R/sync-daemon.log`` and ``R/sync/daemon/owner.json`` are upstream's;
``R/supervisor/integration.json`` is the hooks'. A FIFO at any of them would block the open
(a spawn, a sweep, an exit's classification, doctor), a symlink could redirect a write or show
any file. Each is opened only as a regular file of the user's: anything else is refused with a
clear reason, left exactly as it is, and what it points to is never touched.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._files import RefusedFile, open_upstream_file
from spec_kitty_supervisor._integration_doctor import integration_findings
from spec_kitty_supervisor._layout import RootLayout
from spec_kitty_supervisor._ledger import Ledger
from spec_kitty_supervisor._legacy_state import hold_legacy_lock
from spec_kitty_supervisor._lifecycle import RealEffects
from spec_kitty_supervisor._spawn import log_tail, spawn_daemon
from spec_kitty_supervisor_client._models import Settings

Maker = Callable[[Path], None]

TARGET_TEXT = "the target of a link is never read, written or moved"


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("kept")


def _symlink(path: Path) -> None:
    target = path.with_name(f"{path.name}.elsewhere")
    target.write_text(TARGET_TEXT)
    path.symlink_to(target)


def _symlink_to_fifo(path: Path) -> None:
    target = path.with_name(f"{path.name}.fifo-elsewhere")
    os.mkfifo(target, 0o600)
    path.symlink_to(target)


BAD_ENTRIES: dict[str, tuple[Maker, str]] = {
    "fifo": (_fifo, "a FIFO"),
    "directory": (_directory, "a directory"),
    "symlink": (_symlink, "a symbolic link"),
    "symlink-to-fifo": (_symlink_to_fifo, "a symbolic link"),
}


@pytest.fixture(params=sorted(BAD_ENTRIES))
def bad_entry(request: pytest.FixtureRequest) -> tuple[Maker, str]:
    return BAD_ENTRIES[request.param]


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str | None]]:
    """Every entry under ``folder``: its type, inode and (for a regular file) its text."""
    seen: dict[str, tuple[int, int, str | None]] = {}
    for entry in sorted(folder.rglob("*")):
        info = entry.lstat()
        text = entry.read_text() if stat.S_ISREG(info.st_mode) else None
        seen[str(entry.relative_to(folder))] = (stat.S_IFMT(info.st_mode), info.st_ino, text)
    return seen


@pytest.fixture
def layout(tmp_path: Path) -> RootLayout:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    return RootLayout(root)


# --------------------------------------------------------------------------------------------
# The opener


def test_a_missing_upstream_file_is_created_as_a_private_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "sync-daemon.log"
    fd = open_upstream_file(path, os.O_WRONLY | os.O_APPEND, single_link=True)
    try:
        assert os.get_blocking(fd)  # a daemon inherits it as its output
        os.write(fd, b"line\n")
    finally:
        os.close(fd)
    assert path.read_text() == "line\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_upstream_log_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "sync-daemon.log"
    path.write_text("upstream wrote this\n")
    fd = open_upstream_file(path, os.O_WRONLY | os.O_APPEND, single_link=True)
    try:
        os.write(fd, b"and then the daemon\n")
    finally:
        os.close(fd)
    assert path.read_text() == "upstream wrote this\nand then the daemon\n"


def test_a_bad_entry_is_refused_and_left_as_it_is(
    tmp_path: Path, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    path = tmp_path / "sync-daemon.log"
    make(path)
    before = _snapshot(tmp_path)
    with pytest.raises(RefusedFile) as refused:
        open_upstream_file(path, os.O_WRONLY | os.O_APPEND, single_link=True)
    assert refused.value.kind == kind
    assert _snapshot(tmp_path) == before


def test_a_hard_link_is_refused_where_a_write_would_reach_another_file(tmp_path: Path) -> None:
    other = tmp_path / "precious"
    other.write_text(TARGET_TEXT)
    path = tmp_path / "sync-daemon.log"
    os.link(other, path)
    with pytest.raises(RefusedFile, match="2 hard links"):
        open_upstream_file(path, os.O_WRONLY | os.O_APPEND, single_link=True)
    assert other.read_text() == TARGET_TEXT
    # The lock file is never written: a second link to it changes nothing.
    os.close(open_upstream_file(path, os.O_RDWR, single_link=False))


def test_the_opener_never_truncates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never truncates"):
        open_upstream_file(tmp_path / "f", os.O_WRONLY | os.O_TRUNC, single_link=True)


# --------------------------------------------------------------------------------------------
# R/sync-daemon.lock


@pytest.mark.anyio
async def test_a_bad_lock_file_refuses_the_lock_with_a_clear_error(
    layout: RootLayout, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    make(layout.legacy_lock)
    before = _snapshot(layout.daemon_root)
    with pytest.raises(LifecycleError) as raised:
        async with hold_legacy_lock(layout.legacy_lock, timeout=5):
            pytest.fail("a lock was taken through a refused entry")
    assert raised.value.code == "root_file_refused"
    assert f"{layout.legacy_lock} is {kind}" in str(raised.value)
    assert "move it away" in str(raised.value)
    assert raised.value.details == {"path": str(layout.legacy_lock)}
    assert _snapshot(layout.daemon_root) == before


# --------------------------------------------------------------------------------------------
# R/sync-daemon.log


def test_a_bad_daemon_log_refuses_the_spawn_before_anything_runs(
    layout: RootLayout, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    make(layout.daemon_log)
    before = _snapshot(layout.daemon_root)
    with pytest.raises(LifecycleError) as raised:
        spawn_daemon(
            layout,
            python=sys.executable,
            resolved_python=sys.executable,
            port=9440,
            env={"PATH": os.defpath},
            cwd=str(layout.daemon_root),
        )
    assert raised.value.code == "root_file_refused"
    assert f"{layout.daemon_log} is {kind}" in str(raised.value)
    assert _snapshot(layout.daemon_root) == before


def test_the_log_tail_of_a_bad_daemon_log_is_empty_and_never_blocks(
    layout: RootLayout, bad_entry: tuple[Maker, str]
) -> None:
    make, _kind = bad_entry
    make(layout.daemon_log)
    assert log_tail(layout.daemon_log) == ""


def test_the_log_tail_reads_what_a_spawn_wrote_after_its_offset(layout: RootLayout) -> None:
    layout.daemon_log.write_text("an older daemon\nthis spawn's traceback\n")
    assert log_tail(layout.daemon_log, since=len("an older daemon\n")) == "this spawn's traceback\n"


# --------------------------------------------------------------------------------------------
# R/sync/daemon/owner.json


def _effects(layout: RootLayout) -> RealEffects:
    return RealEffects(layout, Settings(), Ledger(None))


def test_owner_record_is_read_when_it_is_a_regular_file(layout: RootLayout) -> None:
    layout.owner_json.parent.mkdir(parents=True)
    layout.owner_json.write_text('{"pid": 4242, "port": 9440}')
    effects = _effects(layout)
    assert effects.owner_record_names(4242, 9440)
    assert not effects.owner_record_names(4242, 9441)


def test_a_bad_owner_record_names_no_daemon_and_is_left_as_it_is(
    layout: RootLayout, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    layout.owner_json.parent.mkdir(parents=True)
    make(layout.owner_json)
    if kind == "a symbolic link":
        # Even a link to a record that would name the daemon is not followed.
        target = layout.owner_json.resolve()
        if target.is_file():
            target.write_text('{"pid": 4242, "port": 9440}')
    before = _snapshot(layout.daemon_root)
    with capture_logs() as logs:
        assert not _effects(layout).owner_record_names(4242, 9440)
    assert [entry["event"] for entry in logs] == ["owner_record_refused"]
    assert _snapshot(layout.daemon_root) == before


# --------------------------------------------------------------------------------------------
# What status shows: each refused file, with what it is


def test_no_upstream_file_or_regular_ones_are_not_refused(layout: RootLayout) -> None:
    effects = _effects(layout)
    assert effects.refused_root_files() is None
    layout.legacy_lock.touch()
    layout.daemon_log.write_text("x\n")
    layout.owner_json.parent.mkdir(parents=True)
    layout.owner_json.write_text("{}")
    assert effects.refused_root_files() is None


@pytest.mark.parametrize("which", ["legacy_lock", "daemon_log", "owner_json"])
def test_each_bad_upstream_file_is_named_with_what_it_is(
    layout: RootLayout, bad_entry: tuple[Maker, str], which: str
) -> None:
    make, kind = bad_entry
    path: Path = getattr(layout, which)
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    before = _snapshot(layout.daemon_root)
    refused = _effects(layout).refused_root_files()
    assert refused == f"{path} is {kind}, not a regular file; move it away"
    assert _snapshot(layout.daemon_root) == before


# --------------------------------------------------------------------------------------------
# R/supervisor/integration.json (doctor)


def _record_findings(root: Path) -> list[tuple[str, str]]:
    # No spec-kitty installation on this PATH: only the hooks' record can give findings.
    findings = integration_findings(root, {"PATH": "/nonexistent", "HOME": str(root)})
    return [(finding.code, finding.message) for finding in findings]


def test_doctor_reads_the_hooks_record_when_it_is_a_regular_file(layout: RootLayout) -> None:
    folder = layout.daemon_root / "supervisor"
    folder.mkdir(mode=0o700)
    (folder / "integration.json").write_text(
        '{"failure": {"count": 2, "last_error": "boom", "time": "t", "python": "/p"}}'
    )
    [(code, message)] = _record_findings(layout.daemon_root)
    assert code == "integration_failures"
    assert "2 time(s)" in message


def test_doctor_refuses_a_bad_hooks_record_and_says_so(
    layout: RootLayout, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    folder = layout.daemon_root / "supervisor"
    folder.mkdir(mode=0o700)
    path = folder / "integration.json"
    make(path)
    before = _snapshot(layout.daemon_root)
    [(code, message)] = _record_findings(layout.daemon_root)
    assert code == "integration_record_refused"
    assert f"{path} is {kind}" in message
    assert _snapshot(layout.daemon_root) == before

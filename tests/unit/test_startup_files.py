"""Files read at start-up: a FIFO, a directory, a symlink, a socket or an oversized file is
refused without blocking, moved aside (the entry itself, never a link's target) and the
supervisor starts from what is alive (issue 8)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from spec_kitty_supervisor._files import (
    RefusedFile,
    atomic_write,
    create_unique_file,
    move_refused_aside,
    read_regular_file,
)
from spec_kitty_supervisor._ledger import Ledger
from spec_kitty_supervisor._legacy_state import read_legacy_state
from spec_kitty_supervisor._lock import SupervisorLock
from spec_kitty_supervisor._settings import SettingsError, load_settings
from spec_kitty_supervisor._table import load_table

Maker = Callable[[Path], None]


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("kept")


def _symlink(path: Path) -> None:
    target = path.with_name(f"{path.name}.target")
    target.write_text("the target of a link is never read, moved or changed")
    path.symlink_to(target)


def _symlink_to_fifo(path: Path) -> None:
    target = path.with_name(f"{path.name}.fifo-target")
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


@pytest.fixture
def unix_socket_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        yield path


def test_a_regular_file_is_read_and_a_missing_one_is_none(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert read_regular_file(path, 10) is None
    path.write_bytes(b"0123456789")
    assert read_regular_file(path, 10) == b"0123456789"


def test_each_non_regular_entry_is_refused_without_blocking(
    tmp_path: Path, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    path = tmp_path / "state.json"
    make(path)
    with pytest.raises(RefusedFile) as refused:
        read_regular_file(path, 1024)
    assert refused.value.kind == kind
    assert str(path) in str(refused.value)


def test_a_socket_file_is_refused(unix_socket_file: Path) -> None:
    with pytest.raises(RefusedFile) as refused:
        read_regular_file(unix_socket_file, 1024)
    assert refused.value.kind == "a socket"


def test_a_file_over_the_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)
    with pytest.raises(RefusedFile, match="11 bytes"):
        read_regular_file(path, 10)


def test_the_refused_entry_itself_is_moved_aside_never_a_links_target(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _symlink(path)
    target = path.with_name("state.json.target")
    with pytest.raises(RefusedFile) as refused:
        read_regular_file(path, 1024)
    moved = move_refused_aside(refused.value)
    assert moved == tmp_path / "state.json.refused-0"
    assert moved.is_symlink()
    assert not path.exists()
    assert not path.is_symlink()
    assert target.read_text() == "the target of a link is never read, moved or changed"


def test_an_entry_replaced_after_the_refusal_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _fifo(path)
    with pytest.raises(RefusedFile) as refused:
        read_regular_file(path, 1024)
    path.rename(tmp_path / "elsewhere")  # kept, so its inode number cannot be reused
    path.write_text("{}")  # someone wrote a real file meanwhile
    assert move_refused_aside(refused.value) is None
    assert path.read_text() == "{}"


def test_state_json_not_a_regular_file_gives_an_empty_table_and_is_moved_aside(
    tmp_path: Path, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    path = tmp_path / "state.json"
    make(path)
    loaded = load_table(path)
    assert loaded.table.daemons == []
    assert loaded.problem is not None
    assert kind in loaded.problem
    assert loaded.moved_to == tmp_path / "state.json.refused-0"
    assert not path.exists()
    assert not path.is_symlink()


def test_a_deeply_nested_state_json_is_moved_aside_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    loaded = load_table(path)
    assert loaded.table.daemons == []
    assert loaded.problem is not None
    assert loaded.moved_to == tmp_path / "state.json.corrupt-0"


def test_legacy_state_not_a_regular_file_reads_as_none_and_is_moved_aside(
    tmp_path: Path, bad_entry: tuple[Maker, str]
) -> None:
    make, _kind = bad_entry
    path = tmp_path / "sync-daemon"
    make(path)
    with capture_logs() as logs:
        assert read_legacy_state(path) is None
    assert not path.exists()
    assert not path.is_symlink()
    assert os.path.lexists(tmp_path / "sync-daemon.refused-0")
    refused = [entry for entry in logs if entry["event"] == "legacy_state_refused"]
    assert refused
    assert refused[0]["moved_to"] == str(tmp_path / "sync-daemon.refused-0")


def test_an_events_file_not_regular_is_moved_aside_and_the_ledger_starts_empty(
    tmp_path: Path, bad_entry: tuple[Maker, str]
) -> None:
    make, _kind = bad_entry
    path = tmp_path / "events.jsonl"
    make(path)
    with capture_logs() as logs:
        ledger = Ledger(path)
    assert ledger.events() == []
    assert [entry["event"] for entry in logs] == ["ledger_refused"]
    ledger.record("started", reason="after a refused ledger")
    assert path.is_file()
    assert not path.is_symlink()
    assert '"started"' in path.read_text()


def test_a_config_toml_not_regular_is_a_clear_settings_error(
    tmp_path: Path, bad_entry: tuple[Maker, str]
) -> None:
    make, kind = bad_entry
    path = tmp_path / "config.toml"
    make(path)
    with pytest.raises(SettingsError, match=f"is {kind}, not a regular file; replace it"):
        load_settings(path, environ={})


def test_the_lock_holder_of_a_fifo_lock_file_is_unknown_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    _fifo(path)
    assert SupervisorLock(path).holder_pid() is None


def test_a_deeply_nested_config_toml_is_a_settings_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("heartbeat_seconds = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SettingsError, match="nested too deeply"):
        load_settings(path, environ={})


def test_a_deeply_nested_ledger_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert Ledger(path).events() == []


def test_a_unique_file_is_new_private_and_never_an_existing_entry(tmp_path: Path) -> None:
    """``create_unique_file`` stands in for ``tempfile.mkstemp`` (the first stage avoids it)."""
    made = [create_unique_file(tmp_path, ".check.", ".tmp") for _ in range(50)]
    try:
        paths = [path for _fd, path in made]
        assert len(set(paths)) == 50
        for path in paths:
            assert path.parent == tmp_path
            assert path.name.startswith(".check.")
            assert path.name.endswith(".tmp")
            info = path.lstat()
            assert oct(info.st_mode & 0o777) == oct(0o600)
            assert info.st_uid == os.getuid()
    finally:
        for fd, _path in made:
            os.close(fd)


def test_a_unique_file_in_a_folder_that_cannot_be_written_raises_its_os_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError):
        create_unique_file(tmp_path / "missing", ".check.")


def test_an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary_behind(
    tmp_path: Path,
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new contents", mode=0o640)
    assert target.read_bytes() == b"new contents"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import anyio
import pytest

from spec_kitty_supervisor._legacy_state import (
    LegacyLockTimeout,
    LegacyRecord,
    hold_legacy_lock,
    read_legacy_state,
    remove_legacy_state,
    write_legacy_state,
)


def test_state_file_has_upstreams_four_lines(tmp_path: Path) -> None:
    path = tmp_path / "sync-daemon"
    write_legacy_state(path, 9431, "ab" * 16, 4242)
    assert path.read_text() == f"http://localhost:9431\n9431\n{'ab' * 16}\n4242\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_legacy_state(path) == LegacyRecord("http://localhost:9431", 9431, "ab" * 16, 4242)


@pytest.mark.parametrize(
    "content", ["", "http://localhost:9431\n", "a\nb\nc\nd\n", "\x00\xff\n1\n2\n3\n"]
)
def test_malformed_state_file_reads_as_none(tmp_path: Path, content: str) -> None:
    path = tmp_path / "sync-daemon"
    path.write_text(content, encoding="latin-1")
    assert read_legacy_state(path) is None


def test_missing_state_file_reads_as_none_and_removes_quietly(tmp_path: Path) -> None:
    path = tmp_path / "sync-daemon"
    assert read_legacy_state(path) is None
    remove_legacy_state(path)


@pytest.mark.anyio
async def test_lock_waits_for_an_upstream_holder_and_times_out(tmp_path: Path) -> None:
    lock = tmp_path / "sync-daemon.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(LegacyLockTimeout):
            async with hold_legacy_lock(lock, timeout=0.2):
                pytest.fail("the lock was held by someone else")
    finally:
        os.close(fd)
    async with hold_legacy_lock(lock, timeout=0.2):
        pass


@pytest.mark.anyio
async def test_lock_is_exclusive_within_the_process_too(tmp_path: Path) -> None:
    lock = tmp_path / "sync-daemon.lock"
    order: list[str] = []

    async def holder(name: str) -> None:
        async with hold_legacy_lock(lock, timeout=5):
            order.append(f"{name}-in")
            # Let the other holder try for the lock (and block on it) before letting go.
            await anyio.wait_all_tasks_blocked()
            order.append(f"{name}-out")

    async with anyio.create_task_group() as group:
        group.start_soon(holder, "a")
        group.start_soon(holder, "b")
    assert order in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])

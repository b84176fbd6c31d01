"""Files of ``R/supervisor/`` are never written through a planted link (issue 14, files and
paths): a symlink at ``supervisor.lock``, ``autostart.stderr``, ``supervisor.log`` or
``events.jsonl`` is moved aside, what it points to is left exactly as it was, and the
supervisor starts with fresh files of its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sks_harness import Sandbox, SupervisorUnderTest, eventually
from spec_kitty_supervisor._ledger import Ledger
from spec_kitty_supervisor._lock import SupervisorLock
from spec_kitty_supervisor._logging import configure_logging
from spec_kitty_supervisor_client._wire import open_own_file

VICTIM_TEXT = "a file the supervisor must never write\n"


@pytest.fixture
def sup(sandbox: Sandbox) -> Iterator[SupervisorUnderTest]:
    with SupervisorUnderTest(sandbox) as harness:
        yield harness


def _plant(link: Path, victims: Path) -> Path:
    victim = victims / f"victim-of-{link.name}"
    victim.write_text(VICTIM_TEXT)
    link.symlink_to(victim)
    return victim


def test_an_auto_started_supervisor_writes_through_no_planted_link(
    sup: SupervisorUnderTest, tmp_path: Path
) -> None:
    folder = sup.root / "supervisor"
    folder.mkdir(parents=True, mode=0o700)
    names = ["supervisor.lock", "autostart.stderr", "supervisor.log", "events.jsonl"]
    victims = {name: _plant(folder / name, tmp_path) for name in names}
    script = (
        "import sys\n"
        "from spec_kitty_supervisor_client import SupervisorClient\n"
        "print(SupervisorClient(sys.argv[1]).start().pid)\n"
    )
    started = subprocess.run(
        [sys.executable, "-c", script, str(sup.root)],
        env=sup.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    sup.remember()
    assert started.returncode == 0, started.stderr
    assert sup.cli("stop").returncode == 0  # the ledger records it: events.jsonl is written
    eventually(lambda: not sup.pids(), what="the supervisor gone")
    for name, victim in victims.items():
        assert victim.read_text() == VICTIM_TEXT, f"{name} was written through its link"
        assert (folder / f"{name}.refused-0").is_symlink(), name
        assert not (folder / name).is_symlink(), name
    log = (folder / "supervisor.log").read_text()
    assert "supervisor.lock was a symbolic link" in log
    assert "supervisor.log was a symbolic link" in log


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "hard link"])
def test_open_own_file_moves_what_is_not_ours_aside_and_never_truncates(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "supervisor.lock"
    victim = tmp_path / "victim"
    victim.write_text(VICTIM_TEXT)
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.link(victim, path)
    fd, moved = open_own_file(path, os.O_RDWR)
    try:
        os.write(fd, b"ours")
    finally:
        os.close(fd)
    assert moved is not None
    assert f"moved to {tmp_path / 'supervisor.lock.refused-0'}" in moved
    assert path.read_bytes() == b"ours"
    assert victim.read_text() == VICTIM_TEXT


def test_the_lock_is_taken_on_a_fresh_file_and_the_planted_one_noted(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    victim = _plant(path, tmp_path)
    lock = SupervisorLock(path)
    assert lock.try_acquire()
    try:
        assert victim.read_text() == VICTIM_TEXT
        assert lock.moved is not None
        assert "a symbolic link" in lock.moved
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_the_ledger_appends_to_no_planted_link(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ledger = Ledger(path)
    victim = _plant(path, tmp_path)  # planted while the supervisor runs
    ledger.record("started", reason="after a planted link")
    assert victim.read_text() == VICTIM_TEXT
    assert '"started"' in path.read_text()


def test_the_log_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.log"
    victim = _plant(path, tmp_path)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        moved = configure_logging(path)
        logging.getLogger("test").warning("written to the real log")
        for handler in root.handlers:
            handler.flush()
        assert moved
        assert "a symbolic link" in moved[0]
        assert victim.read_text() == VICTIM_TEXT
        assert "written to the real log" in path.read_text()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)

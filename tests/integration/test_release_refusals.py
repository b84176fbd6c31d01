"""Requests no supervisor could serve are refused by the command line before anything starts.

Each case: a clear message, a non-zero exit, no traceback, no supervisor started, and nothing
created in the root (no ``supervisor/`` folder, no ``sync-daemon.log``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sks_harness import fake_spec_kitty_venv, supervisor_pids

needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to hand a folder to another user"
)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spec_kitty_supervisor", *args],
        env={"PATH": os.environ["PATH"], "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_a_release_without_a_sync_daemon_starts_nothing(home: Path, tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "4.0.0rc7")
    root = home / ".spec-kitty"

    result = _cli(home, "ensure", "--root", str(root), "--python", str(python))

    _assert_refused(result, "spec-kitty-cli 4.0.0rc7 has no sync daemon")
    assert not root.exists()
    assert supervisor_pids(root) == []


@pytest.mark.parametrize("claimed", ["3.2.7", "3.1.10"])
def test_a_claimed_version_the_interpreter_does_not_have_starts_nothing(
    home: Path, tmp_path: Path, claimed: str
) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    root = home / ".spec-kitty"

    result = _cli(
        home, "ensure", "--root", str(root), "--python", str(python), "--package-version", claimed
    )

    _assert_refused(result, f"spec-kitty-cli {claimed}", "spec-kitty-cli 3.2.4 installed")
    assert not root.exists()


def test_an_interpreter_without_spec_kitty_starts_nothing(home: Path) -> None:
    root = home / ".spec-kitty"

    result = _cli(home, "ensure", "--root", str(root), "--python", sys.executable)

    _assert_refused(result, "spec-kitty-cli is not installed")
    assert not root.exists()


def test_a_missing_interpreter_starts_nothing(home: Path, tmp_path: Path) -> None:
    root = home / ".spec-kitty"

    result = _cli(home, "ensure", "--root", str(root), "--python", str(tmp_path / "nope"))

    _assert_refused(result, "does not exist")
    assert not root.exists()


def test_an_interpreter_that_is_not_executable_starts_nothing(home: Path, tmp_path: Path) -> None:
    root = home / ".spec-kitty"
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o644)

    result = _cli(home, "ensure", "--root", str(root), "--python", str(python))

    _assert_refused(result, "is not an executable file")
    assert not root.exists()


@pytest.mark.parametrize("command", [["ensure"], ["status"], ["doctor"], ["run"]])
def test_a_root_that_is_a_file_is_refused_by_every_command(home: Path, command: list[str]) -> None:
    root = home / "root-file"
    root.write_text("not a folder")

    result = _cli(home, *command, "--root", str(root))

    _assert_refused(result, f"the daemon root {root} is not a folder")
    assert root.read_text() == "not a folder"


@pytest.mark.parametrize("command", [["ensure"], ["status"], ["run"]])
def test_a_root_through_a_dangling_link_is_refused_and_its_target_not_created(
    home: Path, tmp_path: Path, command: list[str]
) -> None:
    target = tmp_path / "gone"
    link = home / "link"
    link.symlink_to(target)

    result = _cli(home, *command, "--root", str(link / ".spec-kitty"))

    _assert_refused(result, "a symbolic link to", "which does not exist")
    assert not target.exists()


@needs_root
def test_a_root_of_another_user_is_refused_before_anything_is_created(home: Path) -> None:
    root = home / "theirs"
    root.mkdir()
    os.chown(root, 65534, 65534)

    result = _cli(home, "ensure", "--root", str(root), "--python", sys.executable)

    _assert_refused(result, "belongs to uid 65534")
    assert list(root.iterdir()) == []

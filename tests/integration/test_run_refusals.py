"""``run`` refuses a root it cannot safely own, with a clear message, and changes nothing."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to hand a folder to another user"
)


def _run(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spec_kitty_supervisor", "run", "--root", str(root)],
        env={"PATH": os.environ["PATH"], "HOME": str(root.parent), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mode) for p in root.rglob("*"))


@needs_root
def test_a_root_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 65534, 65534)
    result = _run(root)
    assert result.returncode == 1
    assert "belongs to uid 65534" in result.stderr
    assert list(root.iterdir()) == []


@needs_root
def test_a_supervisor_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "supervisor").mkdir(parents=True, mode=0o700)
    os.chown(root / "supervisor", 65534, 65534)
    before = _snapshot(root)
    result = _run(root)
    assert result.returncode == 1
    assert "belongs to uid 65534" in result.stderr
    assert _snapshot(root) == before


def test_a_supervisor_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "supervisor").mkdir(parents=True)
    (root / "supervisor").chmod(0o777)
    before = _snapshot(root)
    result = _run(root)
    assert result.returncode == 1
    assert "writable by group or others" in result.stderr
    assert "chmod 700" in result.stderr
    assert _snapshot(root) == before


def test_a_bad_setting_is_refused_naming_its_source(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _run(root, SPEC_KITTY_SUPERVISOR_PORT_RANGE="9300-9400")
    assert result.returncode == 1
    assert "environment" in result.stderr
    assert "9400-9450" in result.stderr
    (root / "supervisor" / "config.toml").write_text("idle_exit_secs = 3\n")
    result = _run(root)
    assert result.returncode == 1
    assert "config.toml" in result.stderr
    assert "idle_exit_secs" in result.stderr


def test_a_root_writable_by_others_is_refused_with_the_fixing_chmod(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    result = _run(root)
    assert result.returncode == 1
    assert f"run `chmod o-w {root}`" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(root.iterdir()) == []


@needs_root
def test_a_root_writable_by_a_shared_group_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 0, 100)  # the "users" group: shared, not the user's own
    root.chmod(0o770)
    result = _run(root)
    assert result.returncode == 1
    assert f"run `chmod g-w {root}`" in result.stderr
    assert list(root.iterdir()) == []


def test_a_root_writable_by_the_users_private_group_is_accepted(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(user.pw_gid)
    if group.gr_name != user.pw_name or set(group.gr_mem) - {user.pw_name}:
        pytest.skip("this system has no private group for the user")
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, os.getuid(), user.pw_gid)
    root.chmod(0o775)  # what umask 002 gives on a distribution with one group per user
    # An auto-started supervisor with nothing to do exits by itself: proof it started.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spec_kitty_supervisor",
            "run",
            "--root",
            str(root),
            "--auto-started",
        ],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(root.parent),
            "SPEC_KITTY_SUPERVISOR_IDLE_EXIT_SECONDS": "0.5",
            "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "0.2",
            "SPEC_KITTY_SUPERVISOR_SWEEP_SECONDS": "3600",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (root / "supervisor" / "supervisor.log").read_text().count("supervisor_ready") == 1

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from spec_kitty_supervisor._spawn import (
    SpawnError,
    check_root_supported,
    child_environment,
    resolve_working_directory,
    validate_interpreter,
)


def test_child_environment_is_an_allow_listed_copy_plus_root_and_version(tmp_path: Path) -> None:
    client = {
        "HOME": "/home/u",
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "https_proxy": "http://proxy:3128",
        "SPEC_KITTY_ENABLE_SAAS_SYNC": "1",
        "SPEC_KITTY_HOME": "/elsewhere",
        "SPEC_KITTY_CLI_VERSION": "9.9.9",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "LISTEN_FDS": "1",
        "WATCHDOG_USEC": "1000",
        "AWS_SECRET_ACCESS_KEY": "hunter2",
        "PYTHONPATH": "/tmp/evil",
    }
    env = child_environment(client, tmp_path, "3.2.4")
    assert env == {
        "HOME": "/home/u",
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "https_proxy": "http://proxy:3128",
        "SPEC_KITTY_ENABLE_SAAS_SYNC": "1",
        "SPEC_KITTY_HOME": str(tmp_path),
        "SPEC_KITTY_CLI_VERSION": "3.2.4",
    }


def test_interpreter_must_be_absolute_existing_and_executable(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="absolute"):
        validate_interpreter("python3")
    with pytest.raises(SpawnError, match="does not exist"):
        validate_interpreter(str(tmp_path / "nope" / "python"))
    not_executable = tmp_path / "python"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    with pytest.raises(SpawnError, match="not an executable"):
        validate_interpreter(str(not_executable))


def test_interpreter_writable_by_others_is_refused(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o777)
    os.chmod(python, 0o777)
    with pytest.raises(SpawnError, match="writable by others"):
        validate_interpreter(str(python))


def test_interpreter_is_resolved_for_the_exec_marker(tmp_path: Path) -> None:
    link = tmp_path / "python"
    link.symlink_to(sys.executable)
    assert validate_interpreter(str(link)) == os.path.realpath(sys.executable)


def test_working_directory_is_the_clients_when_usable(tmp_path: Path) -> None:
    assert resolve_working_directory(str(tmp_path), Path("/")) == str(tmp_path)
    assert resolve_working_directory(None, tmp_path) == str(tmp_path)
    with pytest.raises(SpawnError, match="absolute"):
        resolve_working_directory("relative/dir", tmp_path)
    with pytest.raises(SpawnError, match="not an accessible directory"):
        resolve_working_directory(str(tmp_path / "missing"), tmp_path)


@pytest.mark.parametrize("version", ["3.1.0", "3.1.10", "3.2.0", "3.2.1", "3.2.2"])
def test_releases_ignoring_spec_kitty_home_serve_only_home_dot_spec_kitty(
    tmp_path: Path, version: str
) -> None:
    home_root = (tmp_path / ".spec-kitty").resolve()
    check_root_supported(str(tmp_path), home_root, version)
    with pytest.raises(
        SpawnError, match=rf"{re.escape(version)} ignores SPEC_KITTY_HOME"
    ) as raised:
        check_root_supported(str(tmp_path), tmp_path / "other-root", version)
    assert raised.value.code == "unsupported_root"
    assert "upgrade to spec-kitty-cli 3.2.3" in str(raised.value)  # the way out


@pytest.mark.parametrize("version", ["3.2.3", "3.2.4", "3.2.5", "3.2.6", "3.2.6.2", "3.2.7"])
def test_releases_honouring_spec_kitty_home_serve_any_root(tmp_path: Path, version: str) -> None:
    check_root_supported(str(tmp_path), tmp_path / "other-root", version)


@pytest.mark.parametrize("version", ["2.0.4", "3.0.3", "4.0.0rc7", "4.0.0"])
def test_releases_without_a_daemon_are_refused_before_any_spawn(
    tmp_path: Path, version: str
) -> None:
    with pytest.raises(
        SpawnError, match=rf"spec-kitty-cli {re.escape(version)} has no sync daemon"
    ) as raised:
        check_root_supported(str(tmp_path), (tmp_path / ".spec-kitty").resolve(), version)
    assert raised.value.code == "no_sync_daemon"

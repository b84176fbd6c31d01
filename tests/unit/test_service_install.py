"""Installing, removing and checking the user service: where files go, what we refuse to touch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from spec_kitty_supervisor._service import (
    ForeignUnitFileError,
    PlannedFile,
    ServicePlatform,
    UnsupportedPlatformError,
    check_installed_units,
    current_platform,
    default_exec_path,
    disable_commands,
    enable_commands,
    linger_enabled,
    plan_install,
    remove_installed,
    unit_directory,
    write_planned,
)
from spec_kitty_supervisor._units import UNIT_MARKER, validate_plist
from spec_kitty_supervisor_client import DoctorFinding

NO_XDG: dict[str, str] = {}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def exec_path(tmp_path: Path) -> str:
    script = tmp_path / "bin" / "spec-kitty-supervisor"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    return str(script)


def install(platform: ServicePlatform, exec_path: str, root: Path, home: Path) -> list[PlannedFile]:
    files = plan_install(platform, exec_path, root, home, environ=NO_XDG)
    write_planned(files)
    return files


def codes(findings: list[DoctorFinding]) -> list[str]:
    return [finding.code for finding in findings]


def lingering(_user: str) -> bool:
    return True


# Where the files go -----------------------------------------------------------------------------


def test_linux_units_go_to_the_systemd_user_folder_under_dot_config(home: Path) -> None:
    files = plan_install("linux", "/usr/bin/sks", home / ".spec-kitty", home, environ=NO_XDG)

    assert [f.path for f in files] == [
        home / ".config/systemd/user/spec-kitty-supervisor.service",
        home / ".config/systemd/user/spec-kitty-supervisor.socket",
    ]
    assert all(f.mode == 0o644 for f in files)


def test_linux_units_respect_an_absolute_xdg_config_home(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"

    assert unit_directory("linux", home, {"XDG_CONFIG_HOME": str(config)}) == (
        config / "systemd/user"
    )
    assert unit_directory("linux", home, {"XDG_CONFIG_HOME": "relative/cfg"}) == (
        home / ".config/systemd/user"
    )


def test_macos_agent_goes_to_launch_agents_and_logs_to_library_logs(home: Path) -> None:
    (file,) = plan_install("darwin", "/usr/local/bin/sks", home / ".spec-kitty", home)

    assert file.path == home / "Library/LaunchAgents/dev.spec-kitty.supervisor.plist"
    job = validate_plist(file.content)
    assert job["StandardOutPath"] == str(home / "Library/Logs/dev.spec-kitty.supervisor.out.log")
    assert job["StandardErrorPath"] == str(home / "Library/Logs/dev.spec-kitty.supervisor.err.log")


def test_current_platform_knows_linux_and_macos_only() -> None:
    assert current_platform("linux") == "linux"
    assert current_platform("darwin") == "darwin"
    with pytest.raises(UnsupportedPlatformError, match="win32"):
        current_platform("win32")


def test_default_exec_path_is_the_console_script_next_to_the_interpreter() -> None:
    expected = Path(sys.executable).parent / "spec-kitty-supervisor"
    if not expected.exists():
        pytest.skip(f"this interpreter has no console script next to it ({expected})")

    assert default_exec_path() == str(expected)


# Commands to print ------------------------------------------------------------------------------


def test_linux_enable_commands_reload_enable_the_socket_and_suggest_lingering(home: Path) -> None:
    commands = enable_commands("linux", home / ".spec-kitty", home, user="ada")

    assert commands == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now spec-kitty-supervisor.socket",
        "loginctl enable-linger ada",
    ]


def test_macos_enable_command_bootstraps_the_agent_into_the_gui_domain(home: Path) -> None:
    commands = enable_commands("darwin", home / ".spec-kitty", home, uid=501)

    plist = home / "Library/LaunchAgents/dev.spec-kitty.supervisor.plist"
    assert commands == [f"launchctl bootstrap gui/501 {plist}"]


def test_disable_commands_stop_and_forget_the_units(home: Path) -> None:
    assert disable_commands("linux", home / ".spec-kitty", home) == [
        "systemctl --user disable --now spec-kitty-supervisor.socket spec-kitty-supervisor.service",
        "systemctl --user daemon-reload",
    ]
    assert disable_commands("darwin", home / ".spec-kitty", home, uid=501) == [
        "launchctl bootout gui/501/dev.spec-kitty.supervisor"
    ]


def test_commands_quote_paths_with_spaces(tmp_path: Path) -> None:
    home = tmp_path / "my home"

    (command,) = enable_commands("darwin", home / ".spec-kitty", home, uid=501)

    assert command.endswith(f"'{home}/Library/LaunchAgents/dev.spec-kitty.supervisor.plist'")


# Writing --------------------------------------------------------------------------------------


def test_write_planned_creates_the_folders_and_writes_each_file_with_its_mode(
    tmp_path: Path,
) -> None:
    target = tmp_path / "a/b/unit.service"

    written = write_planned([PlannedFile(target, b"# x\n", 0o640)])

    assert written == [target]
    assert target.read_bytes() == b"# x\n"
    assert target.stat().st_mode & 0o777 == 0o640


def test_write_planned_overwrites_its_own_files_and_skips_unchanged_ones(
    home: Path, exec_path: str
) -> None:
    files = install("linux", exec_path, home / ".spec-kitty", home)
    files[0].path.write_text(f"# {UNIT_MARKER}\nold content\n")

    written = write_planned(files)

    assert written == [files[0].path]
    assert files[0].path.read_bytes() == files[0].content
    assert write_planned(files) == []


def test_write_planned_refuses_a_file_it_did_not_write_and_writes_nothing(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.service", tmp_path / "theirs.socket"
    theirs.write_text("[Socket]\nListenStream=/run/theirs.sock\n")

    with pytest.raises(ForeignUnitFileError, match=r"theirs\.socket.*not written by") as raised:
        write_planned([PlannedFile(ours, b"# new\n"), PlannedFile(theirs, b"# new\n")])

    assert isinstance(raised.value, FileExistsError)
    assert not ours.exists()
    assert theirs.read_text() == "[Socket]\nListenStream=/run/theirs.sock\n"


def test_write_planned_with_force_replaces_a_foreign_file(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.socket"
    theirs.write_text("[Socket]\n")

    write_planned([PlannedFile(theirs, b"# new\n")], force=True)

    assert theirs.read_bytes() == b"# new\n"


# Removing -------------------------------------------------------------------------------------


def test_remove_installed_removes_only_files_with_our_marker(home: Path, exec_path: str) -> None:
    service, socket_unit = install("linux", exec_path, home / ".spec-kitty", home)
    socket_unit.path.write_text("[Socket]\nListenStream=/run/hand-written.sock\n")

    result = remove_installed("linux", home / ".spec-kitty", home, environ=NO_XDG)

    assert result.removed == [service.path]
    assert result.foreign == [socket_unit.path]
    assert not service.path.exists()
    assert socket_unit.path.exists()


def test_remove_installed_when_nothing_is_installed_removes_nothing(home: Path) -> None:
    result = remove_installed("darwin", home / ".spec-kitty", home)

    assert result.removed == []
    assert result.foreign == []


# Checking (doctor) ---------------------------------------------------------------------------


def test_check_reports_a_missing_service_as_information_only(home: Path, exec_path: str) -> None:
    findings = check_installed_units(
        "linux", exec_path, home / ".spec-kitty", home, environ=NO_XDG, linger=lingering
    )

    assert codes(findings) == ["service_not_installed"]
    assert findings[0].severity == "info"
    assert findings[0].remediation is not None
    assert "spec-kitty-supervisor install-service" in findings[0].remediation


def test_check_of_a_fresh_install_with_lingering_finds_nothing(home: Path, exec_path: str) -> None:
    root = home / ".spec-kitty"
    install("linux", exec_path, root, home)

    assert (
        check_installed_units("linux", exec_path, root, home, environ=NO_XDG, linger=lingering)
        == []
    )


@pytest.mark.parametrize(
    "odd_dir", ["with space", "100%", "dollar$HOME", "semi;colon", "comma,star*"]
)
def test_check_reads_back_the_executable_of_an_install_with_an_odd_path(
    tmp_path: Path, home: Path, odd_dir: str
) -> None:
    script = tmp_path / odd_dir / "spec-kitty-supervisor"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    root = tmp_path / odd_dir / "root"
    install("linux", str(script), root, home)
    (service, _socket) = plan_install("linux", str(script), root, home, environ=NO_XDG)
    service.path.write_bytes(service.content + b"# edited by hand\n")

    findings = check_installed_units(
        "linux", str(script), root, home, environ=NO_XDG, linger=lingering
    )

    assert codes(findings) == ["service_unit_outdated"]


def test_check_flags_a_unit_that_runs_another_installation(
    home: Path, exec_path: str, tmp_path: Path
) -> None:
    root = home / ".spec-kitty"
    old = tmp_path / "old-venv/bin/spec-kitty-supervisor"
    old.parent.mkdir(parents=True)
    old.write_text("#!/bin/sh\n")
    old.chmod(0o755)
    install("linux", str(old), root, home)

    findings = check_installed_units(
        "linux", exec_path, root, home, environ=NO_XDG, linger=lingering
    )

    assert codes(findings) == ["service_exec_mismatch"]
    assert findings[0].severity == "warning"
    assert str(old) in findings[0].message
    assert exec_path in findings[0].message
    assert findings[0].remediation is not None
    assert "systemctl --user restart spec-kitty-supervisor.service" in findings[0].remediation


def test_check_flags_a_unit_whose_executable_is_gone_as_an_error(
    home: Path, exec_path: str
) -> None:
    root = home / ".spec-kitty"
    install("darwin", "/nonexistent/venv/bin/spec-kitty-supervisor", root, home)

    findings = check_installed_units("darwin", exec_path, root, home, uid=501)

    assert codes(findings) == ["service_exec_missing"]
    assert findings[0].severity == "error"
    assert findings[0].remediation is not None
    assert "launchctl bootout gui/501/dev.spec-kitty.supervisor" in findings[0].remediation


def test_check_flags_a_hand_written_unit_and_a_missing_one(home: Path, exec_path: str) -> None:
    root = Path("/srv/other-root")
    service, socket_unit = install("linux", exec_path, root, home)
    service.path.write_text("[Service]\nExecStart=/usr/bin/true\n")
    socket_unit.path.unlink()

    findings = check_installed_units(
        "linux", exec_path, root, home, environ=NO_XDG, linger=lingering
    )

    assert codes(findings) == ["service_unit_foreign", "service_partially_installed"]
    assert findings[0].remediation is not None
    assert "install-service --root /srv/other-root --force" in findings[0].remediation


def test_check_warns_when_lingering_is_off_and_says_how_to_turn_it_on(
    home: Path, exec_path: str
) -> None:
    root = home / ".spec-kitty"
    install("linux", exec_path, root, home)

    findings = check_installed_units(
        "linux", exec_path, root, home, user="ada", environ=NO_XDG, linger=lambda _user: False
    )

    assert codes(findings) == ["linger_disabled"]
    assert findings[0].severity == "warning"
    assert findings[0].remediation == "loginctl enable-linger ada"


def test_check_says_so_when_lingering_cannot_be_determined(home: Path, exec_path: str) -> None:
    root = home / ".spec-kitty"
    install("linux", exec_path, root, home)

    findings = check_installed_units(
        "linux", exec_path, root, home, user="ada", environ=NO_XDG, linger=lambda _user: None
    )

    assert codes(findings) == ["linger_unknown"]
    assert findings[0].severity == "info"


def test_lingering_is_read_from_loginds_state_file(tmp_path: Path) -> None:
    (tmp_path / "ada").touch()

    assert linger_enabled("ada", linger_dir=tmp_path) is True


def test_lingering_is_off_for_a_user_logind_does_not_know(tmp_path: Path) -> None:
    # No state file, and no logind session for a user that does not exist.
    assert linger_enabled("no-such-user-sks-test", linger_dir=tmp_path) is False


def test_lingering_is_unknown_without_logind_state_or_answer(tmp_path: Path) -> None:
    assert linger_enabled("no-such-user-sks-test", linger_dir=tmp_path / "absent") is None


def test_units_are_written_world_readable_but_not_writable(home: Path, exec_path: str) -> None:
    files = install("linux", exec_path, home / ".spec-kitty", home)

    assert all(os.stat(f.path).st_mode & 0o777 == 0o644 for f in files)

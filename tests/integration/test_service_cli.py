"""``install-service`` and ``uninstall-service`` as a user runs them, for both platforms."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spec_kitty_supervisor._units import carries_marker, validate_plist

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", os.defpath),
        "USER": "tester",
    }
    return subprocess.run(
        [sys.executable, "-m", "spec_kitty_supervisor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None and os.environ.get("CI") != "true",
    reason="systemd-analyze is not installed (Debian/Ubuntu package: systemd)",
)
def test_dry_run_units_for_linux_verify_clean_and_nothing_is_installed(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None, "CI must install systemd-analyze"
    home, rendered = tmp_path / "home", tmp_path / "rendered"
    home.mkdir()
    result = _cli(home, "install-service", "--dry-run", "--output", str(rendered))
    assert result.returncode == 0, result.stderr
    assert "systemctl --user enable --now spec-kitty-supervisor.socket" in result.stdout
    units = sorted(rendered.iterdir())
    assert [u.name for u in units] == [
        "spec-kitty-supervisor.service",
        "spec-kitty-supervisor.socket",
    ]
    assert "run_sync_daemon" not in units[0].read_text()
    assert not (home / ".config").exists()  # a dry run writes nothing where it would install
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "--user", "verify", *map(str, units)],
        env={"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0
    assert (verify.stdout + verify.stderr).strip() == ""


def test_dry_run_plist_for_macos_validates(tmp_path: Path) -> None:
    home, rendered = tmp_path / "home", tmp_path / "rendered"
    home.mkdir()
    result = _cli(
        home, "install-service", "--dry-run", "--platform", "darwin", "--output", str(rendered)
    )
    assert result.returncode == 0, result.stderr
    assert "launchctl bootstrap gui/" in result.stdout
    (plist,) = rendered.iterdir()
    assert plist.name == "dev.spec-kitty.supervisor.plist"
    document = validate_plist(plist.read_bytes())
    assert document["RunAtLoad"] is True
    assert document["KeepAlive"] == {"SuccessfulExit": False}
    assert document["ProgramArguments"][1:] == [
        "run",
        "--root",
        str((home / ".spec-kitty").resolve()),
        "--service",
    ]


@pytest.mark.parametrize(
    ("platform", "names"),
    [
        ("linux", ["spec-kitty-supervisor.service", "spec-kitty-supervisor.socket"]),
        ("darwin", ["dev.spec-kitty.supervisor.plist"]),
    ],
)
def test_install_refuses_foreign_files_and_uninstall_removes_only_its_own(
    tmp_path: Path, platform: str, names: list[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    folder = (
        home / ".config" / "systemd" / "user"
        if platform == "linux"
        else home / "Library" / "LaunchAgents"
    )
    folder.mkdir(parents=True)
    foreign = folder / names[0]
    foreign.write_text("# my own hand-written unit\n")

    refused = _cli(home, "install-service", "--platform", platform)
    assert refused.returncode == 1
    assert "was not written by spec-kitty-supervisor" in refused.stderr
    assert foreign.read_text() == "# my own hand-written unit\n"
    assert sorted(p.name for p in folder.iterdir()) == [names[0]]  # nothing half-written

    forced = _cli(home, "install-service", "--platform", platform, "--force")
    assert forced.returncode == 0, forced.stderr
    assert all(carries_marker((folder / name).read_bytes()) for name in names)
    again = _cli(home, "install-service", "--platform", platform)
    assert again.returncode == 0
    assert again.stdout.count("unchanged:") == len(names)

    removed = _cli(home, "uninstall-service", "--platform", platform)
    assert removed.returncode == 0, removed.stderr
    assert "no supervisor was running" in removed.stdout
    assert list(folder.iterdir()) == []


def test_uninstall_leaves_a_file_it_did_not_write(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = home / ".config" / "systemd" / "user"
    folder.mkdir(parents=True)
    (folder / "spec-kitty-supervisor.socket").write_text("[Socket]\nListenStream=/x\n")
    result = _cli(home, "uninstall-service", "--platform", "linux")
    assert result.returncode == 0
    assert "left alone (not written by install-service)" in result.stdout
    assert (folder / "spec-kitty-supervisor.socket").exists()


def test_doctor_flags_a_service_that_still_runs_an_old_binary(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    installed = _cli(home, "install-service", "--platform", "linux")
    assert installed.returncode == 0, installed.stderr
    unit = home / ".config" / "systemd" / "user" / "spec-kitty-supervisor.service"
    old_binary = tmp_path / "old-venv" / "bin" / "spec-kitty-supervisor"
    old_binary.parent.mkdir(parents=True)
    old_binary.write_text("#!/bin/sh\nexit 0\n")
    old_binary.chmod(0o755)
    text = unit.read_text()
    current = text.split("ExecStart=", 1)[1].split(" ", 1)[0]
    unit.write_text(text.replace(f"ExecStart={current} ", f"ExecStart={old_binary} "))

    doctor = _cli(home, "doctor", "--json")
    report = json.loads(doctor.stdout)
    codes = {finding["code"]: finding for finding in report["findings"]}
    assert "service_exec_mismatch" in codes, report["findings"]
    assert "install-service" in (codes["service_exec_mismatch"]["remediation"] or "")
    assert doctor.returncode == 1  # something needs action

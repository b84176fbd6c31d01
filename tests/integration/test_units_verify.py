"""The rendered units pass ``systemd-analyze --user verify`` without a single warning.

``verify`` exits 0 even for unknown keys (it only prints them), so the tests also require an
empty output; a control test proves that a flaw does produce output.

Running it in CI, including as root: ``--user`` needs ``XDG_RUNTIME_DIR`` to name an existing,
private folder (without one it fails with "Failed to lookup RuntimeDirectory path"); it creates a
``systemd/`` folder inside. ``HOME`` points at an empty folder so units installed for the real user
(``~/.config/systemd/user``) can neither shadow nor satisfy the ones under test. Being root needs
nothing else: no user manager or bus is contacted. ``ExecStart=`` must name an existing
executable, so the units run a small script written for the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from spec_kitty_supervisor._service import plan_install, write_planned
from spec_kitty_supervisor._units import example_units

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None and os.environ.get("CI") != "true",
    reason="systemd-analyze is not installed (Debian/Ubuntu package: systemd)",
)


def executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def verify(tmp_path: Path, units: list[Path]) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    empty_home = tmp_path / "verify-home"
    empty_home.mkdir(exist_ok=True)
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--user", "verify", *map(str, units)],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(empty_home),
            "XDG_RUNTIME_DIR": str(runtime_dir),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def installed_units(tmp_path: Path, exec_path: str, root: Path) -> list[Path]:
    home = tmp_path / "home"
    files = plan_install("linux", exec_path, root, home, environ={})
    write_planned(files)
    return [f.path for f in files]


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == ""


def test_units_of_the_default_root_verify_without_warnings(tmp_path: Path) -> None:
    exec_path = executable(tmp_path / "bin" / "spec-kitty-supervisor")

    units = installed_units(tmp_path, exec_path, tmp_path / "home" / ".spec-kitty")

    assert [u.name for u in units] == [
        "spec-kitty-supervisor.service",
        "spec-kitty-supervisor.socket",
    ]
    assert_clean(verify(tmp_path, units))


def test_units_of_an_oddly_named_root_and_executable_verify_without_warnings(
    tmp_path: Path,
) -> None:
    # verify looks the unescaped ExecStart path up on disk, so this also proves that the
    # program path's quoting and %-escaping come back to the real file.
    exec_path = executable(tmp_path / "my tools, 100% $x;" / "spec-kitty-supervisor")
    root = tmp_path / 'a root with spaces, 50% and $HOME "quoted"'

    units = installed_units(tmp_path, exec_path, root)

    assert all("spec-kitty-supervisor-" in u.name for u in units)
    assert_clean(verify(tmp_path, units))


def test_committed_examples_verify_once_their_executable_exists(tmp_path: Path) -> None:
    exec_path = executable(tmp_path / "bin" / "spec-kitty-supervisor")
    units = []
    for relative, content in example_units().items():
        if relative.startswith("systemd/"):
            unit = tmp_path / "units" / Path(relative).name
            unit.parent.mkdir(exist_ok=True)
            text = content.decode().replace("/usr/local/bin/spec-kitty-supervisor", exec_path)
            unit.write_text(text)
            units.append(unit)

    assert len(units) == 2
    assert_clean(verify(tmp_path, units))


def test_verify_does_report_a_flawed_unit_so_silence_means_something(tmp_path: Path) -> None:
    exec_path = executable(tmp_path / "bin" / "spec-kitty-supervisor")
    service, socket_unit = installed_units(tmp_path, exec_path, tmp_path / "home" / ".spec-kitty")
    service.write_text(service.read_text() + "[Service]\nKillMod=process\n")

    result = verify(tmp_path, [service, socket_unit])

    assert "Unknown key" in result.stdout + result.stderr
    assert "KillMod" in result.stdout + result.stderr


def test_verify_reports_an_executable_that_does_not_exist(tmp_path: Path) -> None:
    units = installed_units(tmp_path, str(tmp_path / "nowhere" / "sks"), tmp_path / "r")

    result = verify(tmp_path, units)

    assert result.returncode != 0
    assert "is not executable" in result.stdout + result.stderr

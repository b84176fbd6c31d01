"""Which command a client's auto-start runs (``_autostart.supervisor_command``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from spec_kitty_supervisor_client._autostart import COMMAND_ENV, supervisor_command
from spec_kitty_supervisor_client._errors import SupervisorStartFailed


def test_the_override_is_split_as_a_shell_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMMAND_ENV, "'/opt/my tools/python' -m spec_kitty_supervisor")
    assert supervisor_command() == ["/opt/my tools/python", "-m", "spec_kitty_supervisor"]


def test_the_installed_package_runs_under_this_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    assert supervisor_command() == [sys.executable, "-m", "spec_kitty_supervisor"]


def _without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "spec_kitty_supervisor" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_the_package_the_console_script_on_path_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "spec-kitty-supervisor"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    _without_the_package(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert supervisor_command() == [str(script)]


def test_with_neither_the_error_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without_the_package(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SupervisorStartFailed, match=COMMAND_ENV):
        supervisor_command()

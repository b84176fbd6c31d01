"""``doctor`` lists each spec-kitty installation (PATH, pipx, uv tool) with its integration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sks_harness import SUPERVISOR, Sandbox, throwaway_venv
from spec_kitty_supervisor._integrate import HOOK_FILE, apply, inspect_interpreter, plan

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


def _doctor(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [*SUPERVISOR, "doctor", "--json", "--root", str(sandbox.root)],
        env=sandbox.env({"PATH": "/usr/bin:/bin"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    findings = json.loads(result.stdout)["findings"]
    return {
        finding["code"] + ":" + finding["message"].split(" ")[1]: finding
        for finding in findings
        if finding["code"].startswith("integration_")
    }


def _integrate(python: Path) -> None:
    result = subprocess.run(
        [*SUPERVISOR, "integrate", "--python", str(python)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_doctor_lists_pipx_and_uv_tool_installations_with_their_integration(
    sandbox: Sandbox,
) -> None:
    uv_tool = throwaway_venv("3.2.7", sandbox.home / ".local/share/uv/tools", "spec-kitty-cli")
    pipx = throwaway_venv("3.2.4", sandbox.home / ".local/pipx/venvs", "spec-kitty-cli")
    uv_python, pipx_python = uv_tool / "bin" / "python", pipx / "bin" / "python"

    assert set(_doctor(sandbox)) == {"integration_absent:3.2.7", "integration_absent:3.2.4"}
    absent = _doctor(sandbox)["integration_absent:3.2.4"]
    assert f"integrate --python {pipx_python}" in absent["remediation"]
    assert "pipx" in absent["message"]

    _integrate(uv_python)
    found = _doctor(sandbox)
    assert set(found) == {"integration_active:3.2.7", "integration_absent:3.2.4"}
    assert "uv tool" in found["integration_active:3.2.7"]["message"]

    hook = next(uv_tool.glob("lib/python3.*/site-packages")) / HOOK_FILE
    hook.write_text(hook.read_text() + "# an older hook\n")
    stale = _doctor(sandbox)["integration_stale:3.2.7"]
    assert stale["severity"] == "warning"
    assert f"integrate --python {uv_python}" in stale["remediation"]

    apply(plan(inspect_interpreter(str(pipx_python)), ["/elsewhere/spec-kitty-supervisor"]))
    foreign = _doctor(sandbox)["integration_foreign:3.2.4"]
    assert foreign["remediation"].endswith("--force` to use this one instead")


def test_doctor_shows_what_the_hooks_recorded(sandbox: Sandbox) -> None:
    folder = sandbox.root / "supervisor"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "integration.json").write_text(
        json.dumps(
            {
                "failure": {
                    "count": 3,
                    "last_error": "StartFailed: the recorded supervisor command /x is gone",
                    "time": "2026-12-01T09:00:00Z",
                    "python": "/v/bin/python",
                }
            }
        )
    )
    result = subprocess.run(
        [*SUPERVISOR, "doctor", "--json", "--root", str(sandbox.root)],
        env=sandbox.env({"PATH": "/usr/bin:/bin"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    [failure] = [
        f for f in json.loads(result.stdout)["findings"] if f["code"] == "integration_failures"
    ]
    assert "3 time(s)" in failure["message"]
    assert "/x is gone" in failure["message"]


def test_integration_record_is_never_created_by_doctor(sandbox: Sandbox) -> None:
    _doctor(sandbox)
    assert not (Path(sandbox.root) / "supervisor" / "integration.json").exists()

"""A root whose supervisor folder is read-only, for real: a read-only bind mount in a private
mount namespace. No supervisor is started there (it could record nothing), and every command
says why with the fix, never with a traceback; ``doctor`` still looks (docs/runbook.md).

The scenario runs in its own process under ``unshare -m`` (the mount must not be seen by the
rest of the machine, nor outlive the test) and prints what it saw as one JSON document; the
assertions are here. Skipped where the machine does not allow a private mount namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from sks_harness import SPAWN_PORTS, PortRange, Sandbox, spec_kitty_python

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

SCENARIO = textwrap.dedent(
    """
    import json, os, subprocess, sys
    import psutil

    root, python = sys.argv[1], sys.argv[2]
    folder = os.path.join(root, "supervisor")
    subprocess.run(["mount", "--bind", folder, folder], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", folder, folder], check=True)
    cli = [sys.executable, "-m", "spec_kitty_supervisor"]
    seen = {}
    try:
        for name, args in {
            "run": ["run"],
            "ensure": ["ensure", "--python", python],
            "doctor": ["doctor", "--json"],
            "reset": ["doctor", "--reset", "--force"],
        }.items():
            done = subprocess.run([*cli, *args, "--root", root], capture_output=True, text=True,
                                  timeout=120)
            seen[name] = {"code": done.returncode, "out": done.stdout, "err": done.stderr}
        marker = f"--spec-kitty-daemon-root={root}"
        seen["daemons"] = [p.pid for p in psutil.process_iter(["cmdline"])
                           if marker in (p.info["cmdline"] or [])]
        seen["supervisor_folder"] = sorted(os.listdir(folder))
    finally:
        subprocess.run(["umount", "-l", folder], check=False)
    print(json.dumps(seen))
    """
)


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _private_mounts_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _scenario(sandbox: Sandbox) -> dict[str, Any]:
    (sandbox.root / "supervisor").mkdir(mode=0o700, parents=True, exist_ok=True)
    python = str(spec_kitty_python("3.2.4"))
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", SCENARIO, str(sandbox.root), python],
        env=sandbox.env({"SPEC_KITTY_SUPERVISOR_PORT_RANGE": str(SPAWN_PORTS)}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=sandbox.home,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_read_only_supervisor_folder_is_refused_with_the_fix_and_doctor_still_looks(
    sandbox: Sandbox,
) -> None:
    if not _private_mounts_allowed():
        pytest.skip("this machine allows no private mount namespace (unshare -m)")
    seen = _scenario(sandbox)
    read_only = "its file system is read-only; remount it read-write"
    for name in ("run", "ensure", "doctor", "reset"):
        assert "Traceback" not in seen[name]["err"], (name, seen[name]["err"])
    # No supervisor starts: not by hand, not by a client's auto-start.
    assert seen["run"]["code"] == 1
    assert read_only in seen["run"]["err"]
    assert seen["ensure"]["code"] == 1
    assert "cannot start a supervisor" in seen["ensure"]["err"]
    assert read_only in seen["ensure"]["err"]
    assert seen["daemons"] == []
    assert seen["supervisor_folder"] == []  # nothing was written there
    # doctor looks without writing, and names the problem (an error finding: exit 1).
    assert seen["doctor"]["code"] == 1
    findings = {f["code"]: f for f in json.loads(seen["doctor"]["out"])["findings"]}
    assert read_only in findings["root_not_writable"]["message"]
    assert findings["root_not_writable"]["severity"] == "error"
    assert "supervisor_not_running" not in findings  # "a client starts one" cannot happen
    # A reset acts and records: refused, with the same fix.
    assert seen["reset"]["code"] == 2
    assert read_only in seen["reset"]["err"]

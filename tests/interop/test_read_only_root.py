"""A root whose supervisor folder is read-only, for real: a read-only bind mount in a private
mount namespace. No supervisor is started there (it could record nothing), and every command
says why with the fix, never with a traceback; ``doctor`` still looks (docs/runbook.md). A
folder that turns read-only under a running supervisor makes it degraded: it acts on nothing
it cannot record, keeps serving, and recovers by itself once the folder is writable again.

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


DURING_A_RUN = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    import psutil

    root, python = sys.argv[1], sys.argv[2]
    folder = os.path.join(root, "supervisor")
    env = {**os.environ, "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "0.5"}
    cli = [sys.executable, "-m", "spec_kitty_supervisor"]
    seen = {}

    def run(*args):
        done = subprocess.run([*cli, *args, "--root", root], env=env, capture_output=True,
                              text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr

    def status():
        code, out, _ = run("status", "--json")
        return json.loads(out) if code == 0 else None

    def until(condition, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)  # polling a condition with a deadline
        raise SystemExit(f"timed out waiting for {what}")

    def daemons():
        marker = f"--spec-kitty-daemon-root={root}"
        return sorted(p.pid for p in psutil.process_iter(["cmdline"])
                      if marker in (p.info["cmdline"] or []))

    def events():
        return [json.loads(line)["kind"]
                for line in open(os.path.join(folder, "events.jsonl")).read().splitlines()]

    sup = subprocess.Popen([*cli, "run", "--root", root], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mounted = False
    try:
        until(status, "the supervisor to answer")
        code, out, err = run("ensure", "--python", python, "--json")
        assert code == 0, err
        pid = json.loads(out)["daemon"]["pid"]
        subprocess.run(["mount", "--bind", folder, folder], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", folder, folder], check=True)
        mounted = True
        code, _, err = run("retire", "--pid", str(pid))
        seen["retire_code"], seen["retire_stderr"] = code, err
        seen["daemons_after_refused_retire"] = daemons()
        seen["table_after_refused_retire"] = [d["pid"] for d in status()["daemons"]]
        seen["degraded_after_retire"] = status()["degraded"]
        seen["ensure_while_read_only"] = json.loads(
            run("ensure", "--python", python, "--json")[1])["action"]
        # The daemon dies: its restart cannot be recorded, so it must not be left running.
        os.kill(pid, signal.SIGKILL)  # the daemon this scenario was just handed

        def memory_kinds():
            return [e["kind"] for e in json.loads(run("events", "--json")[1])["events"]]

        until(lambda: "restart_failed" in memory_kinds(), "the restart to be refused")
        seen["daemons_after_death"] = daemons()
        seen["table_after_death"] = status()["daemons"]
        seen["degraded_after_death"] = status()["degraded"]
        subprocess.run(["umount", folder], check=True)
        mounted = False
        until(lambda: (s := status()) is not None and s["degraded"] is None,
              "degraded to end by itself")
        until(lambda: "restarted" in memory_kinds(), "the restart that waited")
        seen["events_in_memory"] = memory_kinds()
        seen["events_in_file"] = events()
        seen["quarantine"] = status()["root_state"]
        restarted = [d["pid"] for d in status()["daemons"]]
        code, out, err = run("ensure", "--python", python, "--json")
        answer = json.loads(out) if code == 0 else {"action": err, "daemon": {}}
        seen["ensure_after"] = answer["action"]
        seen["ensure_after_is_the_restarted"] = [answer["daemon"].get("pid")] == restarted
        seen["daemons_after"] = len(daemons())
        seen["supervisor_pid_unchanged"] = status()["supervisor"]["pid"] == sup.pid
    finally:
        if mounted:
            subprocess.run(["umount", "-l", folder], check=False)
        run("stop", "--children")
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
        for pid in daemons():  # only if stop --children left one: by pid, never by name
            os.kill(pid, signal.SIGKILL)
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


def _scenario(sandbox: Sandbox, scenario: str = SCENARIO) -> dict[str, Any]:
    (sandbox.root / "supervisor").mkdir(mode=0o700, parents=True, exist_ok=True)
    python = str(spec_kitty_python("3.2.4"))
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", scenario, str(sandbox.root), python],
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


def test_a_folder_turned_read_only_under_a_running_supervisor_degrades_it_until_writable(
    sandbox: Sandbox,
) -> None:
    if not _private_mounts_allowed():
        pytest.skip("this machine allows no private mount namespace (unshare -m)")
    seen = _scenario(sandbox, DURING_A_RUN)
    # A retirement it cannot record is not done: the daemon runs, and is still in the table.
    assert seen["retire_code"] == 1
    assert "state_not_writable" in seen["retire_stderr"]
    assert len(seen["daemons_after_refused_retire"]) == 1
    assert seen["table_after_refused_retire"] == seen["daemons_after_refused_retire"]
    # status says why, and the running daemon is still served.
    assert "Read-only file system" in seen["degraded_after_retire"]
    assert "state.json" in seen["degraded_after_retire"]
    assert seen["ensure_while_read_only"] == "reused"
    # It dies: the restart that cannot be recorded is stopped, never left running unrecorded;
    # the ledger's file cannot take the events either, and status says so too.
    assert seen["daemons_after_death"] == []
    assert seen["table_after_death"] == []
    assert "events.jsonl" in seen["degraded_after_death"]
    # Writable again: degraded ends by itself, the ledger's file catches up with what it
    # missed, in order, the restart that waited is done (the root is not quarantined: a
    # read-only folder is not the daemon dying), and the next ensure gets that daemon.
    memory, written = seen["events_in_memory"], seen["events_in_file"]
    assert written[-len(memory) :] == memory
    assert memory.index("died") < memory.index("restart_failed") < memory.index("restarted")
    assert "quarantined" not in memory
    assert seen["quarantine"] == "ok"
    assert seen["ensure_after"] == "reused"
    assert seen["ensure_after_is_the_restarted"] is True
    assert seen["daemons_after"] == 1
    assert seen["supervisor_pid_unchanged"] is True

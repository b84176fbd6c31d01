"""A full disk, for real: the root on a 1 MiB tmpfs in a private mount namespace.

The scenario runs in its own process under ``unshare -m`` (the mount must not be seen by the
rest of the machine, nor outlive the test), drives a real supervisor and a real 3.2.4 daemon
through the CLI, and prints what it saw as one JSON document; the assertions are here. Skipped
where the machine does not allow a private mount namespace.
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

#: The start of every full-disk script (also the chaos suite's repeated one): the tmpfs mounted
#: at argv[1], the root on it, the supervisor's CLI (``run``), ``status``, ``until`` (a condition
#: polled with a deadline) and ``daemons`` (the root's daemon pids, by their marker).
FULL_DISK_PRELUDE = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    import psutil

    mount, python, ports = sys.argv[1], sys.argv[2], sys.argv[3]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mount], check=True)
    root = os.path.join(mount, "root")
    os.mkdir(root, 0o700)
    env = {**os.environ, "SPEC_KITTY_SUPERVISOR_PORT_RANGE": ports,
           "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "0.5"}
    cli = [sys.executable, "-m", "spec_kitty_supervisor"]

    def run(*args):
        done = subprocess.run([*cli, *args, "--root", root], env=env, capture_output=True,
                              text=True, timeout=90)
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
    """
)

SCENARIO = FULL_DISK_PRELUDE + textwrap.dedent(
    """
    stderr_path = sys.argv[4]
    seen = {}

    with open(os.path.join(mount, "fill"), "wb", buffering=0) as fill:
        try:
            while True:
                fill.write(b"\\0" * 4096)
        except OSError:
            pass
    # Its stderr goes where a service manager's journal would: off the full disk.
    stderr_file = open(stderr_path, "wb")
    sup = subprocess.Popen([*cli, "run", "--root", root], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=stderr_file)
    try:
        first = until(status, "the supervisor to answer on a full disk")
        seen["started_on_full_disk"] = first["supervisor"]["pid"] == sup.pid
        seen["degraded_at_start"] = first.get("degraded")
        code, _, err = run("ensure", "--python", python)
        seen["ensure_code"], seen["ensure_stderr"] = code, err
        seen["daemons_after_refused_ensure"] = daemons()
        seen["table_after_refused_ensure"] = status()["daemons"]
        seen["doctor_code"] = run("doctor", "--json")[0]
        seen["events_code"] = run("events", "--json")[0]
        os.unlink(os.path.join(mount, "fill"))
        until(lambda: (s := status()) is not None and s.get("degraded") is None,
              "degraded to end by itself")
        seen["degraded_after_freeing"] = None
        code, out, err = run("ensure", "--python", python, "--json")
        seen["ensure_after_freeing"] = json.loads(out)["action"] if code == 0 else err
        seen["daemons_after_freeing"] = len(daemons())
    finally:
        run("stop", "--children")
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
        for pid in daemons():  # only if stop --children left one: by pid, never by name
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", mount], check=False)
        stderr_file.close()
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
    mount = sandbox.base / "small-disk"
    mount.mkdir()
    python = str(spec_kitty_python("3.2.4"))
    stderr_path = sandbox.base / "supervisor.stderr"
    argv = [str(mount), python, str(SPAWN_PORTS), str(stderr_path)]
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", SCENARIO, *argv],
        env=sandbox.env({}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=sandbox.home,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    report["supervisor_stderr"] = stderr_path.read_text(errors="replace")
    return report


def test_a_supervisor_on_a_full_disk_is_degraded_acts_on_nothing_and_recovers(
    sandbox: Sandbox,
) -> None:
    if not _private_mounts_allowed():
        pytest.skip("this machine allows no private mount namespace (unshare -m)")
    seen = _scenario(sandbox)
    # It starts on a full disk, and says why it is degraded.
    assert seen["started_on_full_disk"] is True
    assert "No space left on device" in seen["degraded_at_start"]
    # An ensure that needs a write is refused with its own code; nothing was acted on: no
    # daemon runs, none is in the table.
    assert seen["ensure_code"] == 1
    assert "state_not_writable" in seen["ensure_stderr"]
    assert seen["daemons_after_refused_ensure"] == []
    assert seen["table_after_refused_ensure"] == []
    # status (above), doctor and events keep working.
    assert seen["doctor_code"] in (0, 1)  # findings or none; never a crash (2)
    assert seen["events_code"] == 0
    # Once space is free it leaves degraded by itself and spawns.
    assert seen["degraded_after_freeing"] is None
    assert seen["ensure_after_freeing"] == "spawned"
    assert seen["daemons_after_freeing"] == 1
    # Its log could not be written either: said once on stderr, then its recovery; never a
    # "--- Logging error ---" traceback per record.
    stderr = seen["supervisor_stderr"]
    assert "Logging error" not in stderr
    assert "Traceback" not in stderr
    assert stderr.count('"event": "log_not_written"') == 1
    assert stderr.count('"event": "log_written_again"') == 1

"""Running out, repeated: descriptors and disk space, each round counted from the processes.

The single scenarios are the interop tests (``tests/interop/test_serving_under_exhaustion.py``
and ``tests/interop/test_full_disk.py``); their helpers are reused here and each fault is
repeated on one supervisor and its daemon, which must both be the same processes at the end
of every round, with one daemon, R/sync-daemon and the journal naming it.

- descriptors: the supervisor's limit is lowered under it (``prlimit``) to a few more than it
  holds, 100 clients flood it, the clients let go; it must serve again by itself, the same pid,
  and its daemon kept.
- disk: the root lives on a 1 MiB tmpfs in a private mount namespace; each round fills it, asks
  for the daemon (answered from memory, or refused with state_not_writable: never a 500), kills
  the supervisor with SIGKILL on the full disk and starts another (it must start), frees the
  space, and asks again: the same daemon, the table written again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from sks_harness import (
    SPAWN_PORTS,
    PortRange,
    Sandbox,
    SupervisorUnderTest,
    eventually,
    is_alive,
    read_identity,
    spec_kitty_python,
)
from spec_kitty_supervisor_client import socket_path_for_root
from tests.chaos._facts import settle_one_owner
from tests.chaos._tally import Tally, rounds
from tests.interop.test_full_disk import FULL_DISK_PRELUDE, _private_mounts_allowed
from tests.interop.test_serving_under_exhaustion import (  # many_descriptors: a fixture
    _flood,
    _status_pid,
    many_descriptors,  # noqa: F401
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


@pytest.mark.usefixtures("many_descriptors")
def test_running_out_of_descriptors_again_and_again(
    sup: SupervisorUnderTest, tally: Callable[[str], Tally]
) -> None:
    counted = tally("descriptor exhaustion")
    # A long heartbeat: this is about the accept loop, not about giving up the root.
    pid = sup.start(extra_env={"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "30"})
    supervisor = read_identity(pid)
    assert supervisor is not None
    daemon = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))["daemon"]
    daemon_identity = read_identity(daemon["pid"])
    assert daemon_identity is not None
    process = psutil.Process(pid)
    soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
    for round_ in range(rounds()):
        label = f"round {round_}"
        with counted.trial(label):
            failed_before = len(sup.log_events("accept_failed"))
            process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds() + 40, hard))
            held = _flood(socket_path_for_root(sup.root), 100)
            try:
                # Each round must really run out: a new run of failed accepts is logged.
                eventually(
                    lambda before=failed_before: len(sup.log_events("accept_failed")) > before,
                    what="accept_failed logged for this round's flood",
                )
            finally:
                for client in held:
                    client.close()
            answered = eventually(lambda: _status_pid(sup), what="status answered", timeout=60)
            if answered != pid:
                counted.fail(f"{label}: status answered by {answered}, not {pid}")
            process.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
            again = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")))
            if again["daemon"]["pid"] != daemon["pid"]:
                counted.lost(1, f"{label}: ensure gave {again['daemon']['pid']}, not {daemon}")
        if not is_alive(supervisor):
            counted.fail(f"{label}: the supervisor {pid} died")
        if not is_alive(daemon_identity):
            counted.lost(1, f"{label}: the daemon {daemon['pid']} is gone")
        settle_one_owner(counted, sup.root, label)
    counted.note(
        f"accept_failed logged {len(sup.log_events('accept_failed'))} times, "
        f"accept_recovered {len(sup.log_events('accept_recovered'))}"
    )


FULL_DISK_ROUNDS = FULL_DISK_PRELUDE + textwrap.dedent(
    """
    rounds = int(sys.argv[4])
    seen = []
    started = []

    def supervisors():
        return sorted(p.pid for p in started if p.poll() is None)

    def start():
        sup = subprocess.Popen([*cli, "run", "--root", root], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(sup)
        until(status, "a supervisor answering")
        return sup

    def fill():
        with open(os.path.join(mount, "fill"), "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\\0" * 4096)
            except OSError:
                pass

    sup = start()
    code, out, err = run("ensure", "--python", python, "--json")
    first = json.loads(out)["daemon"]["pid"] if code == 0 else None
    try:
        for index in range(rounds):
            fact = {"round": index, "daemon_before": first}
            fill()
            code, out, err = run("ensure", "--python", python, "--json")
            fact["ensure_full"] = json.loads(out)["daemon"]["pid"] if code == 0 else err[-300:]
            fact["status_full"] = (status() or {}).get("degraded")
            os.kill(sup.pid, signal.SIGKILL)
            sup.wait()
            sup = start()  # a supervisor starts on a full disk
            fact["daemons_full"] = daemons()
            code, out, err = run("doctor", "--json")
            fact["doctor_full_code"] = code
            os.unlink(os.path.join(mount, "fill"))
            until(lambda: (s := status()) is not None and s.get("degraded") is None,
                  "degraded to end by itself")
            code, out, err = run("ensure", "--python", python, "--json")
            fact["ensure_freed"] = json.loads(out) if code == 0 else err[-300:]
            fact["daemons_freed"] = daemons()
            fact["supervisors"] = supervisors()
            with open(os.path.join(root, "supervisor", "state.json")) as journal:
                fact["journal"] = [row["pid"] for row in json.load(journal)["daemons"]]
            with open(os.path.join(root, "sync-daemon")) as state:
                fact["recorded"] = int(state.read().split()[3])
            seen.append(fact)
    finally:
        run("stop", "--children")
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        for pid in daemons():  # only if stop --children left one: by pid, never by name
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", mount], check=False)
    print(json.dumps({"first": first, "rounds": seen}))
    """
)


def _full_disk_rounds(sandbox: Sandbox, count: int) -> dict[str, Any]:
    mount = sandbox.base / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        [
            "unshare",
            "-m",
            sys.executable,
            "-c",
            FULL_DISK_ROUNDS,
            str(mount),
            str(spec_kitty_python("3.2.4")),
            str(SPAWN_PORTS),
            str(count),
        ],
        env=sandbox.env({}),
        capture_output=True,
        text=True,
        timeout=300 + 120 * count,
        check=False,
        cwd=sandbox.home,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_full_disk_again_and_again_costs_neither_the_daemon_nor_the_table(
    sandbox: Sandbox, tally: Callable[[str], Tally]
) -> None:
    if not _private_mounts_allowed():
        pytest.skip("this machine allows no private mount namespace (unshare -m)")
    counted = tally("full disk")
    count = rounds(1)  # a round fills, kills, restarts and frees: the costliest of the suite
    report = _full_disk_rounds(sandbox, count)
    first = report["first"]
    assert isinstance(first, int), report
    for fact in report["rounds"]:
        label = f"round {fact['round']}"
        with counted.trial(label):
            # On the full disk: the daemon is served from memory or refused, never a 500.
            if fact["ensure_full"] != first and "state_not_writable" not in str(
                fact["ensure_full"]
            ):
                counted.fail(f"{label}: ensure on a full disk answered {fact['ensure_full']}")
            if fact["doctor_full_code"] not in (0, 1):
                counted.fail(f"{label}: doctor crashed on a full disk ({fact})")
            if fact["daemons_full"] != [first]:
                counted.lost(1, f"{label}: daemons on the full disk {fact['daemons_full']}")
            answer = fact["ensure_freed"]
            if not isinstance(answer, dict) or answer["daemon"]["pid"] != first:
                counted.lost(1, f"{label}: after freeing, ensure answered {answer}")
            daemons = fact["daemons_freed"]
            counted.duplicate(max(0, len(daemons) - 1), f"{label}: daemons {daemons}")
            counted.orphans(len(set(daemons) - {first}), f"{label}: daemons {daemons}")
            supervisors = fact["supervisors"]
            counted.duplicate(max(0, len(supervisors) - 1), f"{label}: supervisors {supervisors}")
            if fact["journal"] != [first] or fact["recorded"] != first:
                counted.lost(1, f"{label}: journal {fact['journal']}, R/sync-daemon {fact}")
    if len(report["rounds"]) != count:
        counted.fail(f"{len(report['rounds'])} of {count} rounds ran")
    counted.note(f"degraded on the full disk: {report['rounds'][0]['status_full']!r}")

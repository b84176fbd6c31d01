"""Every release family on its real daemon: the first daemons (3.1), 3.2.0-3.2.2's ignored
``SPEC_KITTY_HOME``, 3.2.5, versions read from the interpreter, and 4.0, which has no daemon."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    PortRange,
    RealDaemon,
    Sandbox,
    SupervisorUnderTest,
    eventually,
    linked_venv,
    make_orphans,
    read_identity,
    relink,
    run_blocking,
    signal_if_same,
    spawn_orphan,
    spec_kitty_python,
    supervisor_pids,
    wait_healthy,
    write_state_file,
)
from spec_kitty_supervisor_client import SpawnFailed, SupervisorClient

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _ensure(sup: SupervisorUnderTest, python: Path, *extra: str) -> dict[str, Any]:
    answer: dict[str, Any] = sup.cli_json("ensure", "--python", str(python), *extra)
    return answer


@pytest.mark.parametrize("version", ["3.1.10", "3.2.1", "3.2.5"])
def test_each_family_is_spawned_reused_and_keeps_its_version(
    fleet: DaemonFleet, version: str
) -> None:
    # R is $HOME/.spec-kitty: every release serves it, those ignoring SPEC_KITTY_HOME too.
    sandbox = fleet.sandbox()
    with SupervisorUnderTest(sandbox) as sup:
        first = _ensure(sup, spec_kitty_python(version))
        again = _ensure(sup, spec_kitty_python(version))

        assert first["action"] == "spawned"
        # A 3.1 daemon says "unknown"; it runs its interpreter's release, and is reused as such.
        assert first["daemon"]["package_version"] == version
        assert again["action"] == "reused"
        assert again["daemon"]["pid"] == first["daemon"]["pid"]


@pytest.mark.parametrize("version", ["3.1.10", "3.2.1"])
def test_a_release_ignoring_spec_kitty_home_is_refused_for_another_root(
    fleet: DaemonFleet, version: str
) -> None:
    sandbox = fleet.sandbox(separate_root=True)
    with SupervisorUnderTest(sandbox) as sup:
        result = sup.cli("ensure", "--python", str(spec_kitty_python(version)))

        assert result.returncode == 1
        assert f"spec-kitty-cli {version} ignores SPEC_KITTY_HOME" in result.stderr
        assert "upgrade to spec-kitty-cli 3.2.3" in result.stderr
        assert "Traceback" not in result.stderr
        assert sup.cli_json("status")["daemons"] == []
        assert not sandbox.log_file.exists()


def test_a_release_without_a_daemon_is_refused_and_no_supervisor_stays(
    fleet: DaemonFleet,
) -> None:
    sandbox = fleet.sandbox()
    python = spec_kitty_python("4.0.0rc7")
    with SupervisorUnderTest(sandbox) as sup:
        cold = sup.cli("ensure", "--python", str(python))

        assert cold.returncode == 1
        assert "spec-kitty-cli 4.0.0rc7 has no sync daemon" in cold.stderr
        assert "Traceback" not in cold.stderr
        assert supervisor_pids(sandbox.root) == []  # none was started for it

        # A supervisor that already runs refuses it the same way, before any spawn.
        sup.start()
        with_supervisor = sup.cli("ensure", "--python", str(python))
        assert with_supervisor.returncode == 1
        assert "spec-kitty-cli 4.0.0rc7 has no sync daemon" in with_supervisor.stderr
        assert sup.cli_json("status")["daemons"] == []
        assert not sandbox.log_file.exists()


def test_an_upgrade_in_place_makes_the_next_ensure_upgrade(
    fleet: DaemonFleet, tmp_path: Path
) -> None:
    sandbox = fleet.sandbox()
    python = linked_venv(tmp_path, spec_kitty_python("3.2.4"))
    with SupervisorUnderTest(sandbox) as sup:
        before = _ensure(sup, python)
        assert before["daemon"]["package_version"] == "3.2.4"

        relink(python, spec_kitty_python("3.2.7"))  # spec-kitty-cli upgraded in the same venv
        after = _ensure(sup, python)

        assert after["action"] == "upgraded"
        assert after["daemon"]["package_version"] == "3.2.7"
        assert after["daemon"]["python"] == str(python)
        # A claim of the old version is now refused, naming both.
        stale = sup.cli("ensure", "--python", str(python), "--package-version", "3.2.4")
        assert stale.returncode == 1
        assert "3.2.4" in stale.stderr
        assert "3.2.7" in stale.stderr


def test_first_daemons_of_this_home_are_swept_and_another_homes_survive(
    fleet: DaemonFleet,
) -> None:
    ours = fleet.sandbox()
    theirs = fleet.sandbox()
    ports = SPAWN_PORTS.free(2, exclude=[d.port for d in fleet.alive()])
    our_orphan = fleet.add(spawn_orphan(ours, "3.1.10", ports[0]))
    their_orphan = fleet.add(spawn_orphan(theirs, "3.1.10", ports[1]))
    for daemon in (our_orphan, their_orphan):
        run_blocking(wait_healthy, daemon, 30.0)

    with SupervisorUnderTest(ours) as sup:
        found = sup.cli("doctor", "--json")  # exits 1: there is something to do
        report = json.loads(found.stdout)
        by_pid = {orphan["pid"]: orphan for orphan in report["orphans"]}
        assert by_pid[our_orphan.pid]["cleanup_class"] == "safe_auto"
        assert by_pid[our_orphan.pid]["identity_source"] == "kernel_root"
        assert by_pid[their_orphan.pid]["skip_reason"] == "pre_marker"

        reset = sup.cli("doctor", "--reset", "--json")
        assert reset.returncode in (0, 1), reset.stderr
        swept = {entry["pid"] for entry in json.loads(reset.stdout)["reset_result"]["swept"]}

    assert our_orphan.pid in swept
    assert read_identity(our_orphan.pid) is None or our_orphan.exited()
    assert their_orphan.identity.same_process(read_identity(their_orphan.pid))


def _project(folder: Path) -> Path:
    project = folder / "project"
    (project / ".kittify").mkdir(parents=True)
    return project


def test_a_daemon_works_in_the_clients_directory(fleet: DaemonFleet) -> None:
    # 3.2.6+ find their consenting project and their .kitty.env from Path.cwd() (ADR 0003).
    sandbox = fleet.sandbox()
    project = _project(sandbox.base)
    with SupervisorUnderTest(sandbox) as sup, SupervisorClient(sup.root) as client:
        sup.start()
        answer = client.ensure(str(spec_kitty_python("3.2.7")), cwd=str(project), env=sup.env())

        assert psutil.Process(answer.daemon.pid).cwd() == str(project)


def test_an_unreadable_kitty_env_in_the_clients_project_fails_the_spawn_with_its_name(
    fleet: DaemonFleet,
) -> None:
    sandbox = fleet.sandbox()
    project = _project(sandbox.base)
    (project / ".kittify" / ".kitty.env").mkdir()  # present but unreadable as a file
    with SupervisorUnderTest(sandbox) as sup, SupervisorClient(sup.root) as client:
        sup.start()
        with pytest.raises(SpawnFailed) as failed:
            client.ensure(str(spec_kitty_python("3.2.7")), cwd=str(project), env=sup.env())

        assert ".kitty.env" in failed.value.log_tail
        assert sup.cli_json("status")["daemons"] == []


#: One release of each family that has a daemon.
EVERY_FAMILY = ("3.1.10", "3.2.1", "3.2.3", "3.2.5", "3.2.7")


def test_a_cold_ensure_sweeps_this_roots_orphans_of_every_family_and_spares_another_home(
    fleet: DaemonFleet,
) -> None:
    ours, theirs = fleet.sandbox(), fleet.sandbox()
    our_orphans = run_blocking(_orphans_of_every_family, ours, fleet)
    their_orphans = run_blocking(_orphans_of_every_family, theirs, fleet)

    with SupervisorUnderTest(ours) as sup:
        answer = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.7")))
        assert answer["action"] == "spawned"
        # The start-up sweep runs beside serving; each death is confirmed by pid.
        eventually(
            lambda: all(d.exited() for d in our_orphans),
            what="every orphan of this root to be swept",
            timeout=60,
        )
        reset = sup.cli("doctor", "--reset", "--json")
        report = json.loads(reset.stdout)
        swept = {e["pid"] for e in sup_events(sup) if e["kind"] == "orphan_swept"}

    assert swept <= {d.pid for d in our_orphans}
    # 3.2.0-3.2.3 daemons also retire by themselves once R/sync-daemon names the new daemon
    # (their 30 s tick may beat the sweep); the others only ever go by the sweep.
    assert {d.pid for d in our_orphans if d.version in ("unknown", "3.2.5", "3.2.7")} <= swept
    # Another HOME's daemons of every family: never swept without --force.
    assert [d.version for d in their_orphans if d.exited()] == []
    for daemon in their_orphans:
        assert daemon.identity.same_process(read_identity(daemon.pid))
    skipped = {e["pid"] for e in report["reset_result"]["skipped"]}
    assert {d.pid for d in their_orphans} <= skipped


async def _orphans_of_every_family(sandbox: Sandbox, fleet: DaemonFleet) -> list[RealDaemon]:
    # No state file and sync off: nothing supersedes them, so none retires by itself before
    # a supervisor records its own daemon.
    return await make_orphans(
        sandbox,
        count=len(EVERY_FAMILY),
        versions=EVERY_FAMILY,
        ports=SPAWN_PORTS,
        fleet=fleet,
        state_file=False,
        sync=False,
    )


def sup_events(sup: SupervisorUnderTest) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = sup.cli_json("events", "--limit", "1000")["events"]
    return events


def test_a_first_daemon_adopted_from_the_state_file_keeps_its_interpreters_version(
    fleet: DaemonFleet,
) -> None:
    # The supervisor dies and its journal is lost: the next one finds the 3.1 daemon only
    # through R/sync-daemon. Its "unknown" is its interpreter's release, so it is reused.
    sandbox = fleet.sandbox()
    python = spec_kitty_python("3.1.10")
    with SupervisorUnderTest(sandbox) as sup:
        first = _ensure(sup, python)
        (pid,) = sup.pids()
        identity = read_identity(pid)
        assert identity is not None
        signal_if_same(identity, signal.SIGKILL)
        eventually(lambda: sup.pids() == [], what="the supervisor to die")
        (sandbox.root / "supervisor" / "state.json").unlink()

        again = _ensure(sup, python)

        assert again["action"] == "adopted"
        assert again["daemon"]["pid"] == first["daemon"]["pid"]
        assert again["daemon"]["package_version"] == "3.1.10"


def test_the_recorded_daemon_of_a_release_no_cli_uses_is_reported_and_never_reset(
    fleet: DaemonFleet,
) -> None:
    # A 3.1 CLI left its daemon recorded in R/sync-daemon; the user has since upgraded, and
    # the only spec-kitty on PATH is 3.2.7.
    sandbox = fleet.sandbox()
    (port,) = SPAWN_PORTS.free(1, exclude=[d.port for d in fleet.alive()])
    old = fleet.add(spawn_orphan(sandbox, "3.1.10", port))
    run_blocking(wait_healthy, old, 30.0)
    write_state_file(sandbox.root, old.port, old.token, old.pid)
    path = {"PATH": f"{spec_kitty_python('3.2.7').parent}:{os.defpath}"}
    with SupervisorUnderTest(sandbox) as sup:
        found = sup.cli("doctor", "--json", extra_env=path)
        reset = sup.cli("doctor", "--reset", "--json", extra_env=path)

    findings = {f["code"]: f for f in json.loads(found.stdout)["findings"]}
    unused = findings["legacy_daemon_unused"]
    assert "spec-kitty-cli 3.1.10" in unused["message"]
    assert "(3.2.7)" in unused["message"]
    assert f"kill -TERM {old.pid}" in unused["remediation"]
    assert json.loads(reset.stdout)["reset_result"]["swept"] == []
    assert old.identity.same_process(read_identity(old.pid))

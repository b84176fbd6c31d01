"""The test harness itself, on real spec-kitty daemons: if it lies, every other test does.

It must start daemons exactly as upstream does, see them healthy with the shape of their
version, stop them gracefully and by pid only, never signal a process whose identity changed,
and leave nothing running, including daemons it never saw start.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from sks_harness import (
    ORPHAN_PORTS,
    DaemonFleet,
    MissingVenvError,
    PortRange,
    ProcessIdentity,
    RealDaemon,
    Sandbox,
    StateRecord,
    StopOutcome,
    aeventually,
    free_ports,
    parse_port_range,
    port_is_free,
    probe_health,
    read_identity,
    read_state_file,
    run_upstream_cli,
    run_upstream_ensure,
    spawn_orphan,
    spec_kitty_python,
    stop,
    wait_healthy,
    write_state_file,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

REPO = Path(__file__).resolve().parents[2]


def _gone(identity: ProcessIdentity) -> bool:
    return not identity.same_process(read_identity(identity.pid))


async def _port_freed(port: int) -> bool:
    """A stopped daemon's port frees shortly after its pid is gone (never the proof of it)."""
    return await aeventually(lambda: port_is_free(port), what=f"port {port} to be free")


async def _make_orphans_cli(sandbox: Sandbox, *args: str) -> dict[str, Any]:
    """Runs ``python -m sks_harness.orphans``: its daemons outlive it, re-parented as in the
    real world."""
    argv = [sys.executable, "-m", "sks_harness.orphans", "--home", str(sandbox.home)]
    with anyio.fail_after(60):
        made = await anyio.run_process(
            [*argv, *args, "--ports", str(ORPHAN_PORTS), "--json"], cwd=REPO
        )
    report: dict[str, Any] = json.loads(made.stdout)
    return report


# -- ports -----------------------------------------------------------------------------------


def test_free_ports_skips_a_port_that_is_listening() -> None:
    first, second = free_ports(2, ORPHAN_PORTS.lo, ORPHAN_PORTS.hi)
    with socket.socket() as listener:
        # As the daemons bind: a port's TIME_WAIT leftovers from earlier tests don't count.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", first))
        listener.listen()
        assert not port_is_free(first)
        assert first not in free_ports(2, ORPHAN_PORTS.lo, ORPHAN_PORTS.hi)
    assert second not in free_ports(1, ORPHAN_PORTS.lo, ORPHAN_PORTS.hi, exclude={second})


def test_port_sub_ranges_are_overridable_from_the_environment() -> None:
    env = {**os.environ, "SKS_TEST_ORPHAN_PORTS": "9410-9412", "SKS_TEST_SPAWN_PORTS": ""}
    shown = subprocess.run(
        [sys.executable, "-c", "from sks_harness import ORPHAN_PORTS as r; print(r)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
    )
    assert shown.stdout.strip() == "9410-9412"
    outside = subprocess.run(
        [sys.executable, "-c", "import sks_harness"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "SKS_TEST_SPAWN_PORTS": "9300-9310"},
        check=False,
    )
    assert outside.returncode != 0
    assert "leaves the sync family range" in outside.stderr
    assert parse_port_range("9400-9425") == PortRange(9400, 9425)
    with pytest.raises(ValueError, match="LO-HI"):
        parse_port_range("9400")


def test_a_missing_venv_fails_loudly_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEC_KITTY_VENVS", str(tmp_path))
    with pytest.raises(MissingVenvError, match=r"scripts/spec-kitty-venvs\.sh 3\.2\.4"):
        spec_kitty_python("3.2.4")


# -- one daemon ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_real_daemons_answer_health_in_the_shape_of_their_version(
    fleet: DaemonFleet,
) -> None:
    sandbox = fleet.sandbox()
    old_port, new_port = fleet.free_ports(2)
    old = fleet.spawn(sandbox, "3.2.2", old_port)
    new = fleet.spawn(sandbox, "3.2.4", new_port)

    new_health = await wait_healthy(new)
    old_health = await wait_healthy(old)

    assert new_health.daemon_family == "sync"
    assert new_health.package_version == "3.2.4"
    assert new_health.singleton_scope_id == str(sandbox.root)
    assert new_health.owner is not None
    assert (new_health.owner["pid"], new_health.owner["port"]) == (new.pid, new.port)
    assert old_health.daemon_family is None
    assert old_health.package_version == "3.2.2"
    assert old_health.protocol_version == 1
    assert old_health.token == old.token


@pytest.mark.anyio
async def test_daemons_are_spawned_in_the_production_shape(fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox(separate_root=True)
    daemon, _ = await fleet.spawn_healthy(sandbox, "3.2.4")
    python = spec_kitty_python("3.2.4")
    resolved = str(await anyio.Path(python).resolve())

    argv = psutil.Process(daemon.pid).cmdline()
    # Spelled out from the contract document rather than built by the harness under test.
    assert argv == [
        str(python),  # unresolved, as upstream's sys.executable
        "-c",
        "import os\n"
        'os.environ["SPEC_KITTY_SYNC_MINIMAL_IMPORT"] = "1"\n'
        "from specify_cli.sync.daemon import run_sync_daemon\n"
        f"run_sync_daemon({daemon.port}, '{daemon.token}')\n",
        f"--spec-kitty-daemon-root={sandbox.root}",
        f"--spec-kitty-daemon-exec={resolved}",
    ]
    assert os.getsid(daemon.pid) == daemon.pid  # its own session
    environ = psutil.Process(daemon.pid).environ()
    assert environ["HOME"] == str(sandbox.home)
    assert environ["SPEC_KITTY_HOME"] == str(sandbox.root)
    assert environ["SPEC_KITTY_CLI_VERSION"] == "3.2.4"
    assert "SPEC_KITTY_ENABLE_SAAS_SYNC" not in environ
    assert sandbox.log_file.exists()


def test_3_2_2_is_refused_a_root_it_cannot_serve(fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox(separate_root=True)
    with pytest.raises(ValueError, match="ignores SPEC_KITTY_HOME"):
        spawn_orphan(sandbox, "3.2.2", ORPHAN_PORTS.lo)


@pytest.mark.anyio
async def test_token_shutdown_stops_a_daemon_and_reaps_it(fleet: DaemonFleet) -> None:
    daemon, _ = await fleet.spawn_healthy(fleet.sandbox(), "3.2.4")

    assert await stop(daemon) is StopOutcome.SHUTDOWN

    assert daemon.exited()
    assert daemon.returncode == 0
    assert _gone(daemon.identity)
    assert await _port_freed(daemon.port)
    assert await stop(daemon) is StopOutcome.ALREADY_GONE


@pytest.mark.anyio
async def test_a_refused_shutdown_escalates_to_sigterm(fleet: DaemonFleet) -> None:
    daemon, _ = await fleet.spawn_healthy(fleet.sandbox(), "3.2.3")
    wrong_token = dataclasses.replace(daemon, token="0" * 32)

    assert await stop(wrong_token, shutdown_wait=0.5) is StopOutcome.SIGTERM
    assert daemon.exited()


@pytest.mark.anyio
async def test_a_stopped_daemon_is_continued_and_terminated(fleet: DaemonFleet) -> None:
    daemon, _ = await fleet.spawn_healthy(fleet.sandbox(), "3.2.4")
    os.kill(daemon.pid, signal.SIGSTOP)  # our unreaped child: the pid cannot be reused

    assert await stop(daemon, shutdown_wait=0.5) is StopOutcome.SIGTERM
    assert daemon.exited()


@pytest.mark.anyio
async def test_stop_never_signals_a_pid_whose_start_changed() -> None:
    async with await anyio.open_process(
        [sys.executable, "-c", "import time; time.sleep(60)"]
    ) as bystander:
        real = read_identity(bystander.pid)
        assert real is not None
        impostor = RealDaemon(
            pid=bystander.pid,
            port=ORPHAN_PORTS.lo,
            token="0" * 32,
            version=None,
            root=Path("/nonexistent"),
            identity=dataclasses.replace(real, start=real.start + "0"),
        )

        assert await stop(impostor, shutdown_wait=0.2) is StopOutcome.ALREADY_GONE
        assert bystander.returncode is None
        assert real.same_process(read_identity(bystander.pid))
        bystander.kill()  # our own child, by its handle
        await bystander.wait()


# -- the fleet -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_fleet_stops_everything_by_pid_even_daemons_it_never_saw_start() -> None:
    with DaemonFleet() as fleet:
        sandbox = fleet.sandbox()
        tracked, _ = await fleet.spawn_healthy(sandbox, "3.2.4")
        # Re-parented daemons: started by a process that exited, unknown to the fleet.
        report = await _make_orphans_cli(sandbox, "--count", "2")
        strays = [RealDaemon.from_json(entry) for entry in report["orphans"]]
        assert {stray.pid for stray in fleet.strays()} == {stray.pid for stray in strays}
        # A bystander sync daemon of another sandbox is not the fleet's business.
        with DaemonFleet() as other_fleet:
            bystander, _ = await other_fleet.spawn_healthy(other_fleet.sandbox(), "3.2.4")
            outcomes = await fleet.astop_all()
            assert not bystander.exited()
            assert await probe_health(bystander.port, timeout=30) is not None

    assert bystander.exited()
    assert set(outcomes) == {tracked.pid, *(stray.pid for stray in strays)}
    assert set(outcomes.values()) == {StopOutcome.SHUTDOWN}
    assert tracked.returncode == 0
    for daemon in [tracked, *strays]:
        assert _gone(daemon.identity)
        assert await _port_freed(daemon.port)
    assert not sandbox.base.exists()


# -- the orphan mess -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_make_orphans_leaves_healthy_orphans_of_mixed_versions(fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox()
    report = await _make_orphans_cli(sandbox, "--count", "3", "--versions", "3.2.2,3.2.3,3.2.4")
    orphans = [
        fleet.adopt(entry["pid"], start=entry["start"], version=entry["version"])
        for entry in report["orphans"]
    ]

    assert [orphan.version for orphan in orphans] == ["3.2.2", "3.2.3", "3.2.4"]
    assert len({orphan.port for orphan in orphans}) == 3
    for orphan in orphans:
        assert orphan.port in ORPHAN_PORTS
        assert not orphan.is_child  # its spawner exited: re-parented, as in the real world
        health = await wait_healthy(orphan)
        assert health.package_version == orphan.version
        assert health.sync_running  # sync on: they never retire by themselves
    state = read_state_file(sandbox.root)
    assert state is not None
    assert (state.pid, state.port, state.token) == (
        orphans[-1].pid,
        orphans[-1].port,
        orphans[-1].token,
    )
    assert report["state_file"] == state.to_json()

    outcomes = await fleet.astop_all()
    assert set(outcomes.values()) == {StopOutcome.SHUTDOWN}
    assert all(_gone(orphan.identity) for orphan in orphans)


def test_make_orphans_refuses_the_real_home() -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "sks_harness.orphans", "--home", str(Path.home()), "--count", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert refused.returncode == 2
    assert "real HOME" in refused.stderr


# -- upstream's files and commands -----------------------------------------------------------


def test_the_state_file_is_written_like_upstream_under_its_lock(tmp_path: Path) -> None:
    root = tmp_path / ".spec-kitty"
    path = write_state_file(root, 9401, "a" * 32, 4242)

    assert path.read_text() == f"http://localhost:9401\n9401\n{'a' * 32}\n4242\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_state_file(root) == StateRecord("http://localhost:9401", 9401, "a" * 32, 4242)
    with open(root / "sync-daemon.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError):
            write_state_file(root, 9402, "b" * 32, 4243, lock_timeout=0.3)
    assert read_state_file(root) == StateRecord("http://localhost:9401", 9401, "a" * 32, 4242)


def test_the_upstream_cli_runs_inside_the_sandbox(fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox()
    shown = run_upstream_cli(sandbox, "3.2.4", ["--version"], timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "3.2.4" in shown.stdout


@pytest.mark.anyio
async def test_upstream_ensure_spawns_then_reuses_a_daemon(fleet: DaemonFleet) -> None:
    sandbox = fleet.sandbox()

    first = run_upstream_ensure(sandbox, "3.2.4")
    again = run_upstream_ensure(sandbox, "3.2.4", repeat=2)

    assert first.started
    assert first.skipped_reason is None
    assert first.state is not None
    assert first.pid == first.state.pid
    assert again.pid == first.pid
    assert len(again.timings_s) == 2
    [spawned] = fleet.strays()
    assert (spawned.pid, spawned.port) == (first.pid, first.port)
    health = await probe_health(spawned.port, timeout=30)
    assert health is not None
    assert health.package_version == "3.2.4"

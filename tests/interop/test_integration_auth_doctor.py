"""``spec-kitty auth doctor`` of an integrated release shows and cleans up what the supervisor sees.

A throwaway copy of the 3.2.7 venv is integrated; its own ``spec-kitty auth doctor --json``
(exit 1 without a login; the JSON is what counts) runs with a sandbox HOME. The orphans are
real 3.2.2, 3.2.3 and 3.2.4 daemons started outside any supervisor; another HOME's daemon is a
stranger that must survive. Upstream 3.2.7 alone removes 6 of 18 such orphans (3.2.2/3.2.3
daemons share an ``owner.json``, so it calls them ``pid_port_mismatch``).

Each shape family of ``auth doctor``'s module is exercised: 3.2.0-3.2.2 (3.2.2), 3.2.3 (its
own, schema 1), 3.2.4-3.2.5 (3.2.5) and 3.2.6-3.2.7 (3.2.7). The 18-orphan reset runs on
3.2.7 and 3.2.2 with and without a supervisor; 3.2.5 and 3.2.3 reset 6 mixed orphans, one
mode each, to keep the suite's time reasonable.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    ORPHAN_PORTS,
    SPAWN_PORTS,
    SUPERVISOR,
    DaemonFleet,
    PortRange,
    RealDaemon,
    Sandbox,
    SupervisorUnderTest,
    eventually,
    make_orphans,
    read_state_file,
    run_blocking,
    supervisor_pids,
    throwaway_venv,
    write_state_file,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

#: Doctor and sweeps look only at the orphans' sub-range (never a developer's own daemons).
SCAN_ONLY_ORPHAN_PORTS = {"SPEC_KITTY_SUPERVISOR_SCAN_RANGE": str(ORPHAN_PORTS)}


def _integrate(*args: str) -> None:
    result = subprocess.run(
        [*SUPERVISOR, "integrate", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


#: Upstream's schema-1 orphan (3.2.0-3.2.3): four keys of the supervisor's record.
SCHEMA_1_KEYS = ("port", "pid", "package_version", "protocol_version")


#: One release of each shape family of `auth doctor`'s module (see the module docstring).
RELEASES = ["3.2.7", "3.2.2", "3.2.5", "3.2.3"]
SCHEMA_1_RELEASES = {"3.2.2", "3.2.3"}
#: What 3.2.0-3.2.3 cannot do from `auth doctor` (no --force): the command that can.
FORCE_COMMAND = "spec-kitty-supervisor doctor --reset --force"


@pytest.fixture(scope="module")
def spec_kitty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The ``spec-kitty`` command of an integrated throwaway venv of the release."""
    version = request.param
    venv = throwaway_venv(version, tmp_path_factory.mktemp(f"auth-doctor-{version}"))
    python = str(venv / "bin" / "python")
    _integrate("--python", python)
    yield venv / "bin" / "spec-kitty"
    _integrate("--remove", "--python", python)


def _release(spec_kitty: Path) -> str:
    return next(version for version in RELEASES if f"auth-doctor-{version}" in str(spec_kitty))


def _schema(spec_kitty: Path) -> int:
    return 1 if _release(spec_kitty) in SCHEMA_1_RELEASES else 2


def _run_auth_doctor(spec_kitty: Path, sandbox: Sandbox, *args: str, **extra: str) -> str:
    result = subprocess.run(
        [str(spec_kitty), "auth", "doctor", *args],
        # A wide terminal: upstream's human output is not wrapped in the middle of a command.
        env=sandbox.env(
            {
                "SPEC_KITTY_ENABLE_SAAS_SYNC": "1",
                "COLUMNS": "300",
                **SCAN_ONLY_ORPHAN_PORTS,
                **extra,
            }
        ),
        cwd=sandbox.home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    # Exit 1: no login (and orphans, before a reset). The output is what counts.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.stdout


def _auth_doctor(spec_kitty: Path, sandbox: Sandbox, *args: str, **extra: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        _run_auth_doctor(spec_kitty, sandbox, "--json", *args, **extra)
    )
    assert report["schema_version"] == _schema(spec_kitty)
    return report


def _no_hook_failure(sandbox: Sandbox) -> None:
    recorded = sandbox.root / "supervisor" / "integration.json"
    assert not recorded.exists(), recorded.read_text()


def _orphans(sandbox: Sandbox, fleet: DaemonFleet, count: int) -> list[RealDaemon]:
    async def make() -> list[RealDaemon]:
        return await make_orphans(sandbox, count=count, fleet=fleet, state_file=False)

    daemons = run_blocking(make)
    assert {daemon.version for daemon in daemons} == {"3.2.2", "3.2.3", "3.2.4"}
    return daemons


def _stranger(fleet: DaemonFleet) -> RealDaemon:
    """A daemon of another HOME, in the scanned range: never ours to stop."""
    other = fleet.sandbox()

    async def make() -> list[RealDaemon]:
        return await make_orphans(other, count=1, versions=["3.2.4"], fleet=fleet)

    [daemon] = run_blocking(make)
    return daemon


def _supervisor(sandbox: Sandbox) -> SupervisorUnderTest:
    return SupervisorUnderTest(sandbox, settings=SCAN_ONLY_ORPHAN_PORTS)


def _start_past_its_start_up_sweep(supervisor: SupervisorUnderTest, fleet: DaemonFleet) -> None:
    """Start the supervisor and wait until its start-up sweep has acted.

    That sweep runs beside serving, on what it observed then: orphans made just after the
    start could be among them on a busy machine. A canary orphan made before the start is
    stopped by it; once the canary is gone that sweep's observation is over, and the next
    sweep is ``sweep_seconds`` (600 s) away, so the test's own orphans stay until it acts.
    """

    async def make() -> list[RealDaemon]:
        return await make_orphans(
            supervisor.sandbox, count=1, versions=["3.2.4"], fleet=fleet, state_file=False
        )

    [canary] = run_blocking(make)
    supervisor.start()
    eventually(canary.exited, what="the start-up sweep to stop the canary orphan")


def _token_upstream_would_not_match(sandbox: Sandbox) -> None:
    """Alter ``R/sync-daemon``'s token: upstream's own reading would call the daemon unhealthy.

    (Upstream compares the token its health answer carries with the file's.) The supervisor
    leaves the file alone, since it still names its current daemon.
    """
    record = read_state_file(sandbox.root)
    assert record is not None
    write_state_file(sandbox.root, record.port, "not-the-daemons-token", record.pid)


@pytest.mark.parametrize("spec_kitty", RELEASES, indirect=True)
def test_auth_doctor_shows_the_supervisors_daemon_and_orphan_records(
    spec_kitty: Path, fleet: DaemonFleet
) -> None:
    sandbox = fleet.sandbox()
    # Its doctor also scans where it spawns: its daemon's own health answer is a listener.
    scan = PortRange(min(ORPHAN_PORTS.lo, SPAWN_PORTS.lo), max(ORPHAN_PORTS.hi, SPAWN_PORTS.hi))
    with SupervisorUnderTest(
        sandbox, settings={"SPEC_KITTY_SUPERVISOR_SCAN_RANGE": str(scan)}
    ) as supervisor:
        _start_past_its_start_up_sweep(supervisor, fleet)
        orphans = _orphans(sandbox, fleet, 3)
        current = supervisor.cli_json("ensure", "--python", str(spec_kitty.parent / "python"))
        _token_upstream_would_not_match(sandbox)
        own = json.loads(supervisor.cli("doctor", "--json").stdout)
        report = _auth_doctor(spec_kitty, sandbox)
        upstreams = _auth_doctor(spec_kitty, sandbox, SPEC_KITTY_SUPERVISOR_DISABLE="1")
    # The daemon summary is the supervisor's current daemon, healthy as the supervisor holds
    # it; upstream's own reading of the altered R/sync-daemon (the hook disabled) says not.
    daemon = current["daemon"]
    assert (upstreams["daemon"]["pid"], upstreams["daemon"]["active"]) == (daemon["pid"], False)
    assert {key: report["daemon"][key] for key in ("active", "pid", "port", "package_version")} == {
        "active": True,
        "pid": daemon["pid"],
        "port": daemon["port"],
        "package_version": _release(spec_kitty),
    }
    [heard] = [entry for entry in own["listeners"] if entry["pid"] == daemon["pid"]]
    assert report["daemon"]["protocol_version"] == heard["protocol_version"] is not None
    records = {entry["port"]: entry for entry in report["orphans"]}
    assert sorted(records) == sorted(daemon.port for daemon in orphans)
    supervisors = {entry["port"]: entry for entry in own["orphans"]}
    if _schema(spec_kitty) == 1:
        # 3.2.2's own four keys, taken from the supervisor's records.
        supervisors = {
            port: {key: entry[key] for key in SCHEMA_1_KEYS} for port, entry in supervisors.items()
        }
    else:
        # Upstream 3.2.7 alone calls the 3.2.2/3.2.3 daemons pid_port_mismatch.
        assert all(entry["cleanup_class"] == "safe_auto" for entry in records.values())
    # Record for record what the supervisor classified, in the release's own schema.
    assert supervisors == records
    _no_hook_failure(sandbox)


@pytest.mark.parametrize("spec_kitty", ["3.2.7", "3.2.3"], indirect=True)
def test_without_a_supervisor_auth_doctors_daemon_is_what_the_supervisors_doctor_sees(
    spec_kitty: Path, fleet: DaemonFleet
) -> None:
    sandbox = fleet.sandbox()
    with _supervisor(sandbox) as supervisor:  # never started: only to find any that would be

        async def make() -> list[RealDaemon]:
            return await make_orphans(sandbox, count=1, versions=["3.2.4"], fleet=fleet)

        [recorded] = run_blocking(make)  # R/sync-daemon names it
        _token_upstream_would_not_match(sandbox)
        own = json.loads(supervisor.cli("doctor", "--json").stdout)
        report = _auth_doctor(spec_kitty, sandbox)
        upstreams = _auth_doctor(spec_kitty, sandbox, SPEC_KITTY_SUPERVISOR_DISABLE="1")
        assert supervisor_pids(sandbox.root) == []  # neither doctor started one
    assert (upstreams["daemon"]["pid"], upstreams["daemon"]["active"]) == (recorded.pid, False)
    assert own["supervisor"] is None
    [listener] = [entry for entry in own["listeners"] if entry["is_recorded_singleton"]]
    # The recorded daemon, active because its self-report provably comes from its listener
    # (upstream's own reading of the altered file would say "not healthy").
    assert report["daemon"] == {
        "active": True,
        "pid": recorded.pid,
        "port": recorded.port,
        "package_version": "3.2.4",
        "protocol_version": listener["protocol_version"],
    }
    assert listener["self_report_matches_listener"] is True
    assert report["orphans"] == []
    _no_hook_failure(sandbox)


@pytest.mark.parametrize(
    ("spec_kitty", "count", "with_supervisor"),
    [
        ("3.2.7", 18, True),
        ("3.2.7", 18, False),
        ("3.2.2", 18, True),
        ("3.2.2", 18, False),
        ("3.2.5", 6, False),
        ("3.2.3", 6, True),
    ],
    ids=lambda value: {True: "supervisor", False: "no-supervisor"}.get(value, str(value)),
    indirect=["spec_kitty"],
)
def test_auth_doctor_reset_removes_all_mixed_orphans_and_no_stranger(
    spec_kitty: Path, fleet: DaemonFleet, count: int, with_supervisor: bool
) -> None:
    sandbox = fleet.sandbox()
    stranger = _stranger(fleet)
    with _supervisor(sandbox) as supervisor:
        if with_supervisor:
            _start_past_its_start_up_sweep(supervisor, fleet)
        orphans = _orphans(sandbox, fleet, count)
        report = _auth_doctor(spec_kitty, sandbox, "--reset")
        if _schema(spec_kitty) == 1:
            # Upstream's own human output, run after the reset: what is left, and who can stop it.
            shown = _run_auth_doctor(spec_kitty, sandbox)
        assert (supervisor_pids(sandbox.root) != []) is with_supervisor  # doctor started none
    _no_hook_failure(sandbox)
    assert [daemon.pid for daemon in orphans if not daemon.exited()] == []
    # The other HOME's daemon is listed, never stopped without --force (upstream 3.2.0-3.2.3
    # alone stop daemons of every HOME).
    assert not stranger.exited()
    assert [entry["pid"] for entry in report["orphans"]] == [stranger.pid]
    if _schema(spec_kitty) == 1:
        # Schema 1 has no reset_result and no --force: the orphan finding names the command.
        [finding] = [entry for entry in report["findings"] if entry["id"] == "F-002"]
        assert finding["remediation"]["command"] == FORCE_COMMAND
        assert "operator_required (cross_root)" in finding["remediation"]["description"]
        assert f"Run: {FORCE_COMMAND}" in shown
        assert str(stranger.port) in shown
        return
    assert report["orphans"][0]["cleanup_class"] == "operator_required"
    swept = report["reset_result"]["swept"]
    assert sorted(entry["pid"] for entry in swept) == sorted(daemon.pid for daemon in orphans)
    assert report["reset_result"]["failed"] == []
    assert [entry["pid"] for entry in report["reset_result"]["skipped"]] == [stranger.pid]

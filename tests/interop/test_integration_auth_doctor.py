"""``spec-kitty auth doctor`` of an integrated release shows and cleans up what the supervisor sees.

A throwaway copy of the 3.2.7 venv is integrated; its own ``spec-kitty auth doctor --json``
(exit 1 without a login; the JSON is what counts) runs with a sandbox HOME. The orphans are
real 3.2.2, 3.2.3 and 3.2.4 daemons started outside any supervisor; another HOME's daemon is a
stranger that must survive. Upstream 3.2.7 alone removes 6 of 18 such orphans (3.2.2/3.2.3
daemons share an ``owner.json``, so it calls them ``pid_port_mismatch``).
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
    SUPERVISOR,
    DaemonFleet,
    RealDaemon,
    Sandbox,
    SupervisorUnderTest,
    make_orphans,
    run_blocking,
    supervisor_pids,
    throwaway_venv,
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


@pytest.fixture(scope="module", params=["3.2.7", "3.2.2"])
def spec_kitty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The ``spec-kitty`` command of an integrated throwaway venv of the release."""
    venv = throwaway_venv(request.param, tmp_path_factory.mktemp("auth-doctor"))
    python = str(venv / "bin" / "python")
    _integrate("--python", python)
    yield venv / "bin" / "spec-kitty"
    _integrate("--remove", "--python", python)


def _schema(spec_kitty: Path) -> int:
    return 1 if "3.2.2" in str(spec_kitty) else 2


def _auth_doctor(spec_kitty: Path, sandbox: Sandbox, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(spec_kitty), "auth", "doctor", "--json", *args],
        env=sandbox.env({"SPEC_KITTY_ENABLE_SAAS_SYNC": "1", **SCAN_ONLY_ORPHAN_PORTS}),
        cwd=sandbox.home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    # Exit 1: no login (and orphans, before a reset). The JSON is what counts.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
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


def test_auth_doctor_shows_the_supervisors_daemon_and_orphan_records(
    spec_kitty: Path, fleet: DaemonFleet
) -> None:
    sandbox = fleet.sandbox()
    with _supervisor(sandbox) as supervisor:
        supervisor.start()
        orphans = _orphans(sandbox, fleet, 3)
        current = supervisor.cli_json("ensure", "--python", str(spec_kitty.parent / "python"))
        own = json.loads(supervisor.cli("doctor", "--json").stdout)
        report = _auth_doctor(spec_kitty, sandbox)
    assert report["daemon"]["pid"] == current["daemon"]["pid"]
    assert report["daemon"]["active"] is True
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


@pytest.mark.parametrize("with_supervisor", [True, False], ids=["supervisor", "no-supervisor"])
def test_auth_doctor_reset_removes_all_18_mixed_orphans_and_no_stranger(
    spec_kitty: Path, fleet: DaemonFleet, with_supervisor: bool
) -> None:
    sandbox = fleet.sandbox()
    stranger = _stranger(fleet)
    with _supervisor(sandbox) as supervisor:
        if with_supervisor:
            supervisor.start()
        orphans = _orphans(sandbox, fleet, 18)
        report = _auth_doctor(spec_kitty, sandbox, "--reset")
        assert (supervisor_pids(sandbox.root) != []) is with_supervisor  # doctor started none
    _no_hook_failure(sandbox)
    assert [daemon.pid for daemon in orphans if not daemon.exited()] == []
    # The other HOME's daemon is listed, never stopped without --force (upstream 3.2.2 alone
    # stops daemons of every HOME).
    assert not stranger.exited()
    assert [entry["pid"] for entry in report["orphans"]] == [stranger.pid]
    if _schema(spec_kitty) == 1:
        return  # schema 1 has no reset_result
    assert report["orphans"][0]["cleanup_class"] == "operator_required"
    swept = report["reset_result"]["swept"]
    assert sorted(entry["pid"] for entry in swept) == sorted(daemon.pid for daemon in orphans)
    assert report["reset_result"]["failed"] == []
    assert [entry["pid"] for entry in report["reset_result"]["skipped"]] == [stranger.pid]

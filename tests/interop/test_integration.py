"""Released spec-kitty CLIs (3.2.2, 3.2.4, 3.2.7 from PyPI), integrated, use the supervisor.

Every venv here is a throwaway copy (``sks_harness.throwaway_venv``). spec-kitty's own
``ensure_sync_daemon_running(intent=DaemonIntent.REMOTE_REQUIRED)`` is called the way its
``sync/events.py`` calls it, from a console script named ``spec-kitty`` (the command's own
process, the only one the hook lets start a supervisor), with ``SPEC_KITTY_ENABLE_SAAS_SYNC=1``
and a sandbox HOME.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    SPAWN_PORTS,
    SUPERVISOR,
    DaemonFleet,
    PortRange,
    Sandbox,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    site_packages,
    supervisor_pids,
    throwaway_venv,
    tree_snapshot,
)
from spec_kitty_supervisor._integrate import apply, inspect_interpreter, plan

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

RELEASES = ["3.2.2", "3.2.4", "3.2.7"]
#: What ``auth doctor`` scans and sweeps with: schema 1 up to 3.2.3, schema 2 from 3.2.4.
ORPHAN_FUNCTIONS = {
    "3.2.2": ["enumerate_orphans", "sweep_orphans"],
    "3.2.4": ["enumerate_identity_records", "reset_orphans"],
    "3.2.7": ["enumerate_identity_records", "reset_orphans"],
}
#: What is wrapped in ``auth doctor``'s own module: its daemon summary, and 3.2.0-3.2.3's
#: findings (their orphan finding names the command that can stop what --reset leaves).
AUTH_DOCTOR_FUNCTIONS = {
    "3.2.2": ["_compute_findings", "_read_daemon_summary"],
    "3.2.4": ["_read_daemon_summary"],
    "3.2.7": ["_read_daemon_summary"],
}

DRIVER = """\
import json, sys
from pathlib import Path
if "--stop" in sys.argv:
    from specify_cli.sync.daemon import stop_sync_daemon
    print(json.dumps({"stop": list(stop_sync_daemon())}))
    raise SystemExit(0)
from specify_cli.sync.daemon import DaemonIntent, ensure_sync_daemon_running
outcome = ensure_sync_daemon_running(intent=DaemonIntent.REMOTE_REQUIRED)
answer = {
    "started": outcome.started,
    "skipped_reason": outcome.skipped_reason,
    "pid": outcome.pid,
    "type": type(outcome).__module__ + "." + type(outcome).__qualname__,
}
if "--preflight" in sys.argv:
    from specify_cli.sync.preflight import run_preflight
    result = run_preflight(repo_root=Path.cwd(), require_auth=False)
    answer["preflight_ok"] = result.ok
    answer["mismatches"] = [mismatch.field for mismatch in result.mismatches]
print(json.dumps(answer))
"""


def _integrate(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [*SUPERVISOR, "integrate", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _driver(venv: Path, folder: Path) -> Path:
    """A console script named ``spec-kitty`` for ``venv``, as pip writes one."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "spec-kitty"
    script.write_text(f"#!{venv / 'bin' / 'python'}\n{DRIVER}")
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def integrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Throwaway venvs of each release, integrated with this installation; drivers for each."""
    base = tmp_path_factory.mktemp("integrated")
    drivers = {}
    venvs = []
    for version in RELEASES:
        venv = throwaway_venv(version, base)
        venvs.append(venv)
        drivers[version] = _driver(venv, base / "drivers" / version)
    pythons = [arg for venv in venvs for arg in ("--python", str(venv / "bin" / "python"))]
    document = _integrate(*pythons)
    assert [entry["action"] for entry in document["interpreters"]] == ["installed"] * 3
    for entry, version in zip(document["interpreters"], RELEASES, strict=True):
        assert entry["hook"] == {
            "patched": [
                "ensure_sync_daemon_running",
                "stop_sync_daemon",
                "restart_daemon",
                *ORPHAN_FUNCTIONS[version],
                *AUTH_DOCTOR_FUNCTIONS[version],
            ],
            "unpatched": None,
        }
    yield drivers
    _integrate("--remove", *pythons)


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


@pytest.fixture
def sandbox(fleet: DaemonFleet) -> Iterator[Sandbox]:
    created = fleet.sandbox()
    # Supervisors the hooks start are found by their argv and stopped by pid.
    with SupervisorUnderTest(created):
        yield created


def _env(sandbox: Sandbox, **extra: str) -> dict[str, str]:
    return sandbox.env(
        {
            "SPEC_KITTY_ENABLE_SAAS_SYNC": "1",
            "SPEC_KITTY_SUPERVISOR_PORT_RANGE": str(SPAWN_PORTS),
            **extra,
        }
    )


def _run(driver: Path, sandbox: Sandbox, *args: str, **extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(driver), *args],
        env=_env(sandbox, **extra),
        cwd=sandbox.home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing printed by the hook
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _status(sandbox: Sandbox) -> dict[str, Any]:
    result = subprocess.run(
        [*SUPERVISOR, "status", "--json", "--root", str(sandbox.root)],
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def _early_spawns(sandbox: Sandbox) -> list[tuple[bool, int | None]]:
    """What each supervisor's first stage did, from ``R/supervisor/supervisor.log``."""
    log = (sandbox.root / "supervisor" / "supervisor.log").read_text(errors="replace")
    entries = [json.loads(line) for line in log.splitlines() if '"early_spawn"' in line]
    return [(e["spawned"], e["pid"]) for e in entries if e.get("event") == "early_spawn"]


def _recorded_pid(sandbox: Sandbox) -> int:
    return int(sandbox.state_file.read_text().split()[3])


@pytest.mark.parametrize("version", RELEASES)
def test_an_integrated_release_auto_starts_the_supervisor_and_gets_its_daemon(
    integrated: dict[str, Path], sandbox: Sandbox, version: str
) -> None:
    answer = _run(integrated[version], sandbox)
    assert answer["type"] == "specify_cli.sync.daemon.DaemonStartOutcome"
    assert (answer["started"], answer["skipped_reason"]) == (True, None)
    [supervisor] = supervisor_pids(sandbox.root)
    current = [d for d in _status(sandbox)["daemons"] if d["role"] == "current"]
    assert [(d["pid"], d["origin"], d["package_version"]) for d in current] == [
        (answer["pid"], "spawned", version)
    ]
    assert _recorded_pid(sandbox) == answer["pid"]  # R/sync-daemon names that daemon
    assert daemon_pids(sandbox.root) == [answer["pid"]]
    # The supervisor spawned under R/sync-daemon.lock while the caller waited for its answer:
    # had the caller held that lock, the spawn would have failed and the hook fallen back
    # to upstream, which it records.
    assert not (sandbox.root / "supervisor" / "integration.json").exists()
    # The hook handed its ensure to the supervisor it started, which spawned that daemon
    # before its heavy imports (ADR 0013).
    assert _early_spawns(sandbox) == [(True, answer["pid"])]
    again = _run(integrated[version], sandbox)
    assert again["pid"] == answer["pid"]
    assert supervisor_pids(sandbox.root) == [supervisor]


@pytest.mark.parametrize(
    ("version", "env", "reason"),
    [
        ("3.2.2", {"SPEC_KITTY_ENABLE_SAAS_SYNC": ""}, "rollout_disabled"),
        ("3.2.7", {"SPEC_KITTY_ENABLE_SAAS_SYNC": ""}, "rollout_disabled"),
        ("3.2.7", {"SPEC_KITTY_SYNC_DISABLE": "1"}, "SPEC_KITTY_SYNC_DISABLE is set"),
    ],
)
def test_the_releases_own_skip_decision_starts_nothing(
    integrated: dict[str, Path], sandbox: Sandbox, version: str, env: dict[str, str], reason: str
) -> None:
    answer = _run(integrated[version], sandbox, **env)
    assert (answer["started"], answer["skipped_reason"], answer["pid"]) == (False, reason, None)
    assert supervisor_pids(sandbox.root) == []
    assert daemon_pids(sandbox.root) == []


def test_an_integrated_stop_retires_the_supervisors_daemon_and_the_supervisor_stays(
    integrated: dict[str, Path], sandbox: Sandbox
) -> None:
    daemon = _run(integrated["3.2.7"], sandbox)["pid"]
    [supervisor] = supervisor_pids(sandbox.root)
    assert _run(integrated["3.2.7"], sandbox, "--stop") == {"stop": [True, "Sync daemon stopped."]}
    assert daemon_pids(sandbox.root) == []
    assert not sandbox.state_file.exists()
    assert supervisor_pids(sandbox.root) == [supervisor]
    assert _status(sandbox)["daemons"] == []
    retired = [event for event in _events(sandbox) if event["kind"] == "retired"]
    assert [event["pid"] for event in retired] == [daemon]
    # Nothing current any more: upstream's own stop answers as it does without a daemon.
    assert _run(integrated["3.2.7"], sandbox, "--stop") == {
        "stop": [False, "No sync daemon metadata found."]
    }


def test_twenty_integrated_processes_at_once_end_with_one_supervisor_and_one_daemon(
    integrated: dict[str, Path], sandbox: Sandbox
) -> None:
    processes = [
        subprocess.Popen(
            [str(integrated["3.2.7"])],
            env=_env(sandbox),
            cwd=sandbox.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    answers = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr
            answers.append(json.loads(stdout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    pids = {answer["pid"] for answer in answers}
    assert len(pids) == 1
    assert all(answer["started"] for answer in answers)
    assert len(supervisor_pids(sandbox.root)) == 1
    assert daemon_pids(sandbox.root) == list(pids)
    # Every one of them was answered by the supervisor: none fell back to upstream.
    assert not (sandbox.root / "supervisor" / "integration.json").exists()


@pytest.mark.parametrize("version", RELEASES)
def test_with_no_supervisor_startable_the_release_behaves_as_upstream(
    tmp_path: Path, sandbox: Sandbox, version: str
) -> None:
    venv = throwaway_venv(version, tmp_path)
    apply(plan(inspect_interpreter(str(venv / "bin" / "python")), ["/nonexistent/sks"]))
    driver = _driver(venv, tmp_path / "driver")
    answer = _run(driver, sandbox)
    # Upstream's own lifecycle ran: it spawned its daemon and recorded it.
    assert (answer["started"], answer["skipped_reason"]) == (True, None)
    assert answer["pid"] == _recorded_pid(sandbox)
    assert daemon_pids(sandbox.root) == [answer["pid"]]
    assert supervisor_pids(sandbox.root) == []
    record = json.loads((sandbox.root / "supervisor" / "integration.json").read_text())
    assert record["failure"]["count"] == 1
    assert "/nonexistent/sks is gone" in record["failure"]["last_error"]
    skipped = _run(driver, sandbox, SPEC_KITTY_ENABLE_SAAS_SYNC="")
    assert (skipped["started"], skipped["skipped_reason"]) == (False, "rollout_disabled")


def test_remove_leaves_site_packages_exactly_as_it_was(tmp_path: Path) -> None:
    venv = throwaway_venv("3.2.7", tmp_path)
    python = str(venv / "bin" / "python")
    importing = [python, "-c", "import specify_cli.sync.daemon"]
    subprocess.run(importing, check=True, capture_output=True, timeout=600, cwd=tmp_path)
    before = tree_snapshot(site_packages(venv))
    assert _integrate("--python", python)["interpreters"][0]["action"] == "installed"
    assert _integrate("--python", python)["interpreters"][0]["action"] == "unchanged"
    timed = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    # The .pth line imports nothing at interpreter start: the hook loads with spec-kitty only.
    assert "spec_kitty_supervisor_hook" not in timed.stderr
    loaded = subprocess.run(
        [*importing[:2], "import sys, specify_cli.sync.daemon; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert "spec_kitty_supervisor_hook" in loaded.stdout
    removed = _integrate("--remove", "--python", python)["interpreters"][0]
    assert removed["action"] == "removed"
    assert tree_snapshot(site_packages(venv)) == before


BINDINGS = """\
import json, re, sys
from pathlib import Path
import specify_cli
sys.argv = ["spec-kitty", "auth", "doctor", "--json"]
try:
    specify_cli.main()
except SystemExit:
    pass
import importlib
package = Path(specify_cli.__file__).parent
NAMES = ("ensure_sync_daemon_running", "stop_sync_daemon")
either = "(" + "|".join(NAMES) + ")"
naming = re.compile(r"import[^\\n]*\\b" + either + r"\\b|^\\s+" + either + ",$", re.M)
for path in package.rglob("*.py"):
    if naming.search(path.read_text(errors="replace")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        try:
            importlib.import_module(name)
        except Exception:
            pass
daemon = sys.modules["specify_cli.sync.daemon"]
originals = {name: getattr(daemon, name).__wrapped__ for name in NAMES}
stale, wrapped = [], 0
for module in list(sys.modules.values()):
    for key, value in list(getattr(module, "__dict__", {}).items()):
        if key in originals and value is originals[key]:
            stale.append(module.__name__)
        if key in originals and value is getattr(daemon, key):
            wrapped += 1
print(json.dumps({"stale": stale, "wrapped": wrapped}))
"""


@pytest.mark.parametrize("version", RELEASES)
def test_after_the_cli_ran_every_binding_of_a_wrapped_name_is_the_wrapper(
    integrated: dict[str, Path], sandbox: Sandbox, version: str
) -> None:
    python = integrated[version].read_text().splitlines()[0][2:]
    result = subprocess.run(
        [python, "-c", BINDINGS],
        env=sandbox.env(),
        cwd=sandbox.home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["stale"] == []
    # daemon itself, restart, _auth_doctor, dashboard handlers, ...: more than the module.
    assert answer["wrapped"] > 2


def test_the_hook_module_is_not_this_projects_package() -> None:
    # Nothing of this project is imported into spec-kitty: the hook is self-contained.
    from spec_kitty_supervisor._integrate import hook_source

    source = hook_source(["/x"])
    assert "spec_kitty_supervisor_client" not in source.replace(
        "spec_kitty_supervisor_client/_hook.py", ""
    )
    assert "import pydantic" not in source
    assert "import h11" not in source
    assert sys.version_info >= (3, 11)


def _events(sandbox: Sandbox) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*SUPERVISOR, "events", "--json", "--limit", "1000", "--root", str(sandbox.root)],
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    events: list[dict[str, Any]] = json.loads(result.stdout)["events"]
    return events


CLI_IDENTITY = {"daemon_package_version", "daemon_source_path"}


def test_3_2_4_and_3_2_7_alternating_never_thrash_and_preflight_is_as_adr_0003_says(
    integrated: dict[str, Path], sandbox: Sandbox
) -> None:
    answers = [
        (version, _run(integrated[version], sandbox, "--preflight"))
        for _ in range(10)
        for version in ("3.2.4", "3.2.7")
    ]
    # 3.2.4 first gets its own daemon, 3.2.7 upgrades it once (make-before-break); from then
    # on both get the same 3.2.7 daemon: no kill/spawn cycle.
    upgraded = answers[1][1]["pid"]
    assert answers[0][1]["pid"] != upgraded
    assert {answer["pid"] for _, answer in answers[1:]} == {upgraded}
    assert [event["kind"] for event in _events(sandbox)].count("spawned") == 2
    assert daemon_pids(sandbox.root) == [upgraded]
    # ADR 0003: keep-newer wins; 3.2.7's preflight has no CLI-identity mismatch, 3.2.4's
    # refuses while the newer daemon runs. (No login in the sandbox: every preflight also
    # reports the server url, as upstream alone does.)
    assert not CLI_IDENTITY & set(answers[0][1]["mismatches"])
    for version, answer in answers[1:]:
        assert answer["preflight_ok"] is False
        if version == "3.2.7":
            assert not CLI_IDENTITY & set(answer["mismatches"])
        else:
            assert set(answer["mismatches"]) >= CLI_IDENTITY
    # Upstream's remediation, run with the older CLI, gives it a daemon of its own version.
    spec_kitty = Path(integrated["3.2.4"].read_text().splitlines()[0][2:]).parent / "spec-kitty"
    restart = subprocess.run(
        [str(spec_kitty), "doctor", "restart-daemon"],
        env=_env(sandbox),
        cwd=sandbox.home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    after = _run(integrated["3.2.4"], sandbox, "--preflight")
    assert not CLI_IDENTITY & set(after["mismatches"])
    assert after["pid"] != upgraded
    current = [d for d in _status(sandbox)["daemons"] if d["role"] == "current"]
    assert [(d["pid"], d["package_version"]) for d in current] == [(after["pid"], "3.2.4")]


def _spec_kitty(driver: Path) -> Path:
    """The release's own ``spec-kitty`` console script, next to the driver's interpreter."""
    return Path(driver.read_text().splitlines()[0][2:]).parent / "spec-kitty"


@pytest.mark.parametrize("version", ["3.2.7", "3.2.4", "3.2.2"])
def test_an_integrated_restart_daemon_replaces_the_daemon_make_before_break(
    integrated: dict[str, Path], sandbox: Sandbox, version: str
) -> None:
    # 3.2.6+ restart with force_explicit; 3.2.0-3.2.5 without (and 3.2.0-3.2.2 keep their
    # root in $HOME/.spec-kitty).
    old = _run(integrated[version], sandbox)["pid"]
    [supervisor] = supervisor_pids(sandbox.root)
    restart = subprocess.run(
        [str(_spec_kitty(integrated[version])), "doctor", "restart-daemon", "--json"],
        env=_env(sandbox),
        cwd=sandbox.home,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    result = json.loads(restart.stdout.strip().splitlines()[-1])
    new = result["new_pid"]
    assert result == {
        "status": "restarted",
        "exit_code": 0,
        "previous_pid": old,
        "new_pid": new,
        "error": None,
    }
    assert new != old
    current = [d for d in _status(sandbox)["daemons"] if d["role"] == "current"]
    assert [(d["pid"], d["package_version"], d["state"]) for d in current] == [
        (new, version, "healthy")
    ]
    assert _recorded_pid(sandbox) == new
    eventually(lambda: daemon_pids(sandbox.root) == [new], what="the old daemon to be retired")
    # Make-before-break, from the ledger: the new daemon was spawned (healthy: the supervisor
    # records `spawned` only after its health answered) before the old one was retired, so
    # at no moment was there no daemon. Stop-then-ensure would retire first.
    events = [(event["kind"], event.get("pid")) for event in _events(sandbox)]
    assert events.index(("spawned", new)) < events.index(("retired", old))
    assert ("retired", new) not in events
    assert supervisor_pids(sandbox.root) == [supervisor]
    assert not (sandbox.root / "supervisor" / "integration.json").exists()

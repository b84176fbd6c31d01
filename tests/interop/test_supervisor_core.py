"""The supervisor and its client on real spec-kitty daemons from PyPI.

Each test gets a sandbox (a throwaway HOME and root), a supervisor harness that stops every
supervisor it saw by pid, and a daemon fleet that stops every daemon of the sandbox by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    PortRange,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    probe_health,
    read_identity,
    run_blocking,
    spec_kitty_python,
)
from spec_kitty_supervisor_client import (
    InvalidRequest,
    SupervisorClient,
    socket_path_for_root,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _health(port: int) -> dict[str, object]:
    answer = run_blocking(probe_health, port, 2.0)
    assert answer is not None, f"no health on port {port}"
    return answer.payload


def _ensure(sup: SupervisorUnderTest, version: str) -> dict[str, object]:
    python = str(spec_kitty_python(version))
    answer: dict[str, object] = sup.cli_json("ensure", "--python", python)
    return answer


@pytest.mark.parametrize("version", ["3.2.4", "3.2.7"])
def test_ensure_from_a_cold_root_gives_one_healthy_daemon_then_reuses_it(
    sup: SupervisorUnderTest, version: str
) -> None:
    first = _ensure(sup, version)
    assert first["action"] == "spawned"
    daemon = first["daemon"]
    assert isinstance(daemon, dict)
    assert "token" not in daemon  # only with --show-token
    assert daemon["url"] == f"http://127.0.0.1:{daemon['port']}"
    assert daemon["port"] in SPAWN_PORTS
    health = _health(int(daemon["port"]))
    assert health["package_version"] == version
    assert health["singleton_scope_id"] == str(sup.root)
    with SupervisorClient(sup.root, autostart=False) as client:
        python = str(spec_kitty_python(version))
        answers = [client.ensure(python, version, env=sup.env()) for _ in range(20)]
    assert {a.action for a in answers} == {"reused"}
    assert {a.daemon.pid for a in answers} == {daemon["pid"]}
    assert daemon_pids(sup.root) == [daemon["pid"]]
    assert len(sup.pids()) == 1


def test_the_legacy_state_file_names_the_current_daemon(sup: SupervisorUnderTest) -> None:
    answer = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")), "--show-token")
    daemon = answer["daemon"]
    lines = (sup.root / "sync-daemon").read_text().splitlines()
    assert lines == [
        f"http://localhost:{daemon['port']}",
        str(daemon["port"]),
        daemon["token"],
        str(daemon["pid"]),
    ]
    assert stat.S_IMODE((sup.root / "sync-daemon").stat().st_mode) == 0o600


def test_thirty_concurrent_first_calls_make_one_supervisor_and_one_daemon(
    sup: SupervisorUnderTest,
) -> None:
    python = str(spec_kitty_python("3.2.4"))
    script = (
        "import json, sys\n"
        "from spec_kitty_supervisor_client import ensure_sync_daemon\n"
        "a = ensure_sync_daemon(python=sys.argv[1], version='3.2.4', root=sys.argv[2])\n"
        "print(json.dumps({'action': a.action, 'pid': a.daemon.pid}))\n"
    )

    def one_client(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, python, str(sup.root)],
            env=sup.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one_client, range(30)))
    sup.remember()
    failures = [r.stderr for r in results if r.returncode != 0]
    assert not failures, failures[0]
    answers = [json.loads(r.stdout) for r in results]
    assert len({a["pid"] for a in answers}) == 1
    assert sorted(a["action"] for a in answers).count("spawned") == 1
    assert len(sup.pids()) == 1
    assert len(daemon_pids(sup.root)) == 1


def test_a_second_supervisor_on_the_same_root_exits_0_naming_the_owner(
    sup: SupervisorUnderTest,
) -> None:
    owner = sup.start()
    second = sup.cli("run", timeout=30)
    assert second.returncode == 0
    assert f"pid {owner}" in second.stderr
    assert sup.pids() == [owner]


def test_two_roots_are_isolated(fleet: DaemonFleet) -> None:
    with (
        SupervisorUnderTest(fleet.sandbox()) as one,
        SupervisorUnderTest(fleet.sandbox(separate_root=True)) as two,
    ):
        a = _ensure(one, "3.2.4")["daemon"]
        b = _ensure(two, "3.2.7")["daemon"]
        assert isinstance(a, dict)
        assert isinstance(b, dict)
        assert a["pid"] != b["pid"]
        assert one.pids() != two.pids()
        assert one.cli("stop", "--children").returncode == 0
        assert daemon_pids(one.root) == []
        assert daemon_pids(two.root) == [b["pid"]]
        status = two.cli_json("status")
        assert [d["pid"] for d in status["daemons"]] == [b["pid"]]


def test_the_socket_is_0600_in_a_0700_folder(sup: SupervisorUnderTest) -> None:
    sup.start()
    path = socket_path_for_root(sup.root)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_daemon_killed_from_outside_is_replaced(
    sup: SupervisorUnderTest,
) -> None:
    first = _ensure(sup, "3.2.4")["daemon"]
    assert isinstance(first, dict)
    os.kill(int(first["pid"]), signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        status = sup.cli_json("status")
        current = [d for d in status["daemons"] if d["role"] == "current"]
        if current and current[0]["pid"] != first["pid"] and current[0]["state"] == "healthy":
            return dict(current[0])
        return None

    # The exit is seen at once through its pidfd; the restart follows its backoff.
    replacement = eventually(replaced, what="a healthy replacement of the killed daemon")
    events = sup.cli_json("events")["events"]
    died = [e for e in events if e["kind"] == "died"]
    assert died
    assert died[0]["pid"] == first["pid"]
    assert "signal 9" in died[0]["reason"]
    assert daemon_pids(sup.root) == [replacement["pid"]]


def test_a_corrupt_state_file_does_not_stop_the_supervisor(sup: SupervisorUnderTest) -> None:
    folder = sup.root / "supervisor"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "state.json").write_text("{ this is not json")
    sup.start()
    assert sup.cli_json("status")["supervisor"] is not None
    assert (folder / "state.json.corrupt-0").read_text() == "{ this is not json"
    events = sup.cli_json("events")["events"]
    assert any(e["kind"] == "state_corrupt" for e in events)
    assert _ensure(sup, "3.2.4")["action"] == "spawned"


def test_stop_leaves_daemons_for_readoption(sup: SupervisorUnderTest) -> None:
    daemon = _ensure(sup, "3.2.4")["daemon"]
    assert isinstance(daemon, dict)
    assert sup.cli("stop").returncode == 0
    assert sup.pids() == []
    assert daemon_pids(sup.root) == [daemon["pid"]]
    again = _ensure(sup, "3.2.4")
    assert again["action"] == "adopted"
    assert again["daemon"]["pid"] == daemon["pid"]
    assert again["daemon"]["origin"] == "adopted"


def test_stop_children_stops_daemons_gracefully_and_clears_the_state_file(
    sup: SupervisorUnderTest,
) -> None:
    daemon = _ensure(sup, "3.2.4")["daemon"]
    answer = sup.cli_json("stop", "--children")
    assert answer["children_stopped"] == [daemon["pid"]]
    assert daemon_pids(sup.root) == []
    assert not (sup.root / "sync-daemon").exists()
    ledger = (sup.root / "supervisor" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in ledger]
    retired = [e for e in events if e["kind"] == "retired"]
    assert "http_shutdown" in retired[-1]["reason"]


def test_status_without_a_supervisor_exits_3_with_a_null_supervisor(
    sup: SupervisorUnderTest,
) -> None:
    result = sup.cli("status", "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout)["supervisor"] is None


def test_an_interpreter_without_spec_kitty_is_refused_before_any_spawn(
    sup: SupervisorUnderTest,
) -> None:
    sup.start()
    with SupervisorClient(sup.root) as client, pytest.raises(InvalidRequest) as refused:
        client.ensure(sys.executable, "3.2.4", env=sup.env())
    assert refused.value.code == "invalid_python"
    assert "spec-kitty-cli is not installed" in refused.value.message
    assert sup.cli_json("status")["daemons"] == []
    assert not (sup.root / "sync-daemon.log").exists()


@pytest.mark.parametrize(
    ("python", "code"),
    [("relative/python", "invalid_request"), ("/no/such/python", "invalid_python")],
)
def test_a_bad_interpreter_is_refused_and_changes_nothing(
    sup: SupervisorUnderTest, python: str, code: str
) -> None:
    sup.start()
    result = sup.cli("ensure", "--python", python, "--package-version", "3.2.4")
    assert result.returncode == 1
    assert code in result.stderr
    assert sup.cli_json("status")["daemons"] == []


def test_a_port_taken_by_a_stranger_is_skipped(sup: SupervisorUnderTest) -> None:
    stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = SPAWN_PORTS.free(1)[0]
    stranger.bind(("127.0.0.1", port))
    stranger.listen(1)
    try:
        daemon = _ensure(sup, "3.2.4")["daemon"]
        assert daemon["port"] != port
        assert read_identity(os.getpid()) is not None  # we, the stranger, are untouched
    finally:
        stranger.close()


def test_tokens_never_reach_logs_status_or_events(sup: SupervisorUnderTest) -> None:
    token = sup.cli_json("ensure", "--python", str(spec_kitty_python("3.2.4")), "--show-token")[
        "daemon"
    ]["token"]
    assert len(token) == 32
    assert token not in sup.cli("status", "--json").stdout
    assert token not in sup.cli("events", "--json").stdout
    for path in (sup.root / "supervisor").glob("*.log*"):
        assert token not in path.read_text()
    assert token not in (sup.root / "supervisor" / "events.jsonl").read_text()


def test_an_idle_auto_started_supervisor_exits_by_itself(
    sup: SupervisorUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client starts the supervisor with its own environment, settings included.
    for name, value in sup.env({"SPEC_KITTY_SUPERVISOR_IDLE_EXIT_SECONDS": "2"}).items():
        monkeypatch.setenv(name, value)
    with SupervisorClient(sup.root) as client:
        pid = client.start().pid
    eventually(lambda: read_identity(pid) is None, what="the idle supervisor to exit")
    assert not Path(socket_path_for_root(sup.root)).exists()


def test_a_daemon_that_fails_to_bind_is_retried_on_another_port(
    sup: SupervisorUnderTest,
) -> None:
    """A stranger can take a port between our check and the daemon's bind; the daemon then
    exits. The wrapper below plays that race out deterministically: its first daemon loses."""
    sup.start()
    real = spec_kitty_python("3.2.4")
    lost = sup.sandbox.base / "lost-the-race"
    wrapper = sup.sandbox.base / "python-losing-a-race"
    # Only a daemon's spawn loses; the supervisor asking the interpreter its version does not.
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$2" in *run_sync_daemon*)\n'
        f'  if [ ! -e "{lost}" ]; then\n'
        f'    echo "$2" > "{lost}"\n'
        '    echo "OSError: [Errno 98] Address already in use" >&2; exit 1\n'
        "  fi;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    answer = sup.cli_json("ensure", "--python", str(wrapper), "--package-version", "3.2.4")
    assert answer["action"] == "spawned"
    events = sup.cli_json("events")["events"]
    failed = [e for e in events if e["kind"] == "spawn_failed"]
    assert len(failed) == 1
    assert f"run_sync_daemon({failed[0]['port']}," in lost.read_text()
    assert answer["daemon"]["port"] != failed[0]["port"]
    assert daemon_pids(sup.root) == [answer["daemon"]["pid"]]


def test_ensure_without_arguments_uses_the_spec_kitty_on_path(sup: SupervisorUnderTest) -> None:
    sup.start()
    venv_bin = spec_kitty_python("3.2.7").parent
    script = (
        "import sys\n"
        "from spec_kitty_supervisor_client import ensure_sync_daemon\n"
        "answer = ensure_sync_daemon(root=sys.argv[1])\n"
        "print(answer.daemon.python, answer.daemon.package_version)\n"
    )
    env = sup.env({"PATH": f"{venv_bin}:{os.environ['PATH']}"})
    result = subprocess.run(
        [sys.executable, "-c", script, str(sup.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shebang = (venv_bin / "spec-kitty").read_text().splitlines()[0]
    assert result.stdout.split() == [shebang.removeprefix("#!"), "3.2.7"]

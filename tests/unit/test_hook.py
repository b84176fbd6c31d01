"""The hook inside spec-kitty's process, on a stand-in ``specify_cli`` of the released shape.

The real releases are exercised by ``tests/interop/test_integration.py``; here the rules are
specified one by one: patched whole or not at all, upstream's skip decision first, no
``R/sync-daemon.lock`` held while the supervisor is asked, inert in daemons and when disabled,
a start only from the ``spec-kitty`` command, upstream's own function whenever anything fails.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import socket
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spec_kitty_supervisor_client import _hook

# 3.2.7's shape (3.2.0-3.2.5 lack force_explicit), with upstream's bodies reduced to a record
# of what ran.
RELEASE_3_2_7 = """
import dataclasses, enum, os
from pathlib import Path

CALLS = []

class DaemonIntent(str, enum.Enum):
    LOCAL_ONLY = "local_only"
    REMOTE_REQUIRED = "remote_required"

@dataclasses.dataclass(frozen=True)
class DaemonStartOutcome:
    started: bool
    skipped_reason: str | None
    pid: int | None

def _daemon_root():
    return Path(os.environ["SPEC_KITTY_HOME"])

def _get_package_version():
    return "3.2.7"

def _daemon_start_skip_reason(intent, policy, *, force_explicit=False):
    if not os.environ.get("SPEC_KITTY_ENABLE_SAAS_SYNC"):
        return "rollout_disabled"
    if intent == DaemonIntent.LOCAL_ONLY:
        return "intent_local_only"
    if policy == "manual":
        return "policy_manual"
    return None

def ensure_sync_daemon_running(*, intent, config=None, health_wait_seconds=None,
                               force_explicit=False):
    from specify_cli.sync.config import SyncConfig
    policy = (config or SyncConfig()).get_background_daemon()
    reason = _daemon_start_skip_reason(intent, policy, force_explicit=force_explicit)
    CALLS.append(("upstream_ensure", reason))
    if reason is not None:
        return DaemonStartOutcome(started=False, skipped_reason=reason, pid=None)
    return DaemonStartOutcome(started=True, skipped_reason=None, pid=1)

def stop_sync_daemon(timeout=5.0):
    CALLS.append(("upstream_stop", timeout))
    return False, "No sync daemon metadata found."
"""

CONFIG = """
class SyncConfig:
    def get_background_daemon(self):
        import os
        return os.environ.get("POLICY", "auto")
"""

IMPORTER = "from specify_cli.sync.daemon import ensure_sync_daemon_running, stop_sync_daemon\n"

# 3.2.4+'s schema-2 record and its enums (specify_cli.sync.classification), reduced.
CLASSIFICATION = """
import dataclasses, enum

class CleanupClass(enum.StrEnum):
    SAFE_AUTO = "safe_auto"
    OPERATOR_REQUIRED = "operator_required"
    NEVER_TOUCH = "never_touch"

class SkipReason(enum.StrEnum):
    cross_root = "cross_root"
    pid_port_mismatch = "pid_port_mismatch"

class IdentitySource(enum.StrEnum):
    owner_record = "owner_record"
    none = "none"

@dataclasses.dataclass(frozen=True)
class DaemonIdentityRecord:
    daemon_family: str
    pid: int | None
    port: int
    protocol_version: int | None
    package_version: str | None
    singleton_scope_id: str | None
    daemon_root: str | None
    queue_db_path: str | None
    auth_scope: str | None
    server_url: str | None
    owner_present: bool
    identity_source: IdentitySource
    executable_summary: str | None
    spawn_shape_ok: bool
    self_report_matches_listener: bool
    is_recorded_singleton: bool
    cleanup_class: CleanupClass
    skip_reason: SkipReason | None
"""

# specify_cli.sync.orphan_sweep of 3.2.4+, its scan and sweep reduced to a record of calls.
ORPHAN_SWEEP = """
import dataclasses
from specify_cli.sync import daemon as _daemon
from specify_cli.sync.classification import CleanupClass, DaemonIdentityRecord

CALLS = []

@dataclasses.dataclass
class SweptEntry:
    pid: int | None
    port: int
    package_version: str | None
    protocol_version: int | None
    cleanup_path: str
    reason: str

@dataclasses.dataclass
class SkippedEntry:
    pid: int | None
    port: int
    cleanup_class: str
    skip_reason: str | None

@dataclasses.dataclass
class FailedEntry:
    pid: int | None
    port: int
    failure_reason: str

@dataclasses.dataclass
class ResetResult:
    swept: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)

def enumerate_identity_records():
    CALLS.append("upstream_enumerate")
    return []

def reset_orphans(records, *, include_operator_required=False):
    CALLS.append(("upstream_reset", include_operator_required))
    return ResetResult()
"""

# specify_cli.sync.restart of 3.2.0-3.2.7 reduced to its composition: stop, then ensure.
RESTART = """
import dataclasses

@dataclasses.dataclass(frozen=True)
class RestartResult:
    status: str
    exit_code: int
    previous_pid: int | None
    new_pid: int | None
    error: str | None

def restart_daemon(_repo_root):
    from specify_cli.sync.daemon import DaemonIntent, ensure_sync_daemon_running, stop_sync_daemon
    stopped, message = stop_sync_daemon(timeout=1.0)
    if not stopped:
        return RestartResult("stop_failed", 3, None, None, f"Stop reported no action: {message}")
    outcome = ensure_sync_daemon_running(
        intent=DaemonIntent.REMOTE_REQUIRED, health_wait_seconds=3.0, force_explicit=True
    )
    return RestartResult("restarted", 0, None, outcome.pid, None)
"""


# specify_cli.cli.commands._auth_doctor reduced to what the hook wraps and how
# `assemble_report` calls it: the daemon summary, then the orphans, then the findings.
AUTH_DOCTOR = """
import dataclasses
from specify_cli.sync.daemon import stop_sync_daemon
from specify_cli.sync.orphan_sweep import {imports}

CALLS = []

@dataclasses.dataclass(frozen=True)
class DaemonSummary:
    active: bool
    pid: int | None
    port: int | None
    package_version: str | None
    protocol_version: int | None

@dataclasses.dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    summary: str
    remediation_command: str | None = None
    remediation_description: str | None = None

def _read_daemon_summary():
    CALLS.append("upstream_daemon_summary")
    return None

def _compute_findings(*, session, refresh_lock, daemon, orphans{verdict}):
    if not orphans:
        return []
    ports = ", ".join(str(o.port) for o in orphans)
    summary = f"{{len(orphans)}} orphan daemon(s) detected on port(s) {{ports}}"
    return [Finding("F-002", "warn", summary, "spec-kitty auth doctor --reset",
                    "Sweep orphan daemons in the reserved port range.")]

def assemble_report():
    daemon = _read_daemon_summary()
    orphans = {enumerate}()
    findings = _compute_findings(session=None, refresh_lock=None, daemon=daemon,
                                 orphans=orphans{verdict_value})
    return daemon, orphans, findings
"""
AUTH_DOCTOR_3_2_7 = AUTH_DOCTOR.format(
    imports="ResetResult, enumerate_identity_records, reset_orphans",
    enumerate="enumerate_identity_records",
    verdict=", auth_verdict",
    verdict_value=", auth_verdict=None",
)
AUTH_DOCTOR_3_2_2 = AUTH_DOCTOR.format(
    imports="OrphanDaemon, enumerate_orphans, sweep_orphans",
    enumerate="enumerate_orphans",
    verdict="",
    verdict_value="",
)


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in spec-kitty on sys.path, the hook's finder in front, a sandbox root."""
    package = tmp_path / "site" / "specify_cli"
    (package / "sync").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sync" / "__init__.py").write_text("")
    (package / "sync" / "config.py").write_text(CONFIG)
    (package / "sync" / "daemon.py").write_text(RELEASE_3_2_7)
    (package / "sync" / "restart.py").write_text(RESTART)
    (package / "sync" / "classification.py").write_text(CLASSIFICATION)
    (package / "sync" / "orphan_sweep.py").write_text(ORPHAN_SWEEP)
    (package / "importer.py").write_text(IMPORTER)
    (package / "cli" / "commands").mkdir(parents=True)
    (package / "cli" / "__init__.py").write_text("")
    (package / "cli" / "commands" / "__init__.py").write_text("")
    (package / "cli" / "commands" / "_auth_doctor.py").write_text(AUTH_DOCTOR_3_2_7)
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SPEC_KITTY_HOME", str(root))
    monkeypatch.setenv("SPEC_KITTY_ENABLE_SAAS_SYNC", "1")
    monkeypatch.delenv(_hook.DISABLE_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/other-tool"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "/usr/bin/other-tool"])
    sys.meta_path.insert(0, _hook.HookFinder)  # type: ignore[arg-type]
    try:
        yield root
    finally:
        sys.meta_path.remove(_hook.HookFinder)  # type: ignore[arg-type]
        for name in [name for name in sys.modules if name.startswith("specify_cli")]:
            del sys.modules[name]


def _import_daemon() -> ModuleType:
    import importlib

    return importlib.import_module("specify_cli.sync.daemon")


class _Supervisor:
    """A stand-in supervisor on ``root``'s socket that answers ensure with ``pid``.

    On every request it records whether ``R/sync-daemon.lock`` could be taken right then.
    """

    def __init__(self, root: Path, pid: int = 4242, *, exiting_first: bool = False) -> None:
        self.pid = pid
        self.exiting_first = exiting_first
        #: The pid ``GET /v1/status`` names as the current daemon (None: no daemon).
        self.current: int | None = None
        #: An error answered to ensure instead of a daemon.
        self.ensure_error: dict[str, str] | None = None
        #: Answers ensure's raw body with (status line, body), or None for the usual answer:
        #: e.g. an older supervisor's validation.
        self.ensure_reply: Callable[[bytes], tuple[bytes, bytes] | None] | None = None
        self.bodies: list[dict[str, Any]] = []
        #: What ``GET /v1/doctor`` and ``POST /v1/reset`` answer.
        self.doctor: dict[str, Any] = {"orphans": []}
        self.lock_free_during_request: list[bool] = []
        self.requests: list[str] = []
        self._root = root
        self._folder = tempfile.mkdtemp(prefix="hook-", dir="/tmp")
        self.path = Path(self._folder) / "s.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _lock_is_free(self) -> bool:
        with open(self._root / "sync-daemon.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head = data.split(b"\r\n", 1)[0].decode()
                headers, _, received = data.partition(b"\r\n\r\n")
                length = 0
                for line in headers.decode().split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(received) < length:
                    received += conn.recv(65536)
                self.requests.append(head)
                self.bodies.append(json.loads(received) if received else {})
                self.lock_free_during_request.append(self._lock_is_free())
                status = b"200 OK"
                body = json.dumps({"action": "spawned", "daemon": {"pid": self.pid}}).encode()
                custom = None
                if self.ensure_reply is not None and head.startswith("POST /v1/sync/ensure"):
                    custom = self.ensure_reply(received)
                if head.startswith("GET /v1/status"):
                    daemons = (
                        [] if self.current is None else [{"pid": self.current, "role": "current"}]
                    )
                    body = json.dumps({"daemons": daemons}).encode()
                elif head.startswith(("GET /v1/doctor", "POST /v1/reset")):
                    body = json.dumps(self.doctor).encode()
                elif custom is not None:
                    status, body = custom
                elif self.ensure_error is not None:
                    status = b"409 Conflict"
                    body = json.dumps({"error": self.ensure_error}).encode()
                if self.exiting_first:
                    self.exiting_first = False
                    status = b"503 Service Unavailable"
                    error = {"code": "supervisor_exiting", "message": "idle exit"}
                    body = json.dumps({"error": error}).encode()
                conn.sendall(
                    b"HTTP/1.1 "
                    + status
                    + b"\r\nspec-kitty-supervisor-protocol: 1\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def supervisor(release: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Supervisor]:
    server = _Supervisor(release)
    monkeypatch.setattr(_hook, "socket_path_for_root", lambda root: server.path)
    yield server
    server.close()


def _integration_record(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "supervisor" / "integration.json").read_text()))


# Patching


def test_the_module_is_patched_at_the_end_of_its_own_execution(release: Path) -> None:
    daemon = _import_daemon()
    assert getattr(daemon, _hook.HOOK_MARKER) == {
        "patched": ["ensure_sync_daemon_running", "stop_sync_daemon"],
        "unpatched": None,
    }
    assert daemon.ensure_sync_daemon_running.__wrapped__ is not daemon.ensure_sync_daemon_running


def test_every_binding_made_by_from_import_is_the_wrapper(release: Path) -> None:
    import importlib

    importer = importlib.import_module("specify_cli.importer")
    daemon = sys.modules["specify_cli.sync.daemon"]
    assert importer.ensure_sync_daemon_running is daemon.ensure_sync_daemon_running
    assert importer.stop_sync_daemon is daemon.stop_sync_daemon
    originals = {
        daemon.ensure_sync_daemon_running.__wrapped__,
        daemon.stop_sync_daemon.__wrapped__,
    }
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            assert not any(value is original for original in originals)


def test_a_release_of_another_shape_is_left_unpatched_whole(release: Path) -> None:
    daemon_file = release.parent / "site" / "specify_cli" / "sync" / "daemon.py"
    daemon_file.write_text(
        RELEASE_3_2_7.replace("def stop_sync_daemon(timeout=5.0):", "def stop_sync_daemon(t=5.0):")
    )
    daemon = _import_daemon()
    marker = getattr(daemon, _hook.HOOK_MARKER)
    assert marker["patched"] == []
    assert "stop_sync_daemon is not a function of timeout" in marker["unpatched"]
    assert not hasattr(daemon.ensure_sync_daemon_running, "__wrapped__")  # not half-patched
    assert _integration_record(release)["unpatched"]["count"] == 1


def test_nothing_is_patched_inside_a_daemon_process(
    release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["python", "-c", "run_sync_daemon(9400, 't')"])
    daemon = _import_daemon()
    assert not hasattr(daemon, _hook.HOOK_MARKER)


def test_nothing_is_patched_when_disabled(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_hook.DISABLE_ENV, "1")
    assert not hasattr(_import_daemon(), _hook.HOOK_MARKER)


# ensure


def test_upstreams_skip_decision_comes_first_and_is_returned_unchanged(
    supervisor: _Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = _import_daemon()
    local = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.LOCAL_ONLY)
    monkeypatch.setenv("POLICY", "manual")
    manual = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
    monkeypatch.delenv("SPEC_KITTY_ENABLE_SAAS_SYNC")
    rollout = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
    assert [o.skipped_reason for o in (local, manual, rollout)] == [
        "intent_local_only",
        "policy_manual",
        "rollout_disabled",
    ]
    assert supervisor.requests == []


def test_the_supervisor_is_asked_without_holding_the_daemon_lock(
    supervisor: _Supervisor,
) -> None:
    daemon = _import_daemon()
    outcome = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
    assert outcome == daemon.DaemonStartOutcome(started=True, skipped_reason=None, pid=4242)
    assert type(outcome) is daemon.DaemonStartOutcome
    assert supervisor.requests == ["POST /v1/sync/ensure HTTP/1.1"]
    assert supervisor.lock_free_during_request == [True]
    assert daemon.CALLS == []  # upstream's own lifecycle never ran


def test_a_supervisor_going_away_is_replaced_by_the_spec_kitty_command(
    supervisor: _Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[Path] = []
    monkeypatch.setattr(
        _hook, "replace_exiting_supervisor", lambda root, *args: replaced.append(root)
    )
    monkeypatch.setattr(sys, "argv", ["/home/u/.local/bin/spec-kitty"])
    supervisor.exiting_first = True
    daemon = _import_daemon()
    outcome = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
    assert outcome.pid == supervisor.pid
    assert len(replaced) == 1
    assert supervisor.requests == ["POST /v1/sync/ensure HTTP/1.1"] * 2


def test_outside_the_spec_kitty_command_no_supervisor_is_started(
    release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Path] = []
    monkeypatch.setattr(_hook, "start_supervisor", lambda root, *a: started.append(root))
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", ("/bin/true",))
    daemon = _import_daemon()
    outcome = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
    assert outcome.pid == 1  # upstream's own answer
    assert daemon.CALLS == [("upstream_ensure", None)]
    assert started == []
    # Not a failure: other processes only ask a running supervisor.
    assert not (release / "supervisor" / "integration.json").exists()


def test_the_spec_kitty_command_falls_back_to_upstream_and_records_why(
    release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["/home/u/.local/bin/spec-kitty", "next"])
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", ("/nonexistent/spec-kitty-supervisor",))
    daemon = _import_daemon()
    for _ in range(2):
        outcome = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
        assert outcome == daemon.DaemonStartOutcome(started=True, skipped_reason=None, pid=1)
    failure = _integration_record(release)["failure"]
    assert failure["count"] == 2
    assert "/nonexistent/spec-kitty-supervisor is gone" in failure["last_error"]


def test_a_recorded_command_others_can_write_is_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "spec-kitty-supervisor"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o777)
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", (str(program),))
    with pytest.raises(_hook.StartFailed, match="writable by group or others"):
        _hook.trusted_command()
    program.chmod(0o755)
    assert _hook.trusted_command() == [str(program)]


def test_a_supervisor_error_falls_back_to_upstream(
    release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> int:
        raise _hook.Refused("root_quarantined: the daemon kept dying")

    monkeypatch.setattr(_hook, "supervised_daemon_pid", refuse)
    daemon = _import_daemon()
    outcome = daemon.ensure_sync_daemon_running(intent=daemon.DaemonIntent.REMOTE_REQUIRED)
    assert outcome.pid == 1
    assert "root_quarantined" in _integration_record(release)["failure"]["last_error"]


def test_the_health_wait_bounds_the_call() -> None:
    assert _hook._bound(None) == _hook.UPSTREAM_HEALTH_WAIT_SECONDS == 21.0
    assert _hook._bound(3.0) == 3.0


# stop


def test_stop_without_a_running_supervisor_is_upstreams(release: Path) -> None:
    daemon = _import_daemon()
    assert daemon.stop_sync_daemon(timeout=1.0) == (False, "No sync daemon metadata found.")
    assert daemon.CALLS == [("upstream_stop", 1.0)]


# Where it acts


@pytest.mark.parametrize(
    ("argv0", "expected"),
    [
        ("/home/u/.local/bin/spec-kitty", True),
        ("/v/lib/python3.11/site-packages/specify_cli/__main__.py", True),
        ("/usr/bin/spec-kitty-dashboard", False),
        ("-c", False),
    ],
)
def test_only_the_spec_kitty_command_may_start_a_supervisor(
    argv0: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [argv0])
    assert _hook.is_spec_kitty_command() is expected


def test_a_daemons_argv_makes_the_hook_inert(monkeypatch: pytest.MonkeyPatch) -> None:
    script = textwrap.dedent("""\
        from specify_cli.sync.daemon import run_sync_daemon
        run_sync_daemon(9400, 'abc')
    """)
    monkeypatch.delenv(_hook.DISABLE_ENV, raising=False)
    monkeypatch.setattr(sys, "orig_argv", ["/v/bin/python", "-c", script])
    assert _hook.inert_reason() == "this process runs a sync daemon"
    monkeypatch.setattr(sys, "orig_argv", ["/v/bin/python", "/v/bin/spec-kitty"])
    assert _hook.inert_reason() is None
    monkeypatch.setenv(_hook.DISABLE_ENV, "1")
    assert _hook.inert_reason() == f"{_hook.DISABLE_ENV}=1"


# restart-daemon


def _import_restart() -> ModuleType:
    import importlib

    return importlib.import_module("specify_cli.sync.restart")


def test_restart_is_one_replace_request_answered_with_upstreams_result(
    supervisor: _Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    supervisor.current = 4000
    restart = _import_restart()
    assert getattr(restart, _hook.HOOK_MARKER) == {"patched": ["restart_daemon"], "unpatched": None}
    result = restart.restart_daemon(tmp_path)
    assert result == restart.RestartResult("restarted", 0, 4000, supervisor.pid, None)
    assert type(result) is restart.RestartResult
    assert supervisor.requests == ["GET /v1/status HTTP/1.1", "POST /v1/sync/ensure HTTP/1.1"]
    asked = supervisor.bodies[1]
    assert (asked["replace"], asked["python"], asked["cwd"]) == (
        True,
        sys.executable,
        str(tmp_path),
    )
    assert asked["package_version"] == "3.2.7"
    # Not retire-then-spawn: upstream's stop and ensure never ran.
    assert sys.modules["specify_cli.sync.daemon"].CALLS == []


def test_a_restart_the_supervisor_refuses_is_respawn_failed_with_its_reason(
    supervisor: _Supervisor,
) -> None:
    supervisor.current = 4000
    supervisor.ensure_error = {"code": "root_quarantined", "message": "the root is quarantined"}
    restart = _import_restart()
    result = restart.restart_daemon(Path("/"))
    assert result == restart.RestartResult(
        "respawn_failed",
        2,
        4000,
        None,
        "Respawn failed: root_quarantined: the root is quarantined",
    )


def test_a_restart_with_no_current_daemon_is_upstreams(supervisor: _Supervisor) -> None:
    restart = _import_restart()
    result = restart.restart_daemon(Path("/"))
    # Upstream's own composition ran: the wrapped stop found no current daemon, so upstream's
    # stop answered, and upstream's restart turned that into its exit 3.
    assert (result.status, result.exit_code) == ("stop_failed", 3)
    assert sys.modules["specify_cli.sync.daemon"].CALLS == [("upstream_stop", 1.0)]
    assert all("ensure" not in request for request in supervisor.requests)


def test_a_restart_without_a_supervisor_is_upstreams(release: Path) -> None:
    restart = _import_restart()
    result = restart.restart_daemon(Path("/"))
    assert (result.status, result.exit_code) == ("stop_failed", 3)
    assert sys.modules["specify_cli.sync.daemon"].CALLS == [("upstream_stop", 1.0)]


def _pre_replace_supervisor(body: bytes) -> tuple[bytes, bytes] | None:
    """How a supervisor older than ``replace`` answers ensure (before commit b094cb7).

    Its ``EnsureRequest`` was today's without ``replace``, strict with extra fields forbidden;
    the body goes through the supervisor's own parsing and error document. (The field
    validators are left out: the hook's other fields are valid either way.)
    """
    from pydantic import create_model

    from spec_kitty_supervisor._api import ApiError, ApiRequest, _error_body
    from spec_kitty_supervisor_client._models import EnsureRequest, _Request

    fields: dict[str, Any] = {
        name: (field.annotation, field)
        for name, field in EnsureRequest.model_fields.items()
        if name != "replace"
    }
    before_replace = create_model("EnsureRequest", __base__=_Request, **fields)
    try:
        ApiRequest("POST", "/v1/sync/ensure", {}, body).parse(before_replace)
    except ApiError as exc:
        status = f"{exc.status} Bad Request".encode()
        return status, _error_body(exc.code, exc.message, exc.details)
    return None


def test_the_stand_in_answers_replace_as_the_supervisor_before_it_did() -> None:
    body = json.dumps({"python": sys.executable, "replace": True}).encode()
    assert _pre_replace_supervisor(body) == (
        b"400 Bad Request",
        b'{"error":{"code":"invalid_request","message":"replace: Extra inputs are not permitted"}}',
    )
    assert _pre_replace_supervisor(json.dumps({"python": sys.executable}).encode()) is None


def test_a_supervisor_older_than_replace_gets_upstreams_restart_and_it_is_said(
    supervisor: _Supervisor, release: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    supervisor.current = 4000
    supervisor.ensure_reply = _pre_replace_supervisor
    restart = _import_restart()
    result = restart.restart_daemon(Path("/"))
    # Not respawn_failed: upstream's own restart ran, its stop and ensure through the hook (the
    # supervisor retired its daemon, then spawned one): a restart, without make-before-break.
    assert result == restart.RestartResult("restarted", 0, None, supervisor.pid, None)
    assert [request.split()[1] for request in supervisor.requests] == [
        "/v1/status",
        "/v1/sync/ensure",  # with replace: refused, nothing done
        "/v1/status",
        "/v1/sync/retire",
        "/v1/sync/ensure",
    ]
    assert supervisor.bodies[1]["replace"] is True
    assert "replace" not in supervisor.bodies[4]
    assert sys.modules["specify_cli.sync.daemon"].CALLS == []
    said = "the running supervisor predates the `replace` ensure option"
    assert said in capsys.readouterr().err
    assert said in _integration_record(release)["failure"]["last_error"]


@pytest.mark.parametrize(
    ("code", "reason", "predates"),
    [
        ("invalid_request", "replace: Extra inputs are not permitted", True),
        ("invalid_request", "cwd: Input should be a valid string; replace: Extra inputs", True),
        ("invalid_request", "python: the interpreter must be an absolute path", False),
        ("root_quarantined", "replace: the root is quarantined", False),
        (None, None, False),
    ],
)
def test_only_a_refused_replace_option_means_an_older_supervisor(
    code: str | None, reason: str | None, predates: bool
) -> None:
    assert _hook.predates_replace(code, reason) is predates


def test_a_restart_module_of_another_shape_is_left_unpatched(release: Path) -> None:
    path = release.parent / "site" / "specify_cli" / "sync" / "restart.py"
    path.write_text(RESTART.replace("def restart_daemon(_repo_root)", "def restart_daemon()"))
    restart = _import_restart()
    state = getattr(restart, _hook.HOOK_MARKER)
    assert state["patched"] == []
    assert "restart_daemon" in state["unpatched"]
    assert not hasattr(restart.restart_daemon, "__wrapped__")


# auth doctor (3.2.4+)

ORPHAN = {
    "daemon_family": "sync",
    "pid": 5001,
    "port": 9401,
    "protocol_version": 1,
    "package_version": "3.2.2",
    "singleton_scope_id": None,
    "daemon_root": "/home/u/.spec-kitty",
    "queue_db_path": None,
    "auth_scope": None,
    "server_url": None,
    "owner_present": True,
    "identity_source": "kernel_root",
    "executable_summary": "python",
    "spawn_shape_ok": True,
    "self_report_matches_listener": True,
    "is_recorded_singleton": False,
    "cleanup_class": "safe_auto",
    "skip_reason": None,
    "uid": 1000,  # ours: not in upstream's record
}


def _import_orphan_sweep() -> ModuleType:
    import importlib

    return importlib.import_module("specify_cli.sync.orphan_sweep")


def test_auth_doctors_orphans_are_the_supervisors_in_upstreams_own_records(
    supervisor: _Supervisor,
) -> None:
    supervisor.doctor = {"orphans": [ORPHAN]}
    sweep = _import_orphan_sweep()
    assert getattr(sweep, _hook.HOOK_MARKER) == {
        "patched": ["enumerate_identity_records", "reset_orphans"],
        "unpatched": None,
    }
    [record] = sweep.enumerate_identity_records()
    classification = sys.modules["specify_cli.sync.classification"]
    assert type(record) is classification.DaemonIdentityRecord
    assert record.cleanup_class is classification.CleanupClass.SAFE_AUTO
    # A value this release's enum lacks is kept as the supervisor said it, and serialises.
    assert (record.identity_source, record.identity_source.value) == ("kernel_root", "kernel_root")
    assert dataclasses.asdict(record) == {k: v for k, v in ORPHAN.items() if k != "uid"}
    assert supervisor.requests == ["GET /v1/doctor HTTP/1.1"]
    assert sweep.CALLS == []


@pytest.mark.parametrize("force", [False, True])
def test_auth_doctors_reset_is_the_supervisors_in_upstreams_result(
    supervisor: _Supervisor, force: bool
) -> None:
    supervisor.doctor = {
        "orphans": [],
        "reset_result": {
            "swept": [
                {
                    "pid": 5001,
                    "port": 9401,
                    "package_version": "3.2.2",
                    "protocol_version": 1,
                    "cleanup_path": "http_shutdown",
                    "reason": "safe_auto",
                }
            ],
            "skipped": [
                {
                    "pid": 5002,
                    "port": 9402,
                    "cleanup_class": "operator_required",
                    "skip_reason": "cross_root",
                }
            ],
            "failed": [{"pid": 5003, "port": 9403, "failure_reason": "still alive"}],
        },
    }
    sweep = _import_orphan_sweep()
    result = sweep.reset_orphans([], include_operator_required=force)
    assert type(result) is sweep.ResetResult
    assert result == sweep.ResetResult(
        swept=[sweep.SweptEntry(5001, 9401, "3.2.2", 1, "http_shutdown", "safe_auto")],
        skipped=[sweep.SkippedEntry(5002, 9402, "operator_required", "cross_root")],
        failed=[sweep.FailedEntry(5003, 9403, "still alive")],
    )
    assert supervisor.requests == ["POST /v1/reset HTTP/1.1"]
    assert supervisor.bodies == [{"force": force}]
    assert sweep.CALLS == []


def _recorded_command(tmp_path: Path, answer: str, code: int) -> tuple[Path, Path]:
    """A stand-in `spec-kitty-supervisor` that logs its argv and prints ``answer``.

    The log holds the last argv; ``<log>.runs`` one line per run.
    """
    log, reply = tmp_path / "argv.json", tmp_path / "answer.txt"
    reply.write_text(answer)
    command = tmp_path / "spec-kitty-supervisor"
    command.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"open({str(log) + '.runs'!r}, 'a').write('run\\n')\n"
        f"print(open({str(reply)!r}).read())\n"
        f"raise SystemExit({code})\n"
    )
    command.chmod(0o755)
    return command, log


def test_without_a_supervisor_auth_doctor_asks_the_recorded_commands_doctor(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exit 1 ("needs attention") with the report on stdout, as `doctor` answers with orphans.
    empty = {"swept": [], "skipped": [], "failed": []}
    answer = {"orphans": [ORPHAN], "reset_result": empty}
    command, log = _recorded_command(tmp_path, json.dumps(answer), 1)
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", (str(command),))
    sweep = _import_orphan_sweep()
    [record] = sweep.enumerate_identity_records()
    assert record.pid == ORPHAN["pid"]
    assert json.loads(log.read_text()) == ["doctor", "--json", "--root", str(release)]
    assert sweep.reset_orphans([record], include_operator_required=True) == sweep.ResetResult()
    assert json.loads(log.read_text()) == [
        "doctor",
        "--json",
        "--root",
        str(release),
        "--reset",
        "--force",
    ]
    assert sweep.CALLS == []


def test_a_doctor_that_fails_falls_back_to_upstreams_scan_and_is_recorded(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, _ = _recorded_command(tmp_path, "not json", 2)
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", (str(command),))
    sweep = _import_orphan_sweep()
    assert sweep.enumerate_identity_records() == []
    assert sweep.CALLS == ["upstream_enumerate"]
    assert "Refused" in _integration_record(release)["failure"]["last_error"]


# auth doctor (3.2.0-3.2.3, schema 1)

LEGACY_ORPHAN_SWEEP = """
import dataclasses
from specify_cli.sync.daemon import _daemon_root

CALLS = []

@dataclasses.dataclass(frozen=True)
class OrphanDaemon:
    port: int
    pid: int | None = None
    package_version: str | None = None
    protocol_version: int | None = None

@dataclasses.dataclass(frozen=True)
class SweepReport:
    swept: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)
    duration_s: float = 0.0

def enumerate_orphans():
    CALLS.append("upstream_enumerate")
    return []

def sweep_orphans(orphans, *, timeout_s=5.0):
    CALLS.append("upstream_sweep")
    return SweepReport()
"""


@pytest.fixture
def legacy_sweep(release: Path) -> ModuleType:
    path = release.parent / "site" / "specify_cli" / "sync" / "orphan_sweep.py"
    path.write_text(LEGACY_ORPHAN_SWEEP)
    return _import_orphan_sweep()


def test_a_schema_1_release_gets_the_supervisors_orphans_with_four_fields(
    supervisor: _Supervisor, legacy_sweep: ModuleType
) -> None:
    supervisor.doctor = {"orphans": [ORPHAN]}
    assert getattr(legacy_sweep, _hook.HOOK_MARKER) == {
        "patched": ["enumerate_orphans", "sweep_orphans"],
        "unpatched": None,
    }
    assert legacy_sweep.enumerate_orphans() == [legacy_sweep.OrphanDaemon(9401, 5001, "3.2.2", 1)]
    assert legacy_sweep.CALLS == []


def test_a_schema_1_reset_never_forces_and_names_the_command_for_what_it_skipped(
    supervisor: _Supervisor, legacy_sweep: ModuleType
) -> None:
    supervisor.doctor = {
        "orphans": [],
        "reset_result": {
            "swept": [{"pid": 5001, "port": 9401, "package_version": "3.2.2"}],
            "skipped": [
                {
                    "pid": 5002,
                    "port": 9402,
                    "cleanup_class": "operator_required",
                    "skip_reason": "cross_root",
                }
            ],
            "failed": [],
        },
    }
    report = legacy_sweep.sweep_orphans([])
    assert supervisor.bodies == [{"force": False}]
    assert report.swept == [legacy_sweep.OrphanDaemon(9401, 5001, "3.2.2", None)]
    [(skipped, reason)] = report.failed
    assert skipped == legacy_sweep.OrphanDaemon(9402, 5002, None, None)
    assert "operator_required (cross_root)" in reason
    assert "`spec-kitty-supervisor doctor --reset --force`" in reason
    assert legacy_sweep.CALLS == []


# auth doctor's daemon summary (3.2.0+) and schema 1's orphan finding

#: A running supervisor's doctor report: its current daemon, one it is retiring, one orphan.
DOCTOR_OF_A_SUPERVISOR: dict[str, Any] = {
    "supervisor": {"pid": 77},
    "daemons": [
        {"pid": 3990, "port": 9404, "package_version": "3.2.6", "state": "retiring"},
        {
            "pid": 4000,
            "port": 9405,
            "package_version": "3.2.7",
            "state": "healthy",
            "role": "current",
        },
    ],
    "listeners": [
        {"pid": 3990, "port": 9404, "protocol_version": 1},
        {"pid": 4000, "port": 9405, "protocol_version": 2, "is_recorded_singleton": True},
        ORPHAN,
    ],
    "orphans": [ORPHAN],
}


def _import_auth_doctor() -> ModuleType:
    import importlib

    return importlib.import_module("specify_cli.cli.commands._auth_doctor")


def test_auth_doctors_daemon_summary_is_the_supervisors_current_daemon(
    supervisor: _Supervisor,
) -> None:
    supervisor.doctor = DOCTOR_OF_A_SUPERVISOR
    doctor = _import_auth_doctor()
    assert getattr(doctor, _hook.HOOK_MARKER) == {
        "patched": ["_read_daemon_summary"],
        "unpatched": None,
    }
    daemon, orphans, _ = doctor.assemble_report()
    assert daemon == doctor.DaemonSummary(
        active=True, pid=4000, port=9405, package_version="3.2.7", protocol_version=2
    )
    assert type(daemon) is doctor.DaemonSummary
    assert [record.pid for record in orphans] == [ORPHAN["pid"]]
    # One report serves the summary and the orphans: one snapshot, one question.
    assert supervisor.requests == ["GET /v1/doctor HTTP/1.1"]
    assert doctor.CALLS == []
    assert sys.modules["specify_cli.sync.orphan_sweep"].CALLS == []
    # The next report asks again: a report is shared once, never reused.
    doctor.assemble_report()
    assert supervisor.requests == ["GET /v1/doctor HTTP/1.1"] * 2


def _with(report: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**report, **changes}


_CURRENT = DOCTOR_OF_A_SUPERVISOR["daemons"][1]
_RECORDED = {"pid": 4100, "port": 9406, "package_version": "3.2.4", "protocol_version": 1}


@pytest.mark.parametrize(
    ("report", "summary"),
    [
        (
            _with(DOCTOR_OF_A_SUPERVISOR, daemons=[{**_CURRENT, "state": "unresponsive"}]),
            {
                "active": False,
                "pid": 4000,
                "port": 9405,
                "package_version": "3.2.7",
                "protocol_version": 2,
            },
        ),
        (_with(DOCTOR_OF_A_SUPERVISOR, daemons=[DOCTOR_OF_A_SUPERVISOR["daemons"][0]]), None),
        (
            _with(DOCTOR_OF_A_SUPERVISOR, listeners=[]),
            {
                "active": True,
                "pid": 4000,
                "port": 9405,
                "package_version": "3.2.7",
                "protocol_version": None,
            },
        ),
        # No supervisor: the recorded command's `doctor --json` probed the range itself.
        (
            {
                "supervisor": None,
                "daemons": [],
                "listeners": [
                    ORPHAN,
                    {
                        **_RECORDED,
                        "is_recorded_singleton": True,
                        "self_report_matches_listener": True,
                    },
                ],
            },
            {"active": True, **_RECORDED},
        ),
        (
            {
                "supervisor": None,
                "listeners": [
                    {
                        **_RECORDED,
                        "is_recorded_singleton": True,
                        "self_report_matches_listener": False,
                    }
                ],
            },
            {"active": False, **_RECORDED},
        ),
        ({"supervisor": None, "daemons": [], "listeners": [ORPHAN]}, None),
    ],
    ids=[
        "unresponsive",
        "no-current",
        "no-listener",
        "standalone",
        "standalone-unproven",
        "standalone-none",
    ],
)
def test_the_daemon_summary_is_what_the_supervisor_says_of_the_roots_daemon(
    report: dict[str, Any], summary: dict[str, Any] | None
) -> None:
    assert _hook.daemon_summary_fields(report) == summary


def test_without_a_supervisor_summary_and_orphans_are_one_run_of_the_recorded_doctor(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = {
        "supervisor": None,
        "daemons": [],
        "listeners": [
            {**_RECORDED, "is_recorded_singleton": True, "self_report_matches_listener": True}
        ],
        "orphans": [ORPHAN],
    }
    command, log = _recorded_command(tmp_path, json.dumps(answer), 1)
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", (str(command),))
    doctor = _import_auth_doctor()
    daemon, orphans, _ = doctor.assemble_report()
    assert daemon == doctor.DaemonSummary(True, 4100, 9406, "3.2.4", 1)
    assert [record.port for record in orphans] == [ORPHAN["port"]]
    assert json.loads(log.read_text()) == ["doctor", "--json", "--root", str(release)]
    assert Path(f"{log}.runs").read_text() == "run\n"
    assert doctor.CALLS == []


def test_a_daemon_summary_no_supervisor_can_give_is_upstreams_and_recorded(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, _ = _recorded_command(tmp_path, "not json", 2)
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", (str(command),))
    doctor = _import_auth_doctor()
    daemon, _, _ = doctor.assemble_report()
    assert daemon is None
    assert doctor.CALLS == ["upstream_daemon_summary"]
    assert "Refused" in _integration_record(release)["failure"]["last_error"]


def test_an_auth_doctor_module_of_another_shape_is_left_unpatched(release: Path) -> None:
    path = release.parent / "site" / "specify_cli" / "cli" / "commands" / "_auth_doctor.py"
    path.write_text(AUTH_DOCTOR_3_2_7.replace("    protocol_version: int | None\n", ""))
    doctor = _import_auth_doctor()
    state = getattr(doctor, _hook.HOOK_MARKER)
    assert state["patched"] == []
    assert "DaemonSummary is not" in state["unpatched"]
    assert not hasattr(doctor._read_daemon_summary, "__wrapped__")


@pytest.fixture
def legacy_doctor(legacy_sweep: ModuleType, release: Path) -> ModuleType:
    path = release.parent / "site" / "specify_cli" / "cli" / "commands" / "_auth_doctor.py"
    path.write_text(AUTH_DOCTOR_3_2_2)
    return _import_auth_doctor()


STRANGER = {
    **ORPHAN,
    "pid": 6001,
    "port": 9410,
    "cleanup_class": "operator_required",
    "skip_reason": "cross_root",
}


def test_a_schema_1_orphan_finding_names_the_command_for_what_reset_leaves(
    supervisor: _Supervisor, legacy_doctor: ModuleType
) -> None:
    assert getattr(legacy_doctor, _hook.HOOK_MARKER) == {
        "patched": ["_compute_findings", "_read_daemon_summary"],
        "unpatched": None,
    }
    supervisor.doctor = _with(DOCTOR_OF_A_SUPERVISOR, orphans=[ORPHAN, STRANGER])
    _, orphans, [finding] = legacy_doctor.assemble_report()
    assert [orphan.pid for orphan in orphans] == [5001, 6001]
    # Upstream's finding, its remediation saying what --reset leaves and who can do more.
    assert (finding.id, finding.summary) == (
        "F-002",
        "2 orphan daemon(s) detected on port(s) 9401, 9410",
    )
    assert finding.remediation_command == "spec-kitty auth doctor --reset"
    assert finding.remediation_description == (
        "Sweep orphan daemons in the reserved port range. It leaves 1 operator_required "
        "(cross_root); `spec-kitty-supervisor doctor --reset --force` can stop those."
    )
    # After a reset only the stranger is left: the command to run is the supervisor's.
    supervisor.doctor = _with(DOCTOR_OF_A_SUPERVISOR, orphans=[STRANGER])
    _, _, [finding] = legacy_doctor.assemble_report()
    assert finding.remediation_command == "spec-kitty-supervisor doctor --reset --force"
    assert "`spec-kitty auth doctor --reset` leaves these" in finding.remediation_description
    assert "operator_required (cross_root)" in finding.remediation_description


def test_a_schema_1_orphan_finding_of_safe_orphans_is_upstreams(
    supervisor: _Supervisor, legacy_doctor: ModuleType
) -> None:
    supervisor.doctor = _with(DOCTOR_OF_A_SUPERVISOR, orphans=[ORPHAN])
    _, _, [finding] = legacy_doctor.assemble_report()
    assert finding == legacy_doctor.Finding(
        "F-002",
        "warn",
        "1 orphan daemon(s) detected on port(s) 9401",
        "spec-kitty auth doctor --reset",
        "Sweep orphan daemons in the reserved port range.",
    )


def test_a_schema_1_orphan_finding_after_upstreams_own_scan_is_upstreams(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Upstream's own scan finds the stranger too; the supervisor lists it first, then no doctor
    # answers: what the hook knew of the stranger must not colour upstream's own finding.
    site = release.parent / "site" / "specify_cli"
    (site / "sync" / "orphan_sweep.py").write_text(
        LEGACY_ORPHAN_SWEEP.replace(
            'CALLS.append("upstream_enumerate")\n    return []',
            'CALLS.append("upstream_enumerate")\n    return [OrphanDaemon(9410, 6001, "3.2.2", 1)]',
        )
    )
    (site / "cli" / "commands" / "_auth_doctor.py").write_text(AUTH_DOCTOR_3_2_2)
    command, _ = _recorded_command(
        tmp_path, json.dumps(_with(DOCTOR_OF_A_SUPERVISOR, orphans=[STRANGER])), 1
    )
    monkeypatch.setattr(_hook, "SUPERVISOR_COMMAND", (str(command),))
    doctor = _import_auth_doctor()
    _, _, [finding] = doctor.assemble_report()
    assert finding.remediation_command == "spec-kitty-supervisor doctor --reset --force"
    (tmp_path / "answer.txt").write_text("not json")
    _, orphans, [finding] = doctor.assemble_report()
    assert sys.modules["specify_cli.sync.orphan_sweep"].CALLS == ["upstream_enumerate"]
    assert [orphan.pid for orphan in orphans] == [6001]
    assert finding.remediation_command == "spec-kitty auth doctor --reset"
    assert finding.remediation_description == "Sweep orphan daemons in the reserved port range."


# The hook's own record


def _note_in_thread(root: Path) -> bool:
    """Count one failure from another thread; whether it returned (a FIFO would block it)."""
    thread = threading.Thread(target=_hook._note, args=(root, "failure", "boom"), daemon=True)
    thread.start()
    thread.join(timeout=60)  # a deadline against a hang, not a speed measurement
    return not thread.is_alive()


def test_a_fifo_at_the_record_never_blocks_the_cli_and_becomes_the_record(release: Path) -> None:
    import os

    folder = release / "supervisor"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / _hook.INTEGRATION_FILE)
    assert _note_in_thread(release)
    assert (folder / _hook.INTEGRATION_FILE).is_file()
    assert _integration_record(release)["failure"]["count"] == 1


def test_a_linked_record_is_neither_read_nor_written_through(release: Path, tmp_path: Path) -> None:
    folder = release / "supervisor"
    folder.mkdir(mode=0o700)
    elsewhere = tmp_path / "someone-elses.json"
    their_text = json.dumps({"failure": {"count": 41, "last_error": "theirs"}})
    elsewhere.write_text(their_text)
    (folder / _hook.INTEGRATION_FILE).symlink_to(elsewhere)
    assert _note_in_thread(release)
    assert not (folder / _hook.INTEGRATION_FILE).is_symlink()
    assert _integration_record(release)["failure"]["count"] == 1  # not 42: not read through
    assert elsewhere.read_text() == their_text  # not written through

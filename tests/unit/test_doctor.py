"""Doctor: the report, its findings and exit codes, its upstream shapes, and its CLI.

Observation is replaced by fixed observations (real discovery is tested on real processes in
``tests/integration`` and ``tests/interop``), and no process is signalled.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

from spec_kitty_supervisor import _doctor, _doctor_cli, _sweep
from spec_kitty_supervisor._classification import SupervisorFacts
from spec_kitty_supervisor._core import Supervisor
from spec_kitty_supervisor._discovery import Observation
from spec_kitty_supervisor._doctor import (
    DoctorUnavailable,
    build_report,
    standalone_doctor,
    supervisor_facts,
    sweep_root,
)
from spec_kitty_supervisor._doctor_cli import doctor_exit_code
from spec_kitty_supervisor._doctor_routes import doctor_routes
from spec_kitty_supervisor._identity import ProcessIdentity
from spec_kitty_supervisor._integration_doctor import IntegrationFinding
from spec_kitty_supervisor._layout import RootLayout
from spec_kitty_supervisor._legacy_state import write_legacy_state
from spec_kitty_supervisor._lock import SupervisorLock
from spec_kitty_supervisor._settings import SettingsError, load_settings
from spec_kitty_supervisor._signals import SignalTarget
from spec_kitty_supervisor._table import DaemonRecord
from spec_kitty_supervisor_client import _upstream
from spec_kitty_supervisor_client._errors import SupervisorUnavailable
from spec_kitty_supervisor_client._models import (
    CleanupClass,
    DaemonView,
    DoctorFinding,
    DoctorReport,
    EnsureResponse,
    FailedRecord,
    ListenerRecord,
    ResetRequest,
    ResetResult,
    Settings,
    SweptRecord,
)
from spec_kitty_supervisor_client._upstream import (
    UPSTREAM_ORPHAN_KEYS,
    DaemonStartOutcome,
    doctor_report_upstream_shape,
    ensure_sync_daemon_running_compatible,
    upstream_auth_doctor,
)

OTHER_ROOT = "/home/grace/.spec-kitty"
TOKEN = "5bd2a7e6c1f04d3e9a8b7c6d5e4f3a2b"


def observed(
    port: int,
    cleanup_class: CleanupClass,
    skip_reason: str | None = None,
    *,
    daemon_root: str | None = None,
    recorded: bool = False,
) -> Observation:
    pid = 60_000 + port
    return Observation(
        record=ListenerRecord(
            daemon_family="sync",
            pid=pid,
            port=port,
            protocol_version=1,
            package_version="3.2.3",
            daemon_root=daemon_root,
            cleanup_class=cleanup_class,
            skip_reason=skip_reason,
            is_recorded_singleton=recorded,
            self_report_matches_listener=True,
            uid=os.getuid(),
            process_start=f"boot:{pid}",
            why="It answers like a sync daemon.",
        ),
        identity=ProcessIdentity(pid=pid, start=f"boot:{pid}", uid=os.getuid()),
        health_token=TOKEN,
    )


@pytest.fixture
def layout(tmp_path: Path) -> RootLayout:
    root = RootLayout(tmp_path / "root")
    root.daemon_root.mkdir()
    return root


@pytest.fixture(autouse=True)
def _no_service_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_doctor, "service_findings", lambda layout: [])


def codes(report: DoctorReport) -> list[str]:
    return [finding.code for finding in report.findings]


# --------------------------------------------------------------------------------------------
# The report


def test_orphans_are_the_safe_auto_and_operator_required_listeners(layout: RootLayout) -> None:
    observations = [
        observed(9401, "safe_auto"),
        observed(9402, "operator_required", "unresponsive"),
        observed(9403, "never_touch", "third_party"),
        observed(9404, "supervised", "supervised"),
    ]

    report = build_report(layout, observations)

    assert [r.port for r in report.orphans] == [9401, 9402]
    assert [r.port for r in report.listeners] == [9401, 9402, 9403, 9404]
    assert report.schema_version == 2


def test_safe_auto_orphans_come_with_the_reset_command(layout: RootLayout) -> None:
    report = build_report(layout, [observed(9401, "safe_auto"), observed(9405, "safe_auto")])

    (finding,) = [f for f in report.findings if f.code == "orphans_safe_auto"]
    assert "9401, 9405" in finding.message
    assert finding.remediation is not None
    assert "spec-kitty-supervisor doctor --reset --root" in finding.remediation
    assert doctor_exit_code(report.model_dump(mode="json")) == 1


def test_each_operator_required_daemon_gets_its_own_finding_with_force(
    layout: RootLayout,
) -> None:
    report = build_report(
        layout,
        [
            observed(9402, "operator_required", "unresponsive"),
            observed(9403, "operator_required", "pre_marker"),
        ],
    )

    assert codes(report)[-2:] == ["orphan_unresponsive", "orphan_pre_marker"]
    for finding in report.findings[-2:]:
        assert finding.remediation is not None
        assert "--reset --force" in finding.remediation
    assert doctor_exit_code(report.model_dump(mode="json")) == 1


def test_a_cross_root_daemon_points_at_its_own_roots_doctor(layout: RootLayout) -> None:
    report = build_report(
        layout, [observed(9406, "operator_required", "cross_root", daemon_root=OTHER_ROOT)]
    )

    (finding,) = [f for f in report.findings if f.code == "orphan_cross_root"]
    assert finding.remediation is not None
    assert f"doctor --reset --root {OTHER_ROOT}" in finding.remediation


def test_nothing_needs_action_with_only_strangers_and_our_own_daemons(
    layout: RootLayout,
) -> None:
    report = build_report(
        layout,
        [
            observed(9403, "never_touch", "not_spec_kitty"),
            observed(9404, "supervised", "supervised"),
            observed(9405, "never_touch", "is_recorded_singleton", recorded=True),
        ],
    )

    assert doctor_exit_code(report.model_dump(mode="json")) == 0
    assert "family_ports_held" in codes(report)
    assert report.orphans == []


def test_without_a_supervisor_doctor_says_so_without_asking_for_action(
    layout: RootLayout,
) -> None:
    report = build_report(layout, [])

    assert report.supervisor is None
    assert codes(report) == ["supervisor_not_running"]
    assert doctor_exit_code(report.model_dump(mode="json")) == 0


def test_a_state_file_naming_a_dead_pid_needs_action(layout: RootLayout) -> None:
    write_legacy_state(layout.legacy_state, 9401, TOKEN, 4_194_000)  # no such process

    report = build_report(layout, [])

    assert "state_file_stale" in codes(report)
    assert doctor_exit_code(report.model_dump(mode="json")) == 1


def test_failed_stops_are_errors(layout: RootLayout) -> None:
    result = ResetResult(failed=[FailedRecord(pid=7, port=9401, failure_reason="refused: uid")])

    report = build_report(layout, [], reset_result=result)

    assert "reset_failed" in codes(report)
    assert doctor_exit_code(report.model_dump(mode="json")) == 1


def test_an_unresponsive_supervised_daemon_and_a_quarantine_are_reported(
    layout: RootLayout,
) -> None:
    daemon = DaemonView(
        pid=5,
        port=9430,
        url="http://127.0.0.1:9430",
        package_version="3.2.4",
        python="/usr/bin/python3",
        origin="spawned",
        state="unresponsive",
        role="current",
        started_at="2026-01-01T00:00:00+00:00",
    )

    report = build_report(layout, [], daemons=[daemon], quarantine_reason="5 deaths in 300 s")

    assert {"root_quarantined", "daemon_unresponsive"} <= set(codes(report))


# --------------------------------------------------------------------------------------------
# Scan range


def test_the_scan_range_is_the_whole_family_by_default() -> None:
    assert load_settings(None, environ={}).scan_range == (9400, 9450)
    narrowed = {"SPEC_KITTY_SUPERVISOR_SCAN_RANGE": "9400-9425"}
    assert load_settings(None, environ=narrowed).scan_range == (9400, 9425)


@pytest.mark.parametrize("value", ["9300-9420", "9440-9460", "9420-9420", "nine"])
def test_the_scan_range_never_leaves_the_family(value: str) -> None:
    with pytest.raises(SettingsError, match=r"scan_range|port range"):
        load_settings(None, environ={"SPEC_KITTY_SUPERVISOR_SCAN_RANGE": value})


# --------------------------------------------------------------------------------------------
# With a supervisor


@pytest.fixture
def supervisor(layout: RootLayout) -> Supervisor:
    layout.prepare()
    return Supervisor(layout, Settings())


def _table_row(pid: int, port: int) -> DaemonRecord:
    return DaemonRecord(
        pid=pid,
        process_start=f"boot:{pid}",
        uid=os.getuid(),
        port=port,
        token=TOKEN,
        package_version="3.2.4",
        python="/usr/bin/python3",
        resolved_python="/usr/bin/python3.11",
        origin="spawned",
        state="healthy",
        role="current",
        started_at="2026-01-01T00:00:00+00:00",
    )


def test_the_supervisors_table_is_what_classification_calls_supervised(
    supervisor: Supervisor,
) -> None:
    supervisor.table.daemons.append(_table_row(4321, 9430))

    facts = supervisor_facts(supervisor.layout, supervisor.settings, supervisor.table)

    assert facts.supervisor_running
    assert [(d.pid, d.port, d.process_start) for d in facts.supervised] == [
        (4321, 9430, "boot:4321")
    ]
    assert facts.current_package_version == "3.2.4"


@pytest.fixture
def fixed_observations(monkeypatch: pytest.MonkeyPatch) -> list[Observation]:
    fixed: list[Observation] = []

    async def fake_observe(facts: SupervisorFacts, health_timeout: float = 0.5) -> list[Any]:
        return list(fixed)

    monkeypatch.setattr(_doctor, "observe", fake_observe)
    return fixed


@pytest.fixture
def stopped(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pids: list[int] = []

    async def fake_stop(
        target: SignalTarget, token: str | None, grace: float, _: float, **__: object
    ) -> str:
        pids.append(target.identity.pid)
        return "http_shutdown"

    monkeypatch.setattr(_sweep, "stop_gracefully", fake_stop)
    return pids


@pytest.mark.anyio
async def test_the_supervisors_sweep_stops_safe_auto_only_and_records_it(
    supervisor: Supervisor, fixed_observations: list[Observation], stopped: list[int]
) -> None:
    orphan = observed(9401, "safe_auto")
    fixed_observations += [
        orphan,
        observed(9402, "operator_required", "cross_root"),
        observed(9430, "supervised", "supervised"),
    ]

    result = await sweep_root(
        supervisor.layout, supervisor.settings, supervisor.table, supervisor.ledger
    )

    assert stopped == [orphan.record.pid]
    assert [s.port for s in result.swept] == [9401]
    assert [e.kind for e in supervisor.ledger.events()] == ["orphan_swept"]


@pytest.mark.anyio
async def test_doctor_and_reset_are_served_at_v1(
    supervisor: Supervisor, fixed_observations: list[Observation], stopped: list[int]
) -> None:
    from spec_kitty_supervisor._api import ApiRequest

    fixed_observations.append(observed(9401, "safe_auto"))
    routes = {(r.method, r.path): r.handler for r in doctor_routes(supervisor)}

    report = await routes["GET", "/v1/doctor"](ApiRequest("GET", "/v1/doctor", {}, b""))
    assert isinstance(report, DoctorReport)
    assert report.supervisor is not None
    assert stopped == []

    body = ResetRequest(force=True).model_dump_json().encode()
    reset = await routes["POST", "/v1/reset"](ApiRequest("POST", "/v1/reset", {}, body))
    assert isinstance(reset, DoctorReport)
    assert reset.reset_result is not None
    assert [s.port for s in reset.reset_result.swept] == [9401]


# --------------------------------------------------------------------------------------------
# Without a supervisor


@pytest.mark.anyio
async def test_standalone_doctor_refuses_to_act_beside_a_supervisor_holding_the_lock(
    layout: RootLayout,
) -> None:
    layout.prepare()
    holder = SupervisorLock(layout.lock)
    assert holder.try_acquire()
    try:
        with pytest.raises(DoctorUnavailable, match="does not answer"):
            await standalone_doctor(layout, Settings(), ResetRequest())
    finally:
        holder.release()


@pytest.mark.anyio
async def test_standalone_reset_removes_a_state_file_naming_a_dead_pid(
    layout: RootLayout, fixed_observations: list[Observation], stopped: list[int]
) -> None:
    layout.prepare()
    write_legacy_state(layout.legacy_state, 9401, TOKEN, 4_194_000)

    report = await standalone_doctor(layout, Settings(), ResetRequest())

    assert not layout.legacy_state.exists()
    assert "state_file_stale" not in codes(report)


@pytest.mark.anyio
async def test_standalone_doctor_releases_the_supervisor_lock(
    layout: RootLayout, fixed_observations: list[Observation]
) -> None:
    layout.prepare()

    await standalone_doctor(layout, Settings())

    after = SupervisorLock(layout.lock)
    assert after.try_acquire()
    after.release()


# --------------------------------------------------------------------------------------------
# Upstream's shapes


def test_cli_json_orphans_have_exactly_upstreams_schema_2_keys(layout: RootLayout) -> None:
    report = build_report(layout, [observed(9401, "safe_auto"), observed(9402, "supervised")])

    payload = _doctor_cli.report_json(report.model_dump(mode="json"))

    assert [list(entry) for entry in payload["orphans"]] == [list(UPSTREAM_ORPHAN_KEYS)]
    assert {"uid", "process_start", "why"} <= set(payload["listeners"][0])
    assert len(payload["listeners"]) == 2


def test_the_upstream_shape_has_upstreams_daemon_orphans_findings_and_reset_result(
    layout: RootLayout,
) -> None:
    swept = SweptRecord(
        pid=1, port=9401, cleanup_path="http_shutdown", reason="safe_auto: stale copy"
    )
    report = build_report(
        layout,
        [observed(9402, "operator_required", "unresponsive")],
        reset_result=ResetResult(swept=[swept]),
    )

    shape = doctor_report_upstream_shape(report)

    assert shape["schema_version"] == 2
    assert shape["daemon"] is None
    assert list(shape["orphans"][0]) == list(UPSTREAM_ORPHAN_KEYS)
    finding = next(f for f in shape["findings"] if f["id"] == "orphan_unresponsive")
    assert finding["severity"] == "warn"
    assert finding["remediation"]["command"].startswith("spec-kitty-supervisor doctor --reset")
    assert set(shape["reset_result"]) == {"swept", "skipped", "failed"}
    assert set(shape["reset_result"]["swept"][0]) == {
        "pid",
        "port",
        "package_version",
        "protocol_version",
        "cleanup_path",
        "reason",
    }


def test_the_upstream_shapes_daemon_is_the_current_one_with_its_own_protocol(
    supervisor: Supervisor,
) -> None:
    current = DaemonView(
        pid=4000,
        port=9405,
        url="http://127.0.0.1:9405",
        package_version="3.2.7",
        python="/usr/bin/python3",
        origin="spawned",
        state="unresponsive",
        role="current",
        started_at="2026-01-01T00:00:00+00:00",
    )
    heard = observed(9405, "supervised").record.model_copy(update={"pid": 4000})
    report = DoctorReport(supervisor=supervisor.view(), daemons=[current], listeners=[heard])

    shape = doctor_report_upstream_shape(report)

    assert shape["daemon"] == {
        "active": False,  # unresponsive: upstream's "recorded but not healthy"
        "pid": 4000,
        "port": 9405,
        "package_version": "3.2.7",
        "protocol_version": heard.protocol_version,
    }
    assert heard.protocol_version is not None
    # Without its listener (not scanned) the protocol is unknown, never made up.
    report = report.model_copy(update={"listeners": []})
    assert doctor_report_upstream_shape(report)["daemon"]["protocol_version"] is None


def test_upstream_severities_are_info_warn_and_critical() -> None:
    report = DoctorReport(
        findings=[
            DoctorFinding(severity=severity, code=severity, message="m")
            for severity in ("info", "warning", "error")
        ]
    )

    shape = doctor_report_upstream_shape(report)

    assert [f["severity"] for f in shape["findings"]] == ["info", "warn", "critical"]
    assert [f["remediation"] for f in shape["findings"]] == [None, None, None]


def test_ensure_compatible_answers_like_upstreams_ensure(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = EnsureResponse.model_validate(
        {
            "action": "reused",
            "daemon": {
                "pid": 99,
                "port": 9401,
                "url": "http://127.0.0.1:9401",
                "package_version": "3.2.7",
                "python": "/usr/bin/python3",
                "origin": "spawned",
                "state": "healthy",
                "role": "current",
                "started_at": "2026-01-01T00:00:00+00:00",
            },
        }
    )
    monkeypatch.setattr(_upstream, "ensure_sync_daemon", lambda *args: answer)

    assert ensure_sync_daemon_running_compatible() == DaemonStartOutcome(True, None, 99)


def test_ensure_compatible_reports_a_failure_as_start_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable(*args: object) -> object:
        raise SupervisorUnavailable("nothing accepts on /run/x.sock")

    monkeypatch.setattr(_upstream, "ensure_sync_daemon", unavailable)

    outcome = ensure_sync_daemon_running_compatible()

    assert not outcome.started
    assert outcome.pid is None
    assert outcome.skipped_reason is not None
    assert outcome.skipped_reason.startswith("start_failed: ")


def test_upstream_auth_doctor_is_none_without_a_supervisor(tmp_path: Path) -> None:
    assert upstream_auth_doctor(tmp_path / "root") is None


# --------------------------------------------------------------------------------------------
# The command line


class FakeDoctor:
    """Stands in for asking the supervisor; remembers each request."""

    def __init__(self, report: DoctorReport) -> None:
        self.report = report
        self.requests: list[ResetRequest | None] = []

    def __call__(self, args: argparse.Namespace, request: ResetRequest | None) -> dict[str, Any]:
        self.requests.append(request)
        return self.report.model_dump(mode="json")


def _args(**flags: Any) -> argparse.Namespace:
    defaults = {"root": None, "json": False, "reset": False, "force": False, "dry_run": False}
    return argparse.Namespace(**{**defaults, **flags})


@pytest.fixture
def doctor_with_choices(monkeypatch: pytest.MonkeyPatch, layout: RootLayout) -> FakeDoctor:
    report = build_report(
        layout,
        [
            observed(9401, "safe_auto"),
            observed(9402, "operator_required", "unresponsive"),
            observed(9403, "operator_required", "cross_root", daemon_root=OTHER_ROOT),
        ],
    )
    fake = FakeDoctor(report)
    monkeypatch.setattr(_doctor_cli, "_doctor", fake)
    return fake


def test_reset_on_a_terminal_asks_once_per_operator_required_daemon(
    monkeypatch: pytest.MonkeyPatch, doctor_with_choices: FakeDoctor
) -> None:
    monkeypatch.setattr(_doctor_cli, "_is_terminal", lambda: True)
    questions: list[str] = []
    answers = iter(["y", ""])

    def ask(question: str) -> str:
        questions.append(question)
        return next(answers)

    _doctor_cli.cmd_doctor(_args(reset=True), ask=ask)

    assert len(questions) == 2
    assert "port 9402" in questions[0]
    assert doctor_with_choices.requests[-1] == ResetRequest(confirmed_pids=[60_000 + 9402])


@pytest.mark.parametrize(
    "flags",
    [{"json": True}, {"force": True}, {"dry_run": True}],
    ids=["json", "force", "dry-run"],
)
def test_no_prompt_with_json_force_or_dry_run(
    monkeypatch: pytest.MonkeyPatch, doctor_with_choices: FakeDoctor, flags: dict[str, bool]
) -> None:
    monkeypatch.setattr(_doctor_cli, "_is_terminal", lambda: True)

    def never(question: str) -> str:
        raise AssertionError(f"asked {question!r}")

    _doctor_cli.cmd_doctor(_args(reset=True, **flags), ask=never)

    assert doctor_with_choices.requests[-1] is not None
    assert doctor_with_choices.requests[-1].confirmed_pids == []


def test_no_prompt_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, doctor_with_choices: FakeDoctor
) -> None:
    monkeypatch.setattr(_doctor_cli, "_is_terminal", lambda: False)

    def never(question: str) -> str:
        raise AssertionError(f"asked {question!r}")

    code = _doctor_cli.cmd_doctor(_args(reset=True), ask=never)

    assert doctor_with_choices.requests == [ResetRequest()]
    assert code == 1


def test_force_without_reset_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _doctor_cli.cmd_doctor(_args(force=True)) == 2
    assert "--reset" in capsys.readouterr().err


def test_doctor_failing_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(args: argparse.Namespace, request: ResetRequest | None) -> dict[str, Any]:
        raise _doctor_cli.DoctorFailed("a supervisor holds the lock but does not answer")

    monkeypatch.setattr(_doctor_cli, "_doctor", unavailable)

    assert _doctor_cli.cmd_doctor(_args()) == 2
    assert "does not answer" in capsys.readouterr().err


def test_the_human_report_shows_every_listener_with_class_and_reason(
    doctor_with_choices: FakeDoctor, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _doctor_cli.cmd_doctor(_args())

    out = capsys.readouterr().out
    assert code == 1
    for port, cleanup_class in (
        (9401, "safe_auto"),
        (9402, "operator_required"),
        (9403, "operator_required"),
    ):
        assert any(str(port) in line and cleanup_class in line for line in out.splitlines())
    assert "cross_root" in out
    assert "fix: `spec-kitty-supervisor doctor --reset" in out


def test_the_doctor_command_is_wired_into_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from spec_kitty_supervisor._cli import _COMMANDS, _build_parser

    args = _build_parser().parse_args(["doctor", "--reset", "--force", "--json"])
    received: list[argparse.Namespace] = []

    def recorded(namespace: argparse.Namespace) -> int:
        received.append(namespace)
        return 7

    monkeypatch.setattr(_doctor_cli, "cmd_doctor", recorded)

    assert _COMMANDS[args.command](args) == 7
    assert received == [args]
    assert (args.reset, args.force, args.json, args.dry_run) == (True, True, True, False)


def _served_report(supervisor: Supervisor, layout: RootLayout) -> DoctorReport:
    """A report as a running supervisor builds it: every kind of section filled."""
    daemon = DaemonView(
        pid=4000,
        port=9425,
        url="http://127.0.0.1:9425",
        package_version="3.2.4",
        python="/usr/bin/python3",
        origin="spawned",
        state="healthy",
        role="current",
        started_at="2026-01-01T00:00:00+00:00",
    )
    failed = FailedRecord(pid=60_000 + 9404, port=9404, failure_reason="still alive after KILL")
    return build_report(
        layout,
        [observed(9401, "safe_auto"), observed(9402, "operator_required", "unresponsive")],
        supervisor=supervisor.view(),
        daemons=[daemon],
        reset_result=ResetResult(failed=[failed]),
    )


def test_a_same_version_supervisors_answer_is_printed_as_the_models_dump(
    supervisor: Supervisor, layout: RootLayout
) -> None:
    # The CLI reads this version's answer without the models: what it prints must be exactly
    # what validating the answer into DoctorReport and dumping it would print.
    report = _served_report(supervisor, layout)
    body = report.model_dump_json().encode()  # as _api serialises every answer

    read = _doctor_cli._this_versions_report(body)

    through_the_model = DoctorReport.model_validate_json(body).model_dump(mode="json")
    assert json.dumps(read, indent=2) == json.dumps(through_the_model, indent=2)
    assert json.dumps(_doctor_cli.report_json(read), indent=2) == json.dumps(
        _doctor_cli.report_json(through_the_model), indent=2
    )


def test_another_versions_answer_goes_through_the_model(
    supervisor: Supervisor, layout: RootLayout
) -> None:
    answer = _served_report(supervisor, layout).model_dump(mode="json")
    answer["supervisor"]["version"] = "0.0.1"
    answer["a_field_of_a_newer_version"] = True
    del answer["schema_version"]  # an older one may lack a field this version has

    read = _doctor_cli._this_versions_report(json.dumps(answer).encode())

    assert "a_field_of_a_newer_version" not in read
    assert read["schema_version"] == 2
    assert list(read) == list(DoctorReport.model_fields)


def test_a_malformed_answer_is_a_doctor_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def answer(*args: object, **options: object) -> bytes:
        return b'{"supervisor": {"version": 7}, "findings": "x"}'

    monkeypatch.setattr(_doctor_cli, "ask_running_supervisor", answer)

    assert _doctor_cli.cmd_doctor(_args(json=True, root=str(tmp_path / "root"))) == 2
    assert "doctor failed" in capsys.readouterr().err


def test_the_cli_adds_the_integration_findings_as_the_models_dump(
    doctor_with_choices: FakeDoctor,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    finding = IntegrationFinding(
        severity="warning", code="integration_stale", message="m", remediation="`r`"
    )
    monkeypatch.setattr(_doctor_cli, "integration_findings", lambda root: [finding])

    assert _doctor_cli.cmd_doctor(_args(json=True)) == 1

    printed = json.loads(capsys.readouterr().out)
    assert printed["findings"][-1] == DoctorFinding(**finding.as_json()).model_dump(mode="json")
    assert list(printed["findings"][-1]) == list(DoctorFinding.model_fields)

"""The classification table, one listener at a time, with health answers real daemons give."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from spec_kitty_supervisor._classification import (
    Classification,
    KernelRootFacts,
    ListenerFacts,
    RecordedSingleton,
    RootFiles,
    SupervisedDaemon,
    SupervisorFacts,
    classify,
    prove_self_report,
    records_to_sweep,
)
from spec_kitty_supervisor._daemon_shape import (
    CmdlineFacts,
    build_daemon_argv,
    parse_cmdline,
)
from spec_kitty_supervisor._health import HealthAnswer
from spec_kitty_supervisor_client._models import ListenerRecord

ROOT = "/home/ada/.spec-kitty"
OTHER_ROOT = "/tmp/pytest-of-ada/pytest-7/home0/.spec-kitty"
UID = 1000
PYTHON = "/home/ada/.local/share/uv/tools/spec-kitty-cli/bin/python"
RESOLVED_PYTHON = "/usr/lib/python3.11/bin/python3.11"
START = "5e3c0f7c-boot:4711"

# Shapes as the contract document records them, with this test's pids, ports and tokens.
HEALTH_3_2_4: dict[str, Any] = {
    "status": "ok",
    "token": "5bd2a7e6c1f04d3e9a8b7c6d5e4f3a2b",
    "daemon_family": "sync",
    "singleton_scope_id": ROOT,
    "protocol_version": 1,
    "package_version": "3.2.4",
    "sync": {"running": False, "last_sync": None, "consecutive_failures": 0},
    "websocket_status": "Offline",
    "owner": {
        "pid": 5612,
        "port": 9401,
        "token": "<redacted>",
        "package_version": "3.2.4",
        "executable_path": RESOLVED_PYTHON,
        "source_checkout_path": "/home/ada/.local/share/uv/tools/spec-kitty-cli/lib/python3.11",
        "server_url": "https://spec-kitty-dev.fly.dev",
        "auth_principal": None,
        "auth_team": None,
        "auth_scope": None,
        "queue_db_path": f"{ROOT}/queue.db",
        "started_at": "2026-11-27T06:55:53+00:00",
    },
}

# 3.2.2/3.2.3: no daemon_family, no singleton_scope_id, and the owner block is whatever
# daemon last wrote the shared owner.json (here: another one, on 9418).
HEALTH_3_2_2: dict[str, Any] = {
    "status": "ok",
    "token": "48baba3d7b21a86d80d3c015156be88f",
    "protocol_version": 1,
    "package_version": "3.2.2",
    "sync": {"running": False, "last_sync": None, "consecutive_failures": 0},
    "websocket_status": "Offline",
    "owner": {
        "pid": 7001,
        "port": 9418,
        "token": "<redacted>",
        "package_version": "3.2.4",
        "executable_path": RESOLVED_PYTHON,
        "source_checkout_path": "/home/ada/.venvs/sk-3.2.4/lib/python3.11",
        "server_url": "https://spec-kitty-dev.fly.dev",
        "auth_principal": None,
        "auth_team": None,
        "auth_scope": None,
        "queue_db_path": f"{ROOT}/queue.db",
        "started_at": "2026-11-27T06:50:12+00:00",
    },
}


def health_3_2_4(pid: int, port: int, version: str = "3.2.4") -> HealthAnswer:
    payload = copy.deepcopy(HEALTH_3_2_4)
    payload["package_version"] = version
    payload["owner"].update(pid=pid, port=port, package_version=version)
    return HealthAnswer.from_payload(payload)


def health_3_2_2(token: str, version: str = "3.2.2") -> HealthAnswer:
    payload = copy.deepcopy(HEALTH_3_2_2)
    payload["token"] = token
    payload["package_version"] = version
    return HealthAnswer.from_payload(payload)


def daemon_argv(port: int, token: str, root: str | None = ROOT) -> CmdlineFacts:
    argv = build_daemon_argv(PYTHON, RESOLVED_PYTHON, root or "", port, token)
    if root is None:
        argv = argv[:3] + argv[4:]
    return parse_cmdline(argv)


def token_for(port: int) -> str:
    return f"{port:032x}"


def daemon(
    port: int = 9401,
    pid: int = 5612,
    *,
    version: str = "3.2.4",
    root: str | None = ROOT,
    uid: int | None = UID,
    answers: bool = True,
) -> ListenerFacts:
    """A spawn-shaped daemon whose health answer comes from itself."""
    token = token_for(port)
    health: HealthAnswer | None = None
    if answers:
        if version in ("3.2.2", "3.2.3"):
            health = health_3_2_2(token, version)
        else:
            health = health_3_2_4(pid, port, version)
    return ListenerFacts(
        port=port,
        pid=pid,
        uid=uid,
        process_start=START,
        cmdline=daemon_argv(port, token, root),
        health=health,
    )


def supervisor(**overrides: Any) -> SupervisorFacts:
    return SupervisorFacts(daemon_root=ROOT, uid=UID, **overrides)


def verdict(record: Classification) -> tuple[str, str | None]:
    return record.cleanup_class, record.skip_reason


# -------------------------------------------------------------------------------------------
# The family boundary


@pytest.mark.parametrize("port", [9399, 9450, 8080])
def test_port_outside_the_family_range_is_never_touch(port: int) -> None:
    record = classify(daemon(port=port), supervisor())

    assert verdict(record) == ("never_touch", "out_of_range")
    assert "outside the sync range" in record.why


@pytest.mark.parametrize("port", [9237, 9300, 9336])
def test_dashboard_port_is_never_touch_even_when_it_looks_like_our_daemon(port: int) -> None:
    record = classify(daemon(port=port), supervisor())

    assert verdict(record) == ("never_touch", "dashboard_range")


def test_supervisor_refuses_a_family_range_wider_than_the_sync_family() -> None:
    with pytest.raises(ValueError, match="inside 9400-9450"):
        supervisor(family_range=(9300, 9450))


def test_narrower_family_range_puts_the_rest_of_the_family_out_of_range() -> None:
    record = classify(daemon(port=9401), supervisor(family_range=(9425, 9450)))

    assert verdict(record) == ("never_touch", "out_of_range")


# -------------------------------------------------------------------------------------------
# Whose process


def test_another_users_daemon_is_never_touch() -> None:
    record = classify(daemon(uid=1001), supervisor())

    assert verdict(record) == ("never_touch", "other_user")
    assert record.uid == 1001


def test_supervisors_own_daemon_is_supervised() -> None:
    table = frozenset({SupervisedDaemon(pid=5612, port=9401, process_start=START)})

    record = classify(daemon(), supervisor(supervised=table, supervisor_running=True))

    assert verdict(record) == ("supervised", "supervised")
    assert record.identity_source == "supervisor_table"


def test_a_reused_pid_on_a_table_port_is_not_supervised() -> None:
    # Same pid and port as the table row, but another process start: the daemon died and
    # its pid now names someone else.
    table = frozenset({SupervisedDaemon(pid=5612, port=9401, process_start="5e3c0f7c-boot:1")})

    record = classify(daemon(), supervisor(supervised=table, supervisor_running=True))

    assert record.cleanup_class != "supervised"


def test_a_table_pid_on_another_port_is_not_supervised() -> None:
    table = frozenset({SupervisedDaemon(pid=5612, port=9402, process_start=START)})

    record = classify(daemon(), supervisor(supervised=table, supervisor_running=True))

    assert record.cleanup_class == "safe_auto"


# -------------------------------------------------------------------------------------------
# Rows 2 and 2b: is it spec-kitty at all


def test_silent_listener_without_spawn_shape_is_not_spec_kitty() -> None:
    listener = ListenerFacts(
        port=9420,
        pid=321,
        uid=UID,
        process_start=START,
        cmdline=parse_cmdline(["/usr/bin/python3", "-m", "http.server", "9420"]),
        health=None,
    )

    record = classify(listener, supervisor())

    assert verdict(record) == ("never_touch", "not_spec_kitty")
    assert record.daemon_family is None


def test_foreign_health_answer_without_spawn_shape_is_not_spec_kitty() -> None:
    listener = ListenerFacts(
        port=9420,
        pid=321,
        uid=UID,
        process_start=START,
        cmdline=parse_cmdline(["/usr/bin/node", "server.js"]),
        health=HealthAnswer.from_payload({"status": "ok", "uptime": 12}),
    )

    assert verdict(classify(listener, supervisor())) == ("never_touch", "not_spec_kitty")


def test_sync_shaped_health_without_spawn_shape_is_third_party() -> None:
    # Anything can answer the daemon's protocol; only the spawn shape is authority.
    listener = ListenerFacts(
        port=9401,
        pid=5612,
        uid=UID,
        process_start=START,
        cmdline=parse_cmdline(
            ["/usr/bin/python3", "impostor.py", f"--spec-kitty-daemon-root={ROOT}"]
        ),
        health=health_3_2_4(5612, 9401),
    )

    record = classify(listener, supervisor())

    assert verdict(record) == ("never_touch", "third_party")
    assert record.daemon_family == "sync"


def test_unreadable_argv_is_not_spawn_shaped() -> None:
    listener = ListenerFacts(
        port=9401, pid=5612, uid=UID, process_start=None, cmdline=None, health=None
    )

    assert verdict(classify(listener, supervisor())) == ("never_touch", "not_spec_kitty")


# -------------------------------------------------------------------------------------------
# Row 3: the recorded singleton


def test_recorded_singleton_without_a_supervisor_is_never_touch() -> None:
    facts = supervisor(recorded_singleton=RecordedSingleton(pid=5612, port=9401))

    record = classify(daemon(), facts)

    assert verdict(record) == ("never_touch", "is_recorded_singleton")
    assert record.is_recorded_singleton


def test_recorded_singleton_in_the_supervisors_table_is_supervised() -> None:
    facts = supervisor(
        recorded_singleton=RecordedSingleton(pid=5612, port=9401),
        supervised=frozenset({SupervisedDaemon(pid=5612, port=9401, process_start=START)}),
        supervisor_running=True,
    )

    record = classify(daemon(), facts)

    assert verdict(record) == ("supervised", "supervised")
    assert record.is_recorded_singleton


def test_recorded_daemon_an_old_cli_put_next_to_a_supervisor_is_classified_on() -> None:
    # The lifecycle adopts or retires it; the classification says it is provably ours.
    facts = supervisor(
        recorded_singleton=RecordedSingleton(pid=5612, port=9401), supervisor_running=True
    )

    record = classify(daemon(), facts)

    assert verdict(record) == ("safe_auto", None)
    assert record.is_recorded_singleton


def test_recorded_port_with_another_pid_is_not_the_singleton() -> None:
    facts = supervisor(recorded_singleton=RecordedSingleton(pid=9999, port=9401))

    record = classify(daemon(), facts)

    assert not record.is_recorded_singleton
    assert record.cleanup_class == "safe_auto"


# -------------------------------------------------------------------------------------------
# Rows 4 to 7: ours, perhaps, but not provably


def test_daemon_whose_pid_is_unknown_is_operator_required() -> None:
    listener = ListenerFacts(
        port=9401,
        pid=None,
        uid=UID,
        process_start=None,
        cmdline=None,
        health=health_3_2_4(5612, 9401),
    )

    record = classify(listener, supervisor())

    assert verdict(record) == ("operator_required", "missing_pid")
    assert not record.self_report_matches_listener


def test_daemon_whose_process_could_not_be_read_is_operator_required() -> None:
    # Signalling re-checks pid, start and uid; with none read there is nothing to re-check.
    listener = daemon()
    unread = ListenerFacts(
        port=listener.port,
        pid=listener.pid,
        uid=None,
        process_start=None,
        cmdline=listener.cmdline,
        health=listener.health,
    )

    record = classify(unread, supervisor())

    assert verdict(record) == ("operator_required", "missing_pid")
    assert "could not be read" in record.why


def test_pre_marker_daemon_is_operator_required() -> None:
    record = classify(daemon(root=None), supervisor())

    assert verdict(record) == ("operator_required", "pre_marker")
    assert record.daemon_root is None


# --------------------------------------------------------------------------------------------
# Row 5 for the first daemons (3.1.x): no marker, so the kernel proves the root, as files

ADA_HOME = (64769, 1310721)  # (st_dev, st_ino) of /home/ada
ADA_LOG = (64769, 1312001)  # of /home/ada/.spec-kitty/sync-daemon.log
ADA = RootFiles(daemon_log=ADA_LOG, home_dir=ADA_HOME)

# What a 3.1.10 daemon answers: no owner block, no family, and a version it cannot find.
HEALTH_3_1: dict[str, Any] = {
    "status": "ok",
    "protocol_version": 1,
    "package_version": "unknown",
    "sync": {"running": False, "last_sync": None, "consecutive_failures": 0},
    "websocket_status": "Offline",
}


def first_daemon(
    kernel: KernelRootFacts | None, port: int = 9405, *, token: str | None = None
) -> ListenerFacts:
    """A 3.1.x daemon as its own CLI spawns it: a two-line script, no marker, no owner."""
    argv_token = token_for(port)
    script = (
        "from specify_cli.sync.daemon import run_sync_daemon\n"
        f"run_sync_daemon({port}, {argv_token!r})\n"
    )
    return ListenerFacts(
        port=port,
        pid=6100,
        uid=UID,
        process_start=START,
        cmdline=parse_cmdline([PYTHON, "-c", script]),
        health=HealthAnswer.from_payload({**HEALTH_3_1, "token": token or argv_token}),
        kernel_root=kernel,
    )


def test_first_daemon_proven_by_the_kernel_is_safe_auto() -> None:
    listener = first_daemon(KernelRootFacts(stdout_file=ADA_LOG, home_dir=ADA_HOME))

    record = classify(listener, supervisor(root_files=ADA))

    assert verdict(record) == ("safe_auto", None)
    assert record.identity_source == "kernel_root"
    assert record.daemon_root == ROOT
    assert "R/sync-daemon.log" in record.why


@pytest.mark.parametrize(
    ("kernel", "root_files", "why"),
    [
        # Another HOME: its own .spec-kitty, its own log.
        (KernelRootFacts((64769, 2000001), (64769, 2000000)), ADA, "its HOME is not"),
        # Same HOME directory but its output goes elsewhere (a copy, another log).
        (KernelRootFacts((64769, 1312002), ADA_HOME), ADA, "its output is not"),
        # The same inode number on another device is another file.
        (KernelRootFacts(ADA_LOG, (64770, ADA_HOME[1])), ADA, "its HOME is not"),
        # macOS, or /proc unreadable: nothing the kernel said.
        (None, ADA, "could not be read"),
        (KernelRootFacts(None, None), ADA, "its HOME is not"),
        # A root under SPEC_KITTY_HOME is no $HOME/.spec-kitty: no 3.1 daemon serves it.
        (KernelRootFacts(ADA_LOG, ADA_HOME), RootFiles(ADA_LOG, None), "no $HOME/.spec-kitty"),
        # The root's log does not exist (any more): nothing to compare with.
        (KernelRootFacts(ADA_LOG, ADA_HOME), RootFiles(None, ADA_HOME), "its output is not"),
    ],
)
def test_first_daemon_without_the_kernels_proof_stays_operator_required(
    kernel: KernelRootFacts | None, root_files: RootFiles, why: str
) -> None:
    record = classify(first_daemon(kernel), supervisor(root_files=root_files))

    assert verdict(record) == ("operator_required", "pre_marker")
    assert why in record.why
    assert record.identity_source != "kernel_root"


def test_first_daemon_of_this_root_still_needs_its_own_token_in_its_answer() -> None:
    listener = first_daemon(
        KernelRootFacts(stdout_file=ADA_LOG, home_dir=ADA_HOME), token=token_for(9999)
    )

    record = classify(listener, supervisor(root_files=ADA))

    assert verdict(record) == ("operator_required", "token_mismatch")


def test_kernel_facts_never_override_a_marker_naming_another_root() -> None:
    listener = daemon(root=OTHER_ROOT)._replace(kernel_root=KernelRootFacts(ADA_LOG, ADA_HOME))

    record = classify(listener, supervisor(root_files=ADA))

    assert verdict(record) == ("operator_required", "cross_root")


def test_cross_root_daemon_is_operator_required() -> None:
    record = classify(daemon(root=OTHER_ROOT), supervisor())

    assert verdict(record) == ("operator_required", "cross_root")
    assert record.daemon_root == OTHER_ROOT
    assert OTHER_ROOT in record.why


def test_root_marker_with_a_trailing_slash_is_the_same_root() -> None:
    record = classify(daemon(root=ROOT + "/"), supervisor())

    assert record.cleanup_class == "safe_auto"


def test_unresponsive_daemon_of_this_root_is_operator_required() -> None:
    record = classify(daemon(answers=False), supervisor())

    assert verdict(record) == ("operator_required", "unresponsive")
    assert record.identity_source == "root_marker"
    assert record.protocol_version is None


# -------------------------------------------------------------------------------------------
# Row 8: the self-report must come from the listener, one proof per health shape


def test_3_2_4_daemon_proven_by_its_owner_block_is_safe_auto() -> None:
    record = classify(daemon(version="3.2.4"), supervisor())

    assert verdict(record) == ("safe_auto", None)
    assert record.identity_source == "owner_block"
    assert record.self_report_matches_listener


def test_3_2_4_owner_block_naming_another_pid_is_pid_port_mismatch() -> None:
    listener = daemon(version="3.2.4")
    listener = ListenerFacts(
        port=listener.port,
        pid=listener.pid,
        uid=listener.uid,
        process_start=listener.process_start,
        cmdline=listener.cmdline,
        health=health_3_2_4(pid=4242, port=9401),
    )

    record = classify(listener, supervisor())

    assert verdict(record) == ("operator_required", "pid_port_mismatch")
    assert record.identity_source == "owner_block"
    assert not record.self_report_matches_listener


def test_pre_3_2_4_daemon_proven_by_argv_token_is_safe_auto() -> None:
    record = classify(daemon(version="3.2.2"), supervisor())

    assert verdict(record) == ("safe_auto", None)
    assert record.identity_source == "argv_token"
    assert record.self_report_matches_listener


def test_pre_3_2_4_owner_block_describing_another_daemon_does_not_matter() -> None:
    # HEALTH_3_2_2's owner block names pid 7001 on 9418: the shared file's last writer.
    listener = daemon(port=9405, pid=6100, version="3.2.2")

    record = classify(listener, supervisor())

    assert record.cleanup_class == "safe_auto"
    # Nor is that other daemon's queue reported as this one's.
    assert record.owner_present
    assert record.queue_db_path is None
    assert record.server_url is None


def test_pre_3_2_4_health_with_another_token_is_token_mismatch() -> None:
    listener = daemon(version="3.2.2")
    listener = ListenerFacts(
        port=listener.port,
        pid=listener.pid,
        uid=listener.uid,
        process_start=listener.process_start,
        cmdline=listener.cmdline,
        health=health_3_2_2(token="ffffffffffffffffffffffffffffffff"),
    )

    record = classify(listener, supervisor())

    assert verdict(record) == ("operator_required", "token_mismatch")
    assert record.identity_source == "argv_token"


def test_pre_3_2_4_daemon_listening_on_another_port_than_its_argv_is_token_mismatch() -> None:
    token = token_for(9401)
    listener = ListenerFacts(
        port=9402,
        pid=5612,
        uid=UID,
        process_start=START,
        cmdline=daemon_argv(9401, token),
        health=health_3_2_2(token),
    )

    record = classify(listener, supervisor())

    assert verdict(record) == ("operator_required", "token_mismatch")
    assert "argv names port 9401" in record.why


def test_proof_is_chosen_by_health_shape_not_by_version_string() -> None:
    # A 3.2.4 answer carries daemon_family; its proof never looks at argv.
    proof = prove_self_report(health_3_2_4(5612, 9401), pid=5612, port=9401, cmdline=None)
    assert (proof.identity_source, proof.matches) == ("owner_block", True)

    # An older answer without argv to compare against cannot be proven.
    proof = prove_self_report(health_3_2_2(token_for(9401)), pid=5612, port=9401, cmdline=None)
    assert (proof.identity_source, proof.matches) == ("argv_token", False)


def test_owner_block_with_boolean_pid_is_no_proof() -> None:
    payload = copy.deepcopy(HEALTH_3_2_4)
    payload["owner"].update(pid=True, port=9401)

    proof = prove_self_report(
        HealthAnswer.from_payload(payload), pid=1, port=9401, cmdline=daemon_argv(9401, "0" * 32)
    )

    assert not proof.matches


# -------------------------------------------------------------------------------------------
# Row 9 and what a record carries


def test_mixed_3_2_2_3_2_3_3_2_4_orphans_of_this_root_are_all_safe_auto() -> None:
    # The machine from the issue: 18 orphans on 9401-9418, three versions.
    versions = ["3.2.2", "3.2.3", "3.2.4"]
    orphans = [
        daemon(port=9401 + index, pid=6000 + index, version=versions[index % 3])
        for index in range(18)
    ]

    records = [classify(orphan, supervisor(current_package_version="3.2.4")) for orphan in orphans]

    assert [record.cleanup_class for record in records] == ["safe_auto"] * 18
    assert {record.identity_source for record in records} == {"owner_block", "argv_token"}


def test_version_mismatch_is_staleness_evidence_not_a_reason_to_skip() -> None:
    record = classify(daemon(version="3.2.2"), supervisor(current_package_version="3.2.7"))

    assert record.cleanup_class == "safe_auto"
    assert "stale by version 3.2.2 (current 3.2.7)" in record.why


def test_interpreter_mismatch_is_staleness_evidence_not_a_reason_to_skip() -> None:
    record = classify(daemon(), supervisor(current_python="/opt/python3.12/bin/python3.12"))

    assert record.cleanup_class == "safe_auto"
    assert f"interpreter {RESOLVED_PYTHON}" in record.why


def test_record_carries_upstream_schema_2_keys_with_owner_fields_from_the_owner_block() -> None:
    record = classify(daemon(), supervisor())

    assert record._asdict() == {
        "daemon_family": "sync",
        "pid": 5612,
        "port": 9401,
        "protocol_version": 1,
        "package_version": "3.2.4",
        "singleton_scope_id": ROOT,
        "daemon_root": ROOT,
        "queue_db_path": f"{ROOT}/queue.db",
        "auth_scope": None,
        "server_url": "https://spec-kitty-dev.fly.dev",
        "owner_present": True,
        "identity_source": "owner_block",
        "executable_summary": RESOLVED_PYTHON,
        "spawn_shape_ok": True,
        "self_report_matches_listener": True,
        "is_recorded_singleton": False,
        "cleanup_class": "safe_auto",
        "skip_reason": None,
        "uid": UID,
        "process_start": START,
        "why": "A daemon of this root at 3.2.4; its owner block names pid 5612, port 9401.",
    }


def test_pre_3_2_4_record_names_its_root_from_the_marker() -> None:
    record = classify(daemon(version="3.2.3"), supervisor())

    assert record.singleton_scope_id == ROOT
    assert record.daemon_root == ROOT
    assert record.daemon_family == "sync"


def test_every_why_is_one_sentence() -> None:
    cases = [
        daemon(port=9300),
        daemon(uid=0),
        daemon(root=None),
        daemon(root=OTHER_ROOT),
        daemon(answers=False),
        daemon(version="3.2.2"),
    ]
    for listener in cases:
        why = classify(listener, supervisor()).why
        assert why[0].isupper()
        assert why.endswith(".")
        assert why.count(". ") == 0


# -------------------------------------------------------------------------------------------
# What a sweep may act on


def _record(port: int, cleanup_class: str, pid: int | None = None) -> ListenerRecord:
    return ListenerRecord.model_validate(
        {"port": port, "pid": port if pid is None else pid, "cleanup_class": cleanup_class}
    )


RECORDS = [
    _record(9401, "safe_auto"),
    _record(9402, "operator_required"),
    _record(9403, "never_touch"),
    _record(9404, "supervised"),
    _record(9405, "operator_required"),
]


def test_sweep_takes_only_safe_auto_by_default() -> None:
    assert [record.port for record in records_to_sweep(RECORDS)] == [9401]


def test_forced_sweep_adds_operator_required_but_never_never_touch_or_supervised() -> None:
    assert [record.port for record in records_to_sweep(RECORDS, force=True)] == [9401, 9402, 9405]


def test_sweep_adds_operator_required_pids_the_operator_confirmed() -> None:
    chosen = records_to_sweep(RECORDS, confirmed_pids=[9405, 9403, 9404])

    assert [record.port for record in chosen] == [9401, 9405]


def test_sweep_skips_records_it_could_not_recheck_at_signal_time() -> None:
    pidless = ListenerRecord(port=9406, pid=None, cleanup_class="operator_required")
    # Wire records are not trusted to have respected the family boundary.
    out_of_range = _record(9300, "safe_auto")

    assert records_to_sweep([pidless, out_of_range], force=True) == []

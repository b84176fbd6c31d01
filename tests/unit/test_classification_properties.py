"""Properties of the classification table over every combination of facts.

The strategies draw pids, ports, tokens, roots and starts from small pools so that the
coincidences that matter (an owner block naming the listener, an argv token equal to the
health token, a table row matching the listener) happen often, alongside arbitrary values.
"""

from __future__ import annotations

import posixpath
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec_kitty_supervisor._classification import (
    Classification,
    FileId,
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
from spec_kitty_supervisor._daemon_shape import CmdlineFacts, build_daemon_argv, parse_cmdline
from spec_kitty_supervisor._health import HealthAnswer
from spec_kitty_supervisor_client._models import FAMILY_PORT_RANGE

T = TypeVar("T")

ROOT = "/home/ada/.spec-kitty"
UID = 1000
PYTHON = "/usr/bin/python3.11"
DASHBOARD = (9237, 9337)
TOKENS = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"]

# Weighted towards the facts of a provable daemon, so that every row is reached often.
pids = st.sampled_from([100, 101, 102, 100, 101, 102, None])
starts = st.sampled_from(["boot:1", "boot:1", "boot:1", "boot:2", None])
uids = st.sampled_from([UID, UID, UID, UID, None, 0, 1001])
family_ports = st.integers(min_value=9400, max_value=9449)
interesting_ports = st.sampled_from(
    [80, 9236, 9237, 9300, 9336, 9337, 9399, 9400, 9401, 9402, 9424, 9425, 9449, 9450]
)


def mostly(usual: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` three times in four (``one_of`` alone would pick evenly)."""
    return st.sampled_from([usual, usual, usual, other]).flatmap(lambda chosen: chosen)


ports = mostly(family_ports, st.one_of(interesting_ports, st.integers(0, 65535)))
roots = st.sampled_from(
    [ROOT, ROOT, ROOT, ROOT + "/", None, "/home/bob/.spec-kitty", "/tmp/x/.spec-kitty"]
)
tokens = st.sampled_from([*TOKENS, None])

# Files as the kernel names them, (st_dev, st_ino). The root's HOME and log, and look-alikes:
# another HOME's, the same inode on another device, the root's log seen as a HOME.
ROOT_HOME: FileId = (1, 20)
ROOT_LOG: FileId = (1, 10)
OTHER_HOMES: list[FileId | None] = [(1, 21), (2, 20), ROOT_LOG, None]
OTHER_LOGS: list[FileId | None] = [(1, 11), (2, 10), ROOT_HOME, None]
versions = st.sampled_from(["3.2.2", "3.2.3", "3.2.4", "3.2.7"])


def first_daemon_argv(port: int, token: str) -> list[str]:
    """How a 3.1.x CLI spawns its daemon: a two-line script and no marker at all."""
    script = (
        f"from specify_cli.sync.daemon import run_sync_daemon\nrun_sync_daemon({port}, {token!r})\n"
    )
    return [PYTHON, "-c", script]


@st.composite
def cmdlines(draw: st.DrawFn, port: int) -> CmdlineFacts | None:
    kind = draw(
        st.sampled_from(["unreadable", "daemon", "daemon", "daemon", "first_daemon", "stranger"])
    )
    if kind == "unreadable":
        return None
    if kind == "first_daemon":
        argv_port = draw(mostly(st.just(port), ports))
        return parse_cmdline(first_daemon_argv(argv_port, draw(st.sampled_from(TOKENS))))
    root = draw(roots)
    if kind == "stranger":
        argv = ["/usr/bin/python3", "-m", "http.server", str(port)]
        return parse_cmdline(argv + ([f"--spec-kitty-daemon-root={root}"] if root else []))
    argv_port = draw(mostly(st.just(port), ports))
    token = draw(st.sampled_from(TOKENS[:1] * 3 + TOKENS[1:]))
    argv = build_daemon_argv(PYTHON, PYTHON, root or "", argv_port, token)
    return parse_cmdline(argv if root is not None else argv[:3] + argv[4:])


@st.composite
def healths(draw: st.DrawFn, pid: int | None, port: int) -> HealthAnswer | None:
    kind = draw(st.sampled_from(["silent", "3.2.4+", "3.2.4+", "older", "older", "foreign"]))
    if kind == "silent":
        return None
    if kind == "foreign":
        return HealthAnswer.from_payload(
            draw(st.dictionaries(st.sampled_from(["status", "uptime", "token"]), st.text()))
        )
    payload: dict[str, Any] = {
        "status": "ok",
        "token": draw(mostly(st.just(TOKENS[0]), tokens)),
        "protocol_version": 1,
        "package_version": draw(versions),
        "sync": {"running": draw(st.booleans())},
    }
    owner_choices: list[Any] = [
        None,
        "not a dict",
        {"pid": True, "port": port},
        {
            "pid": draw(mostly(st.just(pid), pids)),
            "port": draw(mostly(st.just(port), ports)),
            "queue_db_path": f"{ROOT}/queue.db",
            "server_url": "https://spec-kitty-dev.fly.dev",
        },
    ]
    owner = draw(st.sampled_from(owner_choices + owner_choices[-1:] * 3))
    if owner is not None:
        payload["owner"] = owner
    if kind == "3.2.4+":
        payload["daemon_family"] = "sync"
        payload["singleton_scope_id"] = draw(roots)
    return HealthAnswer.from_payload(payload)


kernel_roots = st.one_of(
    st.none(),
    st.builds(
        KernelRootFacts,
        stdout_file=mostly(st.just(ROOT_LOG), st.sampled_from(OTHER_LOGS)),
        home_dir=mostly(st.just(ROOT_HOME), st.sampled_from(OTHER_HOMES)),
    ),
)
root_files = st.sampled_from(
    [RootFiles(ROOT_LOG, ROOT_HOME)] * 4
    + [RootFiles(None, ROOT_HOME), RootFiles(ROOT_LOG, None), None]
)


@st.composite
def listeners(draw: st.DrawFn) -> ListenerFacts:
    port = draw(ports)
    pid = draw(pids)
    return ListenerFacts(
        port=port,
        pid=pid,
        uid=draw(uids),
        process_start=draw(starts),
        cmdline=draw(cmdlines(port)),
        health=draw(healths(pid, port)),
        kernel_root=draw(kernel_roots),
    )


@st.composite
def supervisors(draw: st.DrawFn, listener: ListenerFacts) -> SupervisorFacts:
    table_pids = st.sampled_from([listener.pid or 100, 100, 101, 102])
    rows = st.builds(
        SupervisedDaemon,
        pid=table_pids,
        port=st.one_of(st.just(listener.port), ports),
        process_start=st.sampled_from(["boot:1", "boot:2"]),
    )
    low = draw(st.integers(FAMILY_PORT_RANGE[0], FAMILY_PORT_RANGE[1] - 1))
    high = draw(st.integers(low + 1, FAMILY_PORT_RANGE[1]))
    family_range = draw(
        st.sampled_from([*[FAMILY_PORT_RANGE] * 5, (9400, 9425), (9425, 9450), (low, high)])
    )
    return SupervisorFacts(
        daemon_root=ROOT,
        uid=UID,
        supervised=frozenset(draw(st.lists(rows, max_size=2))),
        recorded_singleton=draw(
            st.one_of(
                st.none(),
                st.builds(
                    RecordedSingleton,
                    pid=table_pids,
                    port=st.one_of(st.just(listener.port), ports),
                ),
            )
        ),
        supervisor_running=draw(st.booleans()),
        family_range=family_range,
        current_package_version=draw(st.one_of(st.none(), versions)),
        current_python=draw(st.sampled_from([None, PYTHON, "/opt/py312/bin/python3.12"])),
        root_files=draw(root_files),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[ListenerFacts, SupervisorFacts]:
    listener = draw(listeners())
    return listener, draw(supervisors(listener))


def _self_report_is_proven(listener: ListenerFacts) -> bool:
    """An independent statement of the identity contract, to hold the engine to."""
    health = listener.health
    if health is None or listener.pid is None:
        return False
    if health.daemon_family is not None:
        owner = health.owner or {}
        return (
            type(owner.get("pid")) is int
            and owner.get("pid") == listener.pid
            and type(owner.get("port")) is int
            and owner.get("port") == listener.port
        )
    cmdline = listener.cmdline
    return (
        cmdline is not None
        and cmdline.argv_port == listener.port
        and cmdline.argv_token is not None
        and cmdline.argv_token == health.token
    )


def _in_table(listener: ListenerFacts, supervisor: SupervisorFacts) -> bool:
    return any(
        (row.pid, row.port) == (listener.pid, listener.port) for row in supervisor.supervised
    )


def _in_family(port: int, supervisor: SupervisorFacts) -> bool:
    low, high = supervisor.family_range
    return low <= port < high and not DASHBOARD[0] <= port < DASHBOARD[1]


def _same_root(listener: ListenerFacts) -> bool:
    marker = listener.cmdline.root_marker if listener.cmdline is not None else None
    return marker is not None and posixpath.normpath(marker) == ROOT


def _kernel_says_this_root(listener: ListenerFacts, supervisor: SupervisorFacts) -> bool:
    """A daemon without marker is this root's when the kernel shows its HOME holds the root
    and its output open on the root's log, compared as files, and both were read."""
    marker = listener.cmdline.root_marker if listener.cmdline is not None else None
    kernel, files = listener.kernel_root, supervisor.root_files
    return (
        marker is None
        and kernel is not None
        and files is not None
        and files.home_dir is not None
        and files.daemon_log is not None
        and kernel.home_dir == files.home_dir
        and kernel.stdout_file == files.daemon_log
    )


situation = situations()


EVERY_ROW = {
    ("safe_auto", None),
    ("supervised", "supervised"),
    ("never_touch", "out_of_range"),
    ("never_touch", "dashboard_range"),
    ("never_touch", "other_user"),
    ("never_touch", "not_spec_kitty"),
    ("never_touch", "third_party"),
    ("never_touch", "is_recorded_singleton"),
    ("operator_required", "missing_pid"),
    ("operator_required", "pre_marker"),
    ("operator_required", "cross_root"),
    ("operator_required", "unresponsive"),
    ("operator_required", "pid_port_mismatch"),
    ("operator_required", "token_mismatch"),
}


def test_safe_auto_exactly_when_every_condition_of_the_contract_holds() -> None:
    reached: set[tuple[str, str | None]] = set()

    @settings(max_examples=1500)
    @given(situation)
    def check(case: tuple[ListenerFacts, SupervisorFacts]) -> None:
        listener, supervisor = case
        recorded = supervisor.recorded_singleton
        spared_as_singleton = (
            recorded is not None
            and (listener.pid, listener.port) == (recorded.pid, recorded.port)
            and not supervisor.supervisor_running
        )
        provably_ours = (
            _in_family(listener.port, supervisor)
            and listener.uid == UID
            and listener.pid is not None
            and listener.process_start is not None
            and listener.cmdline is not None
            and listener.cmdline.spawn_shape
            and (_same_root(listener) or _kernel_says_this_root(listener, supervisor))
            and _self_report_is_proven(listener)
            and not spared_as_singleton
        )

        record = classify(listener, supervisor)
        reached.add((record.cleanup_class, record.skip_reason))

        if record.cleanup_class == "safe_auto":
            assert provably_ours
        elif provably_ours:
            # The only other fate of a provably-ours daemon is the supervisor's own table.
            assert record.cleanup_class == "supervised"
            assert _in_table(listener, supervisor)

    check()

    # Every row was exercised, so the property above did not hold vacuously.
    assert reached == EVERY_ROW


@st.composite
def first_daemon_situations(draw: st.DrawFn) -> tuple[ListenerFacts, SupervisorFacts]:
    """Only 3.1-shaped daemons (no marker): every draw is about the kernel's facts."""
    port = draw(family_ports)
    argv_port = draw(mostly(st.just(port), family_ports))
    token = draw(st.sampled_from(TOKENS))
    listener = ListenerFacts(
        port=port,
        pid=100,
        uid=UID,
        process_start="boot:1",
        cmdline=parse_cmdline(first_daemon_argv(argv_port, token)),
        health=HealthAnswer.from_payload(
            {
                "status": "ok",
                "token": draw(mostly(st.just(token), tokens)),
                "protocol_version": 1,
                "package_version": "unknown",
            }
        ),
        kernel_root=draw(kernel_roots),
    )
    return listener, SupervisorFacts(daemon_root=ROOT, uid=UID, root_files=draw(root_files))


def test_a_daemon_without_marker_is_safe_auto_exactly_when_the_kernel_proves_its_root() -> None:
    reached: set[tuple[str, str | None]] = set()

    @settings(max_examples=400)
    @given(first_daemon_situations())
    def check(case: tuple[ListenerFacts, SupervisorFacts]) -> None:
        listener, supervisor = case
        record = classify(listener, supervisor)
        reached.add((record.cleanup_class, record.skip_reason))

        proven = _kernel_says_this_root(listener, supervisor) and _self_report_is_proven(listener)
        assert (record.cleanup_class == "safe_auto") == proven
        if record.cleanup_class == "safe_auto":
            assert record.identity_source == "kernel_root"
            assert record.daemon_root == ROOT

    check()

    assert reached == {
        ("safe_auto", None),
        ("operator_required", "pre_marker"),
        ("operator_required", "token_mismatch"),
    }


@given(situation)
def test_port_outside_the_family_is_never_touched(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case
    low, high = FAMILY_PORT_RANGE

    record = classify(listener, supervisor)

    if not low <= listener.port < high:
        assert record.cleanup_class == "never_touch"
        assert record.skip_reason in ("out_of_range", "dashboard_range")


@given(situation)
def test_dashboard_port_is_never_touched(case: tuple[ListenerFacts, SupervisorFacts]) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if DASHBOARD[0] <= listener.port < DASHBOARD[1]:
        assert (record.cleanup_class, record.skip_reason) == ("never_touch", "dashboard_range")


@given(situation)
def test_another_users_listener_is_never_touched(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if listener.uid is not None and listener.uid != UID:
        assert record.cleanup_class == "never_touch"


@given(situation)
def test_another_roots_daemon_is_never_safe_auto(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if not _same_root(listener) and not _kernel_says_this_root(listener, supervisor):
        assert record.cleanup_class != "safe_auto"


@settings(max_examples=1000)
@given(situation)
def test_no_combination_of_facts_makes_another_homes_daemon_safe_auto(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case
    marker = listener.cmdline.root_marker if listener.cmdline is not None else None
    kernel = listener.kernel_root
    # Another HOME's daemon: its marker names another root, or it has none and the kernel
    # does not show this root's HOME (another directory, or nothing readable).
    another_homes = (marker is not None and posixpath.normpath(marker) != ROOT) or (
        marker is None and (kernel is None or kernel.home_dir != ROOT_HOME)
    )

    record = classify(listener, supervisor)

    if another_homes:
        assert record.cleanup_class != "safe_auto"
        assert record.identity_source != "kernel_root"


@given(situation)
def test_no_health_answer_is_never_safe_auto(case: tuple[ListenerFacts, SupervisorFacts]) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if listener.health is None:
        assert record.cleanup_class != "safe_auto"
        assert not record.self_report_matches_listener


@given(situation)
def test_unknown_pid_is_never_safe_auto_nor_supervised(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if listener.pid is None:
        assert record.cleanup_class in ("never_touch", "operator_required")


@given(situation)
def test_no_spawn_shape_is_never_safe_auto(case: tuple[ListenerFacts, SupervisorFacts]) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if listener.cmdline is None or not listener.cmdline.spawn_shape:
        assert record.cleanup_class != "safe_auto"
        assert not record.spawn_shape_ok


@given(situation)
def test_failed_proof_for_its_health_shape_is_never_safe_auto(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if listener.health is not None and listener.pid is not None:
        proof = prove_self_report(
            listener.health, pid=listener.pid, port=listener.port, cmdline=listener.cmdline
        )
        expected_source = "owner_block" if listener.health.daemon_family else "argv_token"
        assert proof.identity_source == expected_source
        assert proof.matches == _self_report_is_proven(listener)
        assert record.self_report_matches_listener == proof.matches
        if not proof.matches:
            assert record.cleanup_class != "safe_auto"


@given(situation)
def test_supervised_only_for_members_of_the_supervisors_table(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if record.cleanup_class == "supervised":
        assert _in_table(listener, supervisor)
        assert record.skip_reason == "supervised"


@given(situation)
def test_recorded_singleton_without_a_supervisor_is_never_safe_auto(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    if record.is_recorded_singleton and not supervisor.supervisor_running:
        assert record.cleanup_class != "safe_auto"


@given(situation)
def test_skip_reason_is_absent_exactly_for_safe_auto(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case

    record = classify(listener, supervisor)

    assert (record.skip_reason is None) == (record.cleanup_class == "safe_auto")
    assert record.why.endswith(".")


@given(situation)
def test_version_and_interpreter_never_change_the_verdict(
    case: tuple[ListenerFacts, SupervisorFacts],
) -> None:
    listener, supervisor = case
    unaware = SupervisorFacts(
        daemon_root=supervisor.daemon_root,
        uid=supervisor.uid,
        supervised=supervisor.supervised,
        recorded_singleton=supervisor.recorded_singleton,
        supervisor_running=supervisor.supervisor_running,
        family_range=supervisor.family_range,
        root_files=supervisor.root_files,
    )

    aware_record = classify(listener, supervisor)
    unaware_record = classify(listener, unaware)

    assert (aware_record.cleanup_class, aware_record.skip_reason) == (
        unaware_record.cleanup_class,
        unaware_record.skip_reason,
    )


# Eight situations per example is a lot of drawing; on a busy machine that is slow, not wrong.
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(situations(), max_size=8),
    st.booleans(),
    st.lists(st.sampled_from([100, 101, 102]), max_size=3),
)
def test_sweep_acts_only_on_safe_auto_and_forced_or_confirmed_operator_required(
    cases: list[tuple[ListenerFacts, SupervisorFacts]], force: bool, confirmed: list[int]
) -> None:
    records: list[Classification] = [classify(listener, sup) for listener, sup in cases]

    chosen = records_to_sweep(records, force=force, confirmed_pids=confirmed)

    for record in chosen:
        assert record.pid is not None
        assert FAMILY_PORT_RANGE[0] <= record.port < FAMILY_PORT_RANGE[1]
        assert record.cleanup_class in ("safe_auto", "operator_required")
        if record.cleanup_class == "operator_required":
            assert force or record.pid in confirmed
    assert all(record in chosen for record in records if record.cleanup_class == "safe_auto")

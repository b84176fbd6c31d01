"""``doctor`` and its sweeps: what listens in the family range, what needs doing, doing it.

One story, told in three places:

* the running supervisor's start-up and periodic sweeps (:func:`sweep_root`, ``safe_auto``
  only) and its ``GET /v1/doctor`` / ``POST /v1/reset`` (:func:`supervisor_doctor`, served
  by :mod:`._doctor_routes`);
* the CLI when no supervisor runs (:func:`standalone_doctor`), which holds the supervisor's
  own lock meanwhile, so that two sweeps of one root never run at once.

Each observes under ``R/sync-daemon.lock`` (so no upstream CLI spawns or records a daemon
between what we saw and what we stop), sweeps (:mod:`._sweep`), and re-observes so that the
report shows the state after the sweep. Findings name the command that fixes them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from spec_kitty_supervisor_client._models import (
    DaemonView,
    DoctorFinding,
    DoctorReport,
    ListenerRecord,
    ResetRequest,
    ResetResult,
    Settings,
    SupervisorView,
)
from spec_kitty_supervisor_client._releases import UNKNOWN_VERSION

from ._classification import RecordedSingleton, SupervisedDaemon, SupervisorFacts
from ._discovery import Observation, observe
from ._identity import read_identity
from ._installed import cli_versions_on_path, interpreter_release
from ._layout import RootLayout
from ._legacy_state import (
    LegacyRecord,
    hold_legacy_lock,
    read_legacy_state,
    remove_legacy_state,
)
from ._lock import SupervisorLock
from ._units import is_default_root

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    # Only the running supervisor hands doctor its table and ledger: the CLI observing
    # without one imports neither (the table's models, the ledger's structlog).
    from ._ledger import Ledger
    from ._table import Table

__all__ = [
    "DoctorUnavailable",
    "RunningSupervisor",
    "build_report",
    "standalone_doctor",
    "supervisor_doctor",
    "unwritable_root_doctor",
    "sweep_root",
]

#: Narrows the ports doctor and sweeps scan (half-open ``LO-HI``) inside the family range;
#: the whole family by default. Tests use it to stay on their own sub-range.
#: How long a sweep waits for an upstream CLI to release ``R/sync-daemon.lock`` (it may hold
#: it ~21 s while it waits for a daemon's health).
LEGACY_LOCK_WAIT = 30.0


class DoctorUnavailable(RuntimeError):
    """Raised when doctor can neither ask a supervisor nor act itself (its lock is held)."""


class RunningSupervisor(Protocol):
    """What doctor needs of the running supervisor (:class:`._core.Supervisor` is one).

    A protocol rather than an import: the supervisor schedules doctor's sweeps, so doctor
    must not import the supervisor back.
    """

    @property
    def layout(self) -> RootLayout: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def table(self) -> Table: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def lifecycle_lock(self) -> contextlib.AbstractAsyncContextManager[None]: ...
    @property
    def exiting(self) -> bool: ...
    def view(self) -> SupervisorView: ...
    def daemon_views(self) -> list[DaemonView]: ...


# --------------------------------------------------------------------------------------------
# Facts: who asks


def _recorded_singleton(layout: RootLayout) -> RecordedSingleton | None:
    recorded = read_legacy_state(layout.legacy_state)
    return RecordedSingleton(recorded.pid, recorded.port) if recorded is not None else None


def supervisor_facts(layout: RootLayout, settings: Settings, table: Table) -> SupervisorFacts:
    """The running supervisor's table as classification facts (read under the legacy lock)."""
    current = table.current
    return SupervisorFacts(
        daemon_root=str(layout.daemon_root),
        uid=os.getuid(),
        supervised=frozenset(
            SupervisedDaemon(pid=row.pid, port=row.port, process_start=row.process_start)
            for row in table.daemons
        ),
        recorded_singleton=_recorded_singleton(layout),
        supervisor_running=True,
        family_range=settings.scan_range,
        current_package_version=current.package_version if current is not None else None,
        current_python=current.resolved_python if current is not None else None,
    )


def standalone_facts(layout: RootLayout, settings: Settings) -> SupervisorFacts:
    """Facts without a supervisor: the daemon ``R/sync-daemon`` names is the live one."""
    return SupervisorFacts(
        daemon_root=str(layout.daemon_root),
        uid=os.getuid(),
        recorded_singleton=_recorded_singleton(layout),
        supervisor_running=False,
        family_range=settings.scan_range,
    )


def _current_as_state(table: Table) -> LegacyRecord | None:
    current = table.current
    if current is None:
        return None
    return LegacyRecord(current.url, current.port, current.token, current.pid)


# --------------------------------------------------------------------------------------------
# The report


def _command(layout: RootLayout, *words: str) -> str:
    """A copy-pasteable command line for this root (``--root`` only when not the default)."""
    argv = ["spec-kitty-supervisor", *words]
    if not is_default_root(layout.daemon_root, Path.home()):
        argv += ["--root", str(layout.daemon_root)]
    return shlex.join(argv)


def _ports(records: list[ListenerRecord]) -> str:
    return ", ".join(str(record.port) for record in records)


def _orphan_findings(
    layout: RootLayout, listeners: list[ListenerRecord], supervisor_running: bool
) -> list[DoctorFinding]:
    findings: list[DoctorFinding] = []
    safe = [r for r in listeners if r.cleanup_class == "safe_auto" and not r.is_recorded_singleton]
    if safe:
        later = (
            " (the running supervisor also sweeps them periodically)" if supervisor_running else ""
        )
        findings.append(
            DoctorFinding(
                severity="warning",
                code="orphans_safe_auto",
                message=f"{len(safe)} orphan daemon(s) of this root on port(s) {_ports(safe)}: "
                f"proven ours and not the current daemon{later}",
                remediation=f"`{_command(layout, 'doctor', '--reset')}`",
            )
        )
    for record in listeners:
        if record.cleanup_class != "operator_required":
            continue
        force = _command(layout, "doctor", "--reset", "--force")
        remediation = (
            f"`{force}`, or answer y for pid {record.pid} at "
            f"`{_command(layout, 'doctor', '--reset')}` on a terminal"
        )
        if record.skip_reason == "cross_root" and record.daemon_root:
            other = shlex.join(
                ["spec-kitty-supervisor", "doctor", "--reset", "--root", record.daemon_root]
            )
            remediation = f"`{other}` cleans it as that root's orphan; or {remediation}"
        if record.pid is None:
            remediation = (
                f"find who listens (`ss -ltnp 'sport = :{record.port}'`) and stop it yourself"
            )
        findings.append(
            DoctorFinding(
                severity="warning",
                code=f"orphan_{record.skip_reason or 'operator_required'}",
                message=f"pid {record.pid} on port {record.port} looks like a sync daemon but "
                f"needs an operator's consent: {record.why}",
                remediation=remediation,
            )
        )
    strangers = [
        r
        for r in listeners
        if r.cleanup_class == "never_touch" and r.skip_reason != "is_recorded_singleton"
    ]
    if strangers:
        findings.append(
            DoctorFinding(
                severity="info",
                code="family_ports_held",
                message=f"port(s) {_ports(strangers)} of the sync range are held by processes "
                "that are not this root's daemons; nothing ever signals them",
            )
        )
    return findings


def _daemon_findings(
    layout: RootLayout, daemons: list[DaemonView], quarantine_reason: str | None
) -> list[DoctorFinding]:
    findings: list[DoctorFinding] = []
    if quarantine_reason is not None:
        findings.append(
            DoctorFinding(
                severity="error",
                code="root_quarantined",
                message=f"the supervisor stopped restarting daemons: {quarantine_reason}",
                remediation=f"fix the cause, then `{_command(layout, 'restart')}`",
            )
        )
    for daemon in daemons:
        if daemon.state == "unresponsive":
            findings.append(
                DoctorFinding(
                    severity="warning",
                    code="daemon_unresponsive",
                    message=f"supervised daemon pid {daemon.pid} (port {daemon.port}) does not "
                    "answer its health check",
                    remediation=f"`{_command(layout, 'retire', '--pid', str(daemon.pid))}`",
                )
            )
    return findings


def legacy_daemon_findings(
    layout: RootLayout,
    listeners: list[ListenerRecord],
    daemons: list[DaemonView],
    installed: Mapping[str, str],
) -> list[DoctorFinding]:
    """The daemon ``R/sync-daemon`` names, when no ``spec-kitty`` on PATH runs its release.

    Reported, never stopped: project venvs and one-off runs that may still use it are
    invisible from here, and stopping the recorded daemon would fight the CLI that recorded
    it (cleanup never touches the recorded daemon). The finding names the command that
    retires it.
    """
    recorded = next((r for r in listeners if r.is_recorded_singleton and r.pid is not None), None)
    if recorded is None or not installed:
        return []
    supervised = next((d for d in daemons if d.pid == recorded.pid), None)
    python = supervised.python if supervised is not None else recorded.executable_summary
    version = supervised.package_version if supervised is not None else recorded.package_version
    if version in (None, UNKNOWN_VERSION) and python:
        version = interpreter_release(python)  # 3.1 daemons cannot name their own
    if version is None or version in installed.values():
        return []
    commands = ", ".join(f"{path} ({release})" for path, release in installed.items())
    if supervised is not None:
        retire = f"`{_command(layout, 'retire', '--pid', str(recorded.pid))}`"
    else:
        retire = f"`kill -TERM {recorded.pid}` (a graceful exit: its queued events are kept)"
    return [
        DoctorFinding(
            severity="warning",
            code="legacy_daemon_unused",
            message=f"the daemon {layout.legacy_state} names (pid {recorded.pid}, port "
            f"{recorded.port}) runs spec-kitty-cli {version} ({python}), which no `spec-kitty` "
            f"on PATH uses any more: {commands}. Project venvs or one-off runs may still use "
            "it, so --reset leaves it",
            remediation=f"when nothing uses spec-kitty-cli {version} any more: {retire}",
        )
    ]


def _state_file_findings(layout: RootLayout) -> list[DoctorFinding]:
    recorded = read_legacy_state(layout.legacy_state)
    if recorded is None or read_identity(recorded.pid) is not None:
        return []
    return [
        DoctorFinding(
            severity="warning",
            code="state_file_stale",
            message=f"{layout.legacy_state} names pid {recorded.pid}, which is not running; "
            "an upstream CLI would SIGKILL whatever process gets that pid next",
            remediation=f"`{_command(layout, 'doctor', '--reset')}` removes it",
        )
    ]


def _reset_findings(
    layout: RootLayout, result: ResetResult | None, planned: list[Observation]
) -> list[DoctorFinding]:
    findings: list[DoctorFinding] = []
    for item in planned:
        record = item.record
        findings.append(
            DoctorFinding(
                severity="info",
                code="would_stop",
                message=f"would stop pid {record.pid} on port {record.port} "
                f"({record.cleanup_class}): {record.why}",
                remediation=f"`{_command(layout, 'doctor', '--reset')}` without --dry-run",
            )
        )
    for failure in result.failed if result is not None else []:
        findings.append(
            DoctorFinding(
                severity="error",
                code="reset_failed",
                message=f"could not stop pid {failure.pid} on port {failure.port}: "
                f"{failure.failure_reason}",
                remediation=f"inspect it: `ps -o pid,user,lstart,args -p {failure.pid}`",
            )
        )
    return findings


def service_findings(layout: RootLayout) -> list[DoctorFinding]:
    """Findings about installed service units, only when something is installed."""
    from ._service import UnsupportedPlatformError, check_installed_units, current_platform

    try:
        platform = current_platform()
        exec_path = _exec_path()
        found = check_installed_units(platform, exec_path, layout.daemon_root, Path.home())
    except (UnsupportedPlatformError, OSError):
        return []
    # "Not installed" is the normal, on-demand way to run; it needs no line in doctor.
    return [finding for finding in found if finding.code != "service_not_installed"]


def _exec_path() -> str:
    from ._service import default_exec_path

    return default_exec_path()


def build_report(
    layout: RootLayout,
    observations: list[Observation],
    *,
    supervisor: SupervisorView | None = None,
    daemons: list[DaemonView] | None = None,
    quarantine_reason: str | None = None,
    reset_result: ResetResult | None = None,
    planned: list[Observation] | None = None,
    extra_findings: list[DoctorFinding] | None = None,
) -> DoctorReport:
    """The report: listeners of every class, upstream's orphans, findings with their fixes."""
    listeners = [item.record for item in observations]
    daemon_views = daemons or []
    findings: list[DoctorFinding] = []
    if supervisor is None:
        findings.append(
            DoctorFinding(
                severity="info",
                code="supervisor_not_running",
                message=f"no supervisor runs for {layout.daemon_root}; a client starts one on "
                "demand",
                remediation=f"`{_command(layout, 'run')}` or "
                f"`{_command(layout, 'install-service')}` to keep one running",
            )
        )
        findings += _state_file_findings(layout)
    findings += _daemon_findings(layout, daemon_views, quarantine_reason)
    findings += _orphan_findings(layout, listeners, supervisor is not None)
    findings += _reset_findings(layout, reset_result, planned or [])
    findings += legacy_daemon_findings(layout, listeners, daemon_views, cli_versions_on_path())
    findings += extra_findings or []
    return DoctorReport(
        supervisor=supervisor,
        daemons=daemon_views,
        orphans=[r for r in listeners if r.cleanup_class in ("safe_auto", "operator_required")],
        listeners=listeners,
        findings=findings,
        reset_result=reset_result,
    )


# --------------------------------------------------------------------------------------------
# Acting: one function per caller, the same steps


async def _observe_and_sweep(
    layout: RootLayout,
    facts: SupervisorFacts,
    request: ResetRequest | None,
    settings: Settings,
    replacement: LegacyRecord | None,
) -> tuple[list[Observation], ResetResult | None, list[Observation]]:
    """Observe, sweep if asked, re-observe; under ``R/sync-daemon.lock`` when acting."""
    timeout = settings.health_timeout_seconds
    if request is None:
        return await observe(facts, timeout), None, []
    # Only acting needs the sweep (and its signals): a look does not import them.
    from ._sweep import plan_sweep, sweep

    async with hold_legacy_lock(layout.legacy_lock, LEGACY_LOCK_WAIT):
        # Re-read under the lock: a CLI may have recorded another daemon just before.
        facts = _refresh_recorded(facts, layout)
        before = await observe(facts, timeout)
        if request.dry_run:
            planned = plan_sweep(before, request).to_stop
            result = await sweep(
                before, request, legacy_state=layout.legacy_state, grace=settings.stop_grace_seconds
            )
            return before, result, planned
        result = await sweep(
            before,
            request,
            legacy_state=layout.legacy_state,
            grace=settings.stop_grace_seconds,
            replacement=replacement,
        )
        if not facts.supervisor_running:
            _drop_dead_state_file(layout)
        after = await observe(_refresh_recorded(facts, layout), timeout) if result.swept else before
    return after, result, []


def _refresh_recorded(facts: SupervisorFacts, layout: RootLayout) -> SupervisorFacts:
    return replace(facts, recorded_singleton=_recorded_singleton(layout))


def _drop_dead_state_file(layout: RootLayout) -> None:
    # Rule 6 without a supervisor: a recorded pid that is not running is removed, since
    # upstream CLIs SIGKILL it unchecked. A live one is the root's daemon and stays.
    recorded = read_legacy_state(layout.legacy_state)
    if recorded is not None and read_identity(recorded.pid) is None:
        remove_legacy_state(layout.legacy_state)


async def sweep_would_act(layout: RootLayout, settings: Settings, table: Table) -> bool:
    """Whether a sweep would stop anything now (observes; takes no lock, acts on nothing)."""
    from ._sweep import plan_sweep

    observations = await observe(
        supervisor_facts(layout, settings, table), settings.health_timeout_seconds
    )
    return bool(plan_sweep(observations, ResetRequest()).to_stop)


async def sweep_root(
    layout: RootLayout,
    settings: Settings,
    table: Table,
    ledger: Ledger,
    *,
    may_ask: Callable[[], bool] | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> ResetResult:
    """The supervisor's own start-up and periodic sweep: ``safe_auto`` only, never forced.

    The caller holds the supervisor's lifecycle lock until ``task_status.started()``, so the
    table cannot change while the sweep observes and condemns (a daemon being spawned is in
    the table before the legacy lock is released). ``started`` comes once the orphans are
    condemned (``R/sync-daemon`` names none of them), with ``R/sync-daemon.lock`` released:
    the asking, a few at a time (docs/adr/0024; ``may_ask`` before each), and the deaths
    (about a second for 18 interpreters exiting on two cores) go on without either lock, so
    an ``ensure`` is not held up by them. Every act re-checks the process's identity
    (:func:`._signals.send_signal`). The ledger records each outcome once it is known.
    """
    from ._sweep import sweep

    results: list[ResetResult] = []

    async def stop_them(observations: list[Observation], *, task_status: TaskStatus[None]) -> None:
        results.append(
            await sweep(
                observations,
                ResetRequest(),
                legacy_state=layout.legacy_state,
                grace=settings.stop_grace_seconds,
                replacement=_current_as_state(table),
                sent=task_status.started,
                may_ask=may_ask,
            )
        )

    async with contextlib.AsyncExitStack() as legacy_lock:
        # Taken outside the task group, so that a busy lock raises LegacyLockTimeout itself.
        await legacy_lock.enter_async_context(
            hold_legacy_lock(layout.legacy_lock, LEGACY_LOCK_WAIT)
        )
        facts = supervisor_facts(layout, settings, table)
        observations = await observe(facts, settings.health_timeout_seconds)
        async with anyio.create_task_group() as group:
            await group.start(stop_them, observations)
            await legacy_lock.aclose()  # every orphan is condemned: R/sync-daemon.lock goes
            task_status.started()
    (result,) = results
    for swept in result.swept:
        ledger.record(
            "orphan_swept",
            pid=swept.pid,
            port=swept.port,
            package_version=swept.package_version,
            reason=f"{swept.reason}; stopped by {swept.cleanup_path}",
        )
    for failed in result.failed:
        ledger.record(
            "orphan_sweep_failed", pid=failed.pid, port=failed.port, reason=failed.failure_reason
        )
    return result


async def supervisor_doctor(
    supervisor: RunningSupervisor, request: ResetRequest | None = None
) -> DoctorReport:
    """The running supervisor's report; with ``request``, after a reset sweep."""

    async def run() -> DoctorReport:
        observations, result, planned = await _observe_and_sweep(
            supervisor.layout,
            supervisor_facts(supervisor.layout, supervisor.settings, supervisor.table),
            request,
            supervisor.settings,
            _current_as_state(supervisor.table),
        )
        return build_report(
            supervisor.layout,
            observations,
            supervisor=supervisor.view(),
            daemons=supervisor.daemon_views(),
            quarantine_reason=supervisor.table.quarantine_reason,
            reset_result=result,
            planned=planned,
            extra_findings=service_findings(supervisor.layout),
        )

    if request is None or request.dry_run:
        return await run()
    # A reset changes what runs: serialise it with spawns, retirements and the periodic sweep.
    async with supervisor.lifecycle_lock:
        return await run()


# --------------------------------------------------------------------------------------------
# Without a supervisor


async def unwritable_root_doctor(
    layout: RootLayout, settings: Settings, problem: str
) -> DoctorReport:
    """Doctor on a root the supervisor may not write (``problem`` says why, with the fix).

    No supervisor can run there (it could record nothing: docs/runbook.md), so none can be
    sweeping beside us and observing needs no lock; nothing is acted on (``--reset`` is
    refused before this). The report says what runs, and that the root is the problem.
    """
    observations = await observe(
        standalone_facts(layout, settings), settings.health_timeout_seconds
    )
    unwritable = DoctorFinding(
        severity="error",
        code="root_not_writable",
        message=f"{problem}. No supervisor can run for this root until then: spec-kitty CLIs "
        "run their sync daemons on their own, as without the supervisor",
        remediation=f"fix it as said; then `{_command(layout, 'doctor', '--reset')}` can act and "
        "clients start a supervisor again",
    )
    extra = await anyio.to_thread.run_sync(service_findings, layout)
    report = build_report(layout, observations, extra_findings=[unwritable, *extra])
    # "a client starts one on demand" is exactly what cannot happen here.
    kept = [f for f in report.findings if f.code != "supervisor_not_running"]
    return report.model_copy(update={"findings": kept})


async def standalone_doctor(
    layout: RootLayout, settings: Settings, request: ResetRequest | None = None
) -> DoctorReport:
    """Doctor when no supervisor answers: probe and act here, holding the supervisor's lock.

    Raises :class:`DoctorUnavailable` when the lock is held (a supervisor is starting or
    wedged): acting beside it would be a second sweep of the same root.
    """
    lock = SupervisorLock(layout.lock)
    if not lock.try_acquire():
        raise DoctorUnavailable(
            f"a supervisor (pid {lock.holder_pid()}) holds {layout.lock} but does not answer "
            f"on {layout.socket}; see `{_command(layout, 'status')}`"
        )
    try:
        observations, result, planned = await _observe_and_sweep(
            layout, standalone_facts(layout, settings), request, settings, None
        )
        return build_report(
            layout,
            observations,
            reset_result=result,
            planned=planned,
            extra_findings=await anyio.to_thread.run_sync(service_findings, layout),
        )
    finally:
        lock.release()

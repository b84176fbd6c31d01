"""``spec-kitty-supervisor doctor [--json] [--reset [--force] [--dry-run]]``.

It asks the running supervisor; when none runs it probes and acts itself, holding the
supervisor's lock, so two sweeps of one root never run at once. Exit codes: 0 nothing needs
action, 1 something does (an orphan, an operator decision, a failed stop), 2 doctor itself
failed.

``--reset`` cleans ``safe_auto`` daemons. ``operator_required`` ones need ``--force``, or a
y/N answer per daemon when stdin is a terminal (D-02); with ``--json``, or without a terminal,
there is no prompt. ``never_touch`` and ``supervised`` listeners are never cleaned, by any flag.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import anyio

from spec_kitty_supervisor_client import (
    DoctorReport,
    ListenerRecord,
    ResetRequest,
    SupervisorClient,
    SupervisorError,
    SupervisorUnavailable,
    UnsafeDirectoryError,
    resolve_daemon_root,
)
from spec_kitty_supervisor_client._upstream import UPSTREAM_ORPHAN_KEYS

from ._doctor import (
    EXIT_DOCTOR_FAILED,
    DoctorUnavailable,
    doctor_exit_code,
    standalone_doctor,
    unwritable_root_doctor,
)
from ._errors import LifecycleError
from ._integration_doctor import integration_findings
from ._layout import RootLayout, UnwritableDirectory
from ._legacy_state import LegacyLockTimeout
from ._settings import SettingsError, load_settings

__all__ = ["cmd_doctor"]

Ask = Callable[[str], str]


def cmd_doctor(args: argparse.Namespace, *, ask: Ask = input) -> int:
    if (args.force or args.dry_run) and not args.reset:
        print("spec-kitty-supervisor: --force and --dry-run go with --reset", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    try:
        report = _run(args, ask)
    except (
        DoctorUnavailable,
        LegacyLockTimeout,
        LifecycleError,
        SettingsError,
        UnsafeDirectoryError,
    ) as exc:
        print(f"spec-kitty-supervisor doctor: {exc}", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    except (SupervisorError, ValueError, OSError) as exc:
        print(f"spec-kitty-supervisor doctor failed: {exc}", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    # The user's spec-kitty installations are seen from the user's environment (PATH, pipx,
    # uv tool), not from the supervisor's, so this part is the command's own.
    integration = integration_findings(resolve_daemon_root(args.root))
    report = report.model_copy(update={"findings": [*report.findings, *integration]})
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print_report(report)
    return doctor_exit_code(report)


def _run(args: argparse.Namespace, ask: Ask) -> DoctorReport:
    prompting = args.reset and not (args.force or args.json or args.dry_run) and _is_terminal()
    confirmed: list[int] = []
    if prompting:
        confirmed = _confirm_each(_doctor(args, None), ask)
    request = (
        ResetRequest(force=args.force, dry_run=args.dry_run, confirmed_pids=confirmed)
        if args.reset
        else None
    )
    return _doctor(args, request)


def _is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _confirm_each(report: DoctorReport, ask: Ask) -> list[int]:
    """One y/N question per ``operator_required`` daemon; only a "y" stops it (D-02)."""
    confirmed: list[int] = []
    for record in report.orphans:
        if record.cleanup_class != "operator_required" or record.pid is None:
            continue
        question = (
            f"pid {record.pid} on port {record.port} ({record.skip_reason}): {record.why}\n"
            f"Stop it? [y/N] "
        )
        try:
            answer = ask(question)
        except EOFError:
            break
        if answer.strip().lower() in ("y", "yes"):
            confirmed.append(record.pid)
    return confirmed


def _doctor(args: argparse.Namespace, request: ResetRequest | None) -> DoctorReport:
    """Ask the running supervisor; without one, act here under its lock."""
    with SupervisorClient(args.root, autostart=False) as client:
        try:
            return _ask_supervisor(client, request)
        except SupervisorUnavailable:
            pass
    layout = RootLayout(resolve_daemon_root(args.root))
    settings = load_settings(layout.config)  # a bad setting fails before anything is created
    try:
        layout.prepare()
    except UnwritableDirectory as exc:
        if request is not None:
            raise  # a reset acts and records: it needs the root writable
        # Looking needs no write: say what runs, and why nothing can be supervised here.
        return anyio.run(unwritable_root_doctor, layout, settings, str(exc))
    try:
        return anyio.run(standalone_doctor, layout, settings, request)
    except DoctorUnavailable:
        # The lock's holder may be a supervisor still starting (its start-up sweep runs
        # before it serves): one more question, with the client's long timeout.
        with SupervisorClient(args.root, autostart=False) as client:
            try:
                return _ask_supervisor(client, request)
            except SupervisorUnavailable:
                raise DoctorUnavailable(
                    f"a supervisor holds {layout.lock} but does not answer on {layout.socket}"
                ) from None


def _ask_supervisor(client: SupervisorClient, request: ResetRequest | None) -> DoctorReport:
    if request is None:
        return client.doctor()
    return client.reset(
        force=request.force, dry_run=request.dry_run, confirmed_pids=request.confirmed_pids
    )


# --------------------------------------------------------------------------------------------
# Output


def report_json(report: DoctorReport) -> dict[str, Any]:
    """The API's report, with ``orphans[]`` cut to exactly upstream's schema-2 keys."""
    payload = report.model_dump(mode="json")
    payload["orphans"] = [
        {key: entry[key] for key in UPSTREAM_ORPHAN_KEYS} for entry in payload["orphans"]
    ]
    return payload


def print_report(report: DoctorReport) -> None:
    supervisor = report.supervisor
    if supervisor is None:
        print("supervisor: none runs (doctor probed the range itself)")
    else:
        print(f"supervisor: pid {supervisor.pid} (v{supervisor.version}) for {supervisor.root}")
    for daemon in report.daemons:
        print(
            f"  {daemon.role:<8} pid {daemon.pid:<7} port {daemon.port}  "
            f"{daemon.package_version:<8} {daemon.state}"
        )
    print()
    print(f"listeners ({len(report.listeners)}):")
    if report.listeners:
        print(f"  {'PORT':<6} {'PID':<8} {'VERSION':<9} {'CLASS':<18} {'REASON':<22} WHY")
    for record in report.listeners:
        print(_listener_line(record))
    result = report.reset_result
    if result is not None:
        print()
        print(
            f"reset: {len(result.swept)} stopped, {len(result.skipped)} left alone, "
            f"{len(result.failed)} failed"
        )
        for swept in result.swept:
            print(f"  stopped pid {swept.pid} (port {swept.port}) by {swept.cleanup_path}")
        for skipped in result.skipped:
            print(
                f"  left pid {skipped.pid} (port {skipped.port}): "
                f"{skipped.cleanup_class}/{skipped.skip_reason}"
            )
        for failed in result.failed:
            print(f"  FAILED pid {failed.pid} (port {failed.port}): {failed.failure_reason}")
    print()
    if not report.findings:
        print("findings: none; nothing needs doing")
    else:
        print("findings:")
    for finding in report.findings:
        print(f"  [{finding.severity}] {finding.code}: {finding.message}")
        if finding.remediation:
            print(f"      fix: {finding.remediation}")


def _listener_line(record: ListenerRecord) -> str:
    pid = str(record.pid) if record.pid is not None else "?"
    version = record.package_version or "-"
    reason = record.skip_reason or "-"
    return (
        f"  {record.port:<6} {pid:<8} {version:<9} {record.cleanup_class:<18} {reason:<22} "
        f"{record.why}"
    )

"""``spec-kitty-supervisor doctor [--json] [--reset [--force] [--dry-run]]``.

It asks the running supervisor; when none runs it probes and acts itself, holding the
supervisor's lock, so two sweeps of one root never run at once. Exit codes: 0 nothing needs
action, 1 something does (an orphan, an operator decision, a failed stop), 2 doctor itself
failed.

``--reset`` cleans ``safe_auto`` daemons. ``operator_required`` ones need ``--force``, or a
y/N answer per daemon when stdin is a terminal (D-02); with ``--json``, or without a terminal,
there is no prompt. ``never_touch`` and ``supervised`` listeners are never cleaned, by any flag.

The report is handled as the API's JSON (``DoctorReport.model_dump(mode="json")``), not as
the model: a supervisor of this same version answers with exactly that dump, so asking it
needs only the standard-library wire. The protocol's models, the doctor's own machinery
(classification, discovery, psutil) and the logging setup are imported only when this
process observes or acts itself, or when a supervisor of another version answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from spec_kitty_supervisor_client._errors import (
    SupervisorError,
    SupervisorUnavailable,
    UnsafeDirectoryError,
)
from spec_kitty_supervisor_client._hook import ORPHAN_RECORD_FIELDS
from spec_kitty_supervisor_client._one_call import ask_running_supervisor
from spec_kitty_supervisor_client._paths import resolve_daemon_root

from . import __version__
from ._errors import LifecycleError
from ._integration_doctor import integration_findings

if TYPE_CHECKING:
    from spec_kitty_supervisor_client._models import DoctorReport, ResetRequest

__all__ = [
    "EXIT_ACTION_NEEDED",
    "EXIT_DOCTOR_FAILED",
    "EXIT_NOTHING_TO_DO",
    "cmd_doctor",
    "doctor_exit_code",
    "report_json",
]

EXIT_NOTHING_TO_DO = 0
EXIT_ACTION_NEEDED = 1
EXIT_DOCTOR_FAILED = 2

#: How long doctor waits for the supervisor's answer: a reset waits for the stops it makes
#: (the client library's default).
ANSWER_TIMEOUT = 120.0

Ask = Callable[[str], str]
#: A doctor report as the API's JSON: ``DoctorReport.model_dump(mode="json")``.
Report = dict[str, Any]


class DoctorFailed(RuntimeError):
    """Doctor could not look (its lock is held, a setting is bad, upstream holds a lock)."""


def cmd_doctor(args: argparse.Namespace, *, ask: Ask = input) -> int:
    if (args.force or args.dry_run) and not args.reset:
        print("spec-kitty-supervisor: --force and --dry-run go with --reset", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    try:
        report = _run(args, ask)
    except (DoctorFailed, LifecycleError, UnsafeDirectoryError) as exc:
        print(f"spec-kitty-supervisor doctor: {exc}", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    except (SupervisorError, ValueError, OSError) as exc:
        print(f"spec-kitty-supervisor doctor failed: {exc}", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    # The user's spec-kitty installations are seen from the user's environment (PATH, pipx,
    # uv tool), not from the supervisor's, so this part is the command's own.
    integration = integration_findings(resolve_daemon_root(args.root))
    report["findings"] = [*report["findings"], *(finding.as_json() for finding in integration)]
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print_report(report)
    return doctor_exit_code(report)


def doctor_exit_code(report: Report) -> int:
    """0 when nothing needs action, 1 when something does (``doctor`` itself failing is 2)."""
    needs_action = any(f["severity"] in ("warning", "error") for f in report["findings"])
    return EXIT_ACTION_NEEDED if needs_action else EXIT_NOTHING_TO_DO


def _run(args: argparse.Namespace, ask: Ask) -> Report:
    prompting = args.reset and not (args.force or args.json or args.dry_run) and _is_terminal()
    confirmed: list[int] = []
    if prompting:
        confirmed = _confirm_each(_doctor(args, None), ask)
    request: ResetRequest | None = None
    if args.reset:
        from spec_kitty_supervisor_client._models import ResetRequest

        request = ResetRequest(force=args.force, dry_run=args.dry_run, confirmed_pids=confirmed)
    return _doctor(args, request)


def _is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _confirm_each(report: Report, ask: Ask) -> list[int]:
    """One y/N question per ``operator_required`` daemon; only a "y" stops it (D-02)."""
    confirmed: list[int] = []
    for record in report["orphans"]:
        if record["cleanup_class"] != "operator_required" or record["pid"] is None:
            continue
        question = (
            f"pid {record['pid']} on port {record['port']} ({record['skip_reason']}): "
            f"{record['why']}\nStop it? [y/N] "
        )
        try:
            answer = ask(question)
        except EOFError:
            break
        if answer.strip().lower() in ("y", "yes"):
            confirmed.append(record["pid"])
    return confirmed


def _doctor(args: argparse.Namespace, request: ResetRequest | None) -> Report:
    """Ask the running supervisor; without one, act here under its lock."""
    try:
        return _ask_supervisor(args, request)
    except SupervisorUnavailable:
        pass
    return _standalone(args, request)


def _ask_supervisor(args: argparse.Namespace, request: ResetRequest | None) -> Report:
    if request is None:
        body = ask_running_supervisor(args.root, "GET", "/v1/doctor", timeout=ANSWER_TIMEOUT)
    else:
        reset = request.model_dump_json().encode()
        body = ask_running_supervisor(args.root, "POST", "/v1/reset", reset, timeout=ANSWER_TIMEOUT)
    return _this_versions_report(body)


def _this_versions_report(body: bytes) -> Report:
    """The supervisor's answer as this version's ``DoctorReport`` dump.

    A supervisor of this version serialises the very model this command would validate it
    into, so its JSON is that model's dump already (every field, in the model's order) and is
    used as it is. Another version's answer may lack or add fields: it goes through the model,
    which fills the defaults and drops what this version does not know.
    """
    payload = json.loads(body)
    supervisor = payload.get("supervisor") if isinstance(payload, dict) else None
    if isinstance(supervisor, dict) and supervisor.get("version") == __version__:
        return payload  # type: ignore[no-any-return]
    from spec_kitty_supervisor_client._models import DoctorReport

    return DoctorReport.model_validate_json(body).model_dump(mode="json")


def _standalone(args: argparse.Namespace, request: ResetRequest | None) -> Report:
    """No supervisor answers: observe (and act) in this process, under the supervisor's lock."""
    import logging

    import anyio

    from ._doctor import DoctorUnavailable, standalone_doctor, unwritable_root_doctor
    from ._layout import RootLayout, UnwritableDirectory
    from ._legacy_state import LegacyLockTimeout
    from ._logging import configure_logging
    from ._settings import SettingsError, load_settings

    # What this process logs goes to stderr: stdout is the report. A look that logs nothing
    # (the usual one) never imports structlog.
    configure_logging(None, level=logging.WARNING, structlog_when_used=request is None)
    layout = RootLayout(resolve_daemon_root(args.root))
    try:
        settings = load_settings(layout.config)  # a bad setting fails before anything is made
        try:
            layout.prepare()
        except UnwritableDirectory as exc:
            if request is not None:
                raise  # a reset acts and records: it needs the root writable
            # Looking needs no write: say what runs, and why nothing can be supervised here.
            return anyio.run(_as_json, unwritable_root_doctor, layout, settings, str(exc))
        return anyio.run(_as_json, standalone_doctor, layout, settings, request)
    except (LegacyLockTimeout, SettingsError) as exc:
        raise DoctorFailed(str(exc)) from None
    except DoctorUnavailable as exc:
        unavailable = exc
    # The lock's holder may be a supervisor still starting (its start-up sweep runs before
    # it serves): one more question, with the long timeout.
    try:
        return _ask_supervisor(args, request)
    except SupervisorUnavailable:
        raise DoctorFailed(
            f"a supervisor holds {layout.lock} but does not answer on {layout.socket}"
        ) from unavailable


async def _as_json(look: Callable[..., Awaitable[DoctorReport]], *args: Any) -> Report:
    """``look``'s report as the API's JSON, dumped before the event loop ends.

    asyncio's runner, putting its SIGINT handler back, formats the main task's repr with its
    result (``signal.getsignal`` tries the handler as a ``Handlers`` member, and the failed
    lookup's message is that repr): a dict's is cut short, the report model's is built whole
    first, 1,620 ``__repr_args__`` calls for 18 listeners.
    """
    report = await look(*args)
    return report.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Output


def report_json(report: Report) -> Report:
    """The API's report, with ``orphans[]`` cut to exactly upstream's schema-2 keys."""
    return {
        **report,
        "orphans": [
            {key: entry[key] for key in ORPHAN_RECORD_FIELDS} for entry in report["orphans"]
        ],
    }


def print_report(report: Report) -> None:
    supervisor = report["supervisor"]
    if supervisor is None:
        print("supervisor: none runs (doctor probed the range itself)")
    else:
        print(
            f"supervisor: pid {supervisor['pid']} (v{supervisor['version']}) "
            f"for {supervisor['root']}"
        )
    for daemon in report["daemons"]:
        print(
            f"  {daemon['role']:<8} pid {daemon['pid']:<7} port {daemon['port']}  "
            f"{daemon['package_version']:<8} {daemon['state']}"
        )
    print()
    listeners = report["listeners"]
    print(f"listeners ({len(listeners)}):")
    if listeners:
        print(f"  {'PORT':<6} {'PID':<8} {'VERSION':<9} {'CLASS':<18} {'REASON':<22} WHY")
    for record in listeners:
        print(_listener_line(record))
    result = report["reset_result"]
    if result is not None:
        print()
        print(
            f"reset: {len(result['swept'])} stopped, {len(result['skipped'])} left alone, "
            f"{len(result['failed'])} failed"
        )
        for swept in result["swept"]:
            print(f"  stopped pid {swept['pid']} (port {swept['port']}) by {swept['cleanup_path']}")
        for skipped in result["skipped"]:
            print(
                f"  left pid {skipped['pid']} (port {skipped['port']}): "
                f"{skipped['cleanup_class']}/{skipped['skip_reason']}"
            )
        for failed in result["failed"]:
            print(
                f"  FAILED pid {failed['pid']} (port {failed['port']}): {failed['failure_reason']}"
            )
    print()
    findings = report["findings"]
    if not findings:
        print("findings: none; nothing needs doing")
    else:
        print("findings:")
    for finding in findings:
        print(f"  [{finding['severity']}] {finding['code']}: {finding['message']}")
        if finding["remediation"]:
            print(f"      fix: {finding['remediation']}")


def _listener_line(record: dict[str, Any]) -> str:
    pid = str(record["pid"]) if record["pid"] is not None else "?"
    version = record["package_version"] or "-"
    reason = record["skip_reason"] or "-"
    return (
        f"  {record['port']:<6} {pid:<8} {version:<9} {record['cleanup_class']:<18} "
        f"{reason:<22} {record['why']}"
    )

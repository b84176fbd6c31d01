"""Answers in spec-kitty's own shapes, so that switching spec-kitty to the supervisor is small.

spec-kitty's ``ensure_sync_daemon_running()`` returns ``DaemonStartOutcome(started,
skipped_reason, pid)``, and ``spec-kitty auth doctor --json`` prints a schema-2 document whose
``daemon``, ``orphans[]``, ``findings[]`` and ``reset_result`` describe the sync daemons. These
functions give exactly those shapes from the supervisor's answers::

    outcome = ensure_sync_daemon_running_compatible()       # started, skipped_reason, pid
    section = upstream_auth_doctor()                         # None: no supervisor runs
    if section is not None:
        payload.update(section)                              # daemon, orphans, findings
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._client import SupervisorClient
from ._errors import SupervisorError, SupervisorUnavailable
from ._hook import ORPHAN_RECORD_FIELDS, daemon_summary_fields
from ._models import DoctorFinding, DoctorReport, ListenerRecord, ResetResult
from ._one_call import ensure_sync_daemon

__all__ = [
    "UPSTREAM_ORPHAN_KEYS",
    "DaemonStartOutcome",
    "doctor_report_upstream_shape",
    "ensure_sync_daemon_running_compatible",
    "upstream_auth_doctor",
]

#: The keys of one ``orphans[]`` entry of ``spec-kitty auth doctor --json`` (schema 2), in order:
#: upstream's ``DaemonIdentityRecord``, whose fields the hook also builds records from.
UPSTREAM_ORPHAN_KEYS: tuple[str, ...] = ORPHAN_RECORD_FIELDS

# Our severities in upstream's words (``info`` / ``warn`` / ``critical``).
_UPSTREAM_SEVERITY = {"info": "info", "warning": "warn", "error": "critical"}
_FIRST_COMMAND = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class DaemonStartOutcome:
    """What spec-kitty's ``ensure_sync_daemon_running()`` returns: ``started`` is True on reuse
    too; ``skipped_reason`` says why there is no daemon (``"start_failed: ..."``)."""

    started: bool
    skipped_reason: str | None
    pid: int | None


def ensure_sync_daemon_running_compatible(
    python: str | None = None,
    version: str | None = None,
    root: str | os.PathLike[str] | Path | None = None,
) -> DaemonStartOutcome:
    """:func:`ensure_sync_daemon` answered the way spec-kitty's own ensure answers.

    Never raises for a supervisor problem: like upstream, a failure is a ``start_failed``
    outcome, and the caller goes on without a daemon (its events stay queued).
    """
    try:
        answer = ensure_sync_daemon(python, version, root)
    except SupervisorError as exc:
        return DaemonStartOutcome(started=False, skipped_reason=f"start_failed: {exc}", pid=None)
    return DaemonStartOutcome(started=True, skipped_reason=None, pid=answer.daemon.pid)


def _orphan(record: ListenerRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json")
    return {key: data[key] for key in UPSTREAM_ORPHAN_KEYS}


def _finding(finding: DoctorFinding) -> dict[str, Any]:
    remediation: dict[str, str | None] | None = None
    if finding.remediation is not None:
        command = _FIRST_COMMAND.search(finding.remediation)
        remediation = {
            "command": command.group(1) if command is not None else None,
            "description": finding.remediation,
        }
    return {
        "id": finding.code,
        "severity": _UPSTREAM_SEVERITY[finding.severity],
        "summary": finding.message,
        "remediation": remediation,
    }


def _reset_result(result: ResetResult) -> dict[str, Any]:
    return {
        "swept": [entry.model_dump(mode="json") for entry in result.swept],
        "skipped": [entry.model_dump(mode="json") for entry in result.skipped],
        "failed": [entry.model_dump(mode="json") for entry in result.failed],
    }


def doctor_report_upstream_shape(report: DoctorReport) -> dict[str, Any]:
    """The sync part of ``spec-kitty auth doctor --json`` (schema 2) for ``report``.

    ``daemon`` is upstream's summary of the root's daemon (``daemon_summary_fields``: a running
    supervisor's current daemon, else the live daemon ``R/sync-daemon`` records; null if none),
    ``orphans[]`` has exactly upstream's keys (``safe_auto`` and ``operator_required``
    records only), ``findings[]`` upstream's ``id/severity/summary/remediation``, and
    ``reset_result`` appears after a reset, as upstream adds it.
    """
    payload: dict[str, Any] = {
        "schema_version": 2,
        # Exactly what the hook shows an integrated release (one rule for both).
        "daemon": daemon_summary_fields(report.model_dump(mode="json")),
        "orphans": [_orphan(record) for record in report.orphans],
        "findings": [_finding(finding) for finding in report.findings],
    }
    if report.reset_result is not None:
        payload["reset_result"] = _reset_result(report.reset_result)
    return payload


def upstream_auth_doctor(
    root: str | os.PathLike[str] | Path | None = None,
    *,
    reset: bool = False,
    force: bool = False,
) -> dict[str, Any] | None:
    """Ask the root's running supervisor, in upstream's shape; None when none runs.

    Never starts a supervisor: a doctor that starts what it diagnoses hides the problem.
    With None, spec-kitty falls back to its own scan.
    """
    try:
        with SupervisorClient(root, autostart=False) as client:
            report = client.reset(force=force) if reset else client.doctor()
    except SupervisorUnavailable:
        return None
    return doctor_report_upstream_shape(report)

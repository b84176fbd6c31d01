"""The authoritative table: which daemon is current for the root, which are retiring.

It is persisted in ``R/supervisor/state.json`` (atomically, with a schema version) after every
change and before the change is acted on, so a supervisor that crashes at any point can be
replaced by one that re-adopts exactly what the table names. A file we cannot read is moved
aside, never deleted, and the table is rebuilt from what is alive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from spec_kitty_supervisor_client._models import DaemonOrigin, DaemonRole, DaemonState, DaemonView

from ._files import RefusedFile, atomic_write, move_aside, move_refused_aside, read_regular_file
from ._identity import ProcessIdentity

__all__ = [
    "SCHEMA_VERSION",
    "DaemonRecord",
    "LoadedTable",
    "Table",
    "TableSnapshot",
    "load_table",
    "save_table",
]

SCHEMA_VERSION = 1
#: A table names a handful of daemons; anything this large is not a journal we wrote.
MAX_STATE_BYTES = 1024 * 1024


class DaemonRecord(BaseModel):
    """One sync daemon the supervisor owns, with everything needed to re-prove it after a crash."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    process_start: str
    uid: int
    port: int
    token: str
    package_version: str
    python: str
    resolved_python: str
    origin: DaemonOrigin
    state: DaemonState
    role: DaemonRole
    started_at: str
    last_healthy_at: str | None = None
    unresponsive_since: float | None = None  # monotonic-free: wall seconds, for the watchdog
    last_ensure_at: float | None = None

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(pid=self.pid, start=self.process_start, uid=self.uid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def view_values(self) -> tuple[object, ...]:
        """Every value :meth:`view` is made of (the token too): equal values, equal views.

        What the warm ``ensure`` and ``status`` answers remember theirs by (ADR 0016, 0023);
        ``tests/unit/test_status_answer.py`` checks it against :class:`DaemonView`'s fields.
        """
        return (
            self.pid,
            self.port,
            self.package_version,
            self.python,
            self.origin,
            self.state,
            self.role,
            self.started_at,
            self.last_healthy_at,
            self.token,
        )

    def view(self, *, with_token: bool = False) -> DaemonView:
        return DaemonView(
            pid=self.pid,
            port=self.port,
            url=self.url,
            package_version=self.package_version,
            python=self.python,
            origin=self.origin,
            state=self.state,
            role=self.role,
            started_at=self.started_at,
            last_healthy_at=self.last_healthy_at,
            token=self.token if with_token else None,
        )


class _TableFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1]
    supervisor_pid: int
    daemons: list[DaemonRecord]
    quarantine_reason: str | None = None


@dataclass
class Table:
    """The rows, and the only code that changes a row's role and state (always together).

    Only the lifecycle calls the transitions, holding its lock; each returns what changed so
    that the caller can record it. The one exception is :meth:`remove` of a daemon whose
    retirement has just confirmed it gone: that records a fact, changes no role, and must not
    wait for a step (``stop --children``) that holds the lock while it waits for retirements.
    Readers (status, doctor, classification) only read.
    """

    daemons: list[DaemonRecord] = field(default_factory=list)
    quarantine_reason: str | None = None

    @property
    def current(self) -> DaemonRecord | None:
        return next((d for d in self.daemons if d.role == "current"), None)

    @property
    def retiring(self) -> list[DaemonRecord]:
        return [d for d in self.daemons if d.role == "retiring"]

    def by_pid(self, pid: int) -> DaemonRecord | None:
        return next((d for d in self.daemons if d.pid == pid), None)

    # ------------------------------------------------------------------ transitions

    def add_current(self, record: DaemonRecord) -> DaemonRecord | None:
        """``record`` (healthy) becomes current; returns the previous current, now retiring."""
        previous = self.current
        if previous is not None:
            self.mark_retiring(previous)
        record.role, record.state = "current", "healthy"
        self.daemons.append(record)
        return previous

    def restore(self, record: DaemonRecord, *, answered: bool, now: float) -> None:
        """A journal row re-proven after a restart: its role as journaled, its health as seen."""
        if record.role == "retiring":
            record.state = "retiring"
        elif answered:
            record.state = "healthy"
        else:
            record.state = "unresponsive"
            record.unresponsive_since = now
        self.daemons.append(record)

    def mark_retiring(self, record: DaemonRecord) -> bool:
        """True when ``record`` was not retiring yet."""
        if record.role == "retiring":
            return False
        record.role, record.state = "retiring", "retiring"
        return True

    def retire_all(self) -> None:
        for record in self.daemons:
            self.mark_retiring(record)

    def mark_healthy(self, record: DaemonRecord, at: str) -> None:
        if record.role == "retiring":
            return
        record.state = "healthy"
        record.last_healthy_at = at
        record.unresponsive_since = None

    def mark_unresponsive(self, record: DaemonRecord, now: float) -> bool:
        """True when ``record`` just stopped answering (it was healthy until now)."""
        if record.role == "retiring":
            return False
        newly = record.state != "unresponsive"
        record.state = "unresponsive"
        if record.unresponsive_since is None:
            record.unresponsive_since = now
        return newly

    def remove(self, record: DaemonRecord) -> None:
        self.daemons = [d for d in self.daemons if d.pid != record.pid]

    def quarantine(self, reason: str) -> None:
        self.quarantine_reason = reason

    def lift_quarantine(self) -> bool:
        """True when the root was quarantined."""
        lifted = self.quarantine_reason is not None
        self.quarantine_reason = None
        return lifted

    # ------------------------------------------------------------------ undo

    def snapshot(self) -> TableSnapshot:
        """What :meth:`rewind` puts back when the journal could not be written."""
        return TableSnapshot(
            rows=[(record, record.model_copy()) for record in self.daemons],
            quarantine_reason=self.quarantine_reason,
        )

    def rewind(self, snapshot: TableSnapshot) -> None:
        for record, saved in snapshot.rows:
            for name in DaemonRecord.model_fields:
                setattr(record, name, getattr(saved, name))
        self.daemons = [record for record, _ in snapshot.rows]
        self.quarantine_reason = snapshot.quarantine_reason


@dataclass(frozen=True)
class TableSnapshot:
    rows: list[tuple[DaemonRecord, DaemonRecord]]
    quarantine_reason: str | None


@dataclass(frozen=True)
class LoadedTable:
    table: Table
    problem: str | None = None
    moved_to: Path | None = None


def save_table(path: Path, table: Table, supervisor_pid: int) -> None:
    document = _TableFile(
        schema_version=SCHEMA_VERSION,
        supervisor_pid=supervisor_pid,
        daemons=table.daemons,
        quarantine_reason=table.quarantine_reason,
    )
    atomic_write(path, document.model_dump_json(indent=2).encode() + b"\n")


def load_table(path: Path) -> LoadedTable:
    """Read the journal; a missing file is an empty table, a corrupt one is moved aside.

    So is one that is not a regular file (a FIFO, a directory, a symlink): the supervisor then
    starts from what is alive (the daemon ``R/sync-daemon`` names).
    """
    try:
        raw = read_regular_file(path, MAX_STATE_BYTES)
    except RefusedFile as refused:
        return LoadedTable(
            Table(), problem=f"refused state file: {refused}", moved_to=move_refused_aside(refused)
        )
    except PermissionError as exc:
        problem = f"unreadable state file ({exc.strerror})"
        return LoadedTable(Table(), problem=problem, moved_to=move_aside(path, "unreadable"))
    if raw is None:
        return LoadedTable(Table())
    try:
        document = _TableFile.model_validate(json.loads(raw))
    except (ValueError, ValidationError, RecursionError) as exc:
        problem = f"unreadable state file ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        moved_to = move_aside(path, "corrupt")
        return LoadedTable(Table(), problem=problem, moved_to=moved_to)
    return LoadedTable(
        Table(daemons=list(document.daemons), quarantine_reason=document.quarantine_reason)
    )

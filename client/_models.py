"""The wire protocol: every request and response body of the ``/v1`` control API.

These pydantic models are shared by the supervisor and the client, and their JSON schema is
checked into ``docs/protocol.schema.json`` (a test fails when the two drift). Within protocol
version 1 changes are additive only: new optional fields, new endpoints.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._terms import FAMILY_PORT_RANGE, CleanupClass, StopPath, family_sub_range_error
from ._wire import PROTOCOL_VERSION

__all__ = [
    "FAMILY_PORT_RANGE",
    "PROTOCOL_VERSION",
    "CleanupClass",
    "DaemonOrigin",
    "DaemonRole",
    "DaemonState",
    "DaemonView",
    "DoctorFinding",
    "DoctorReport",
    "EnsureAction",
    "EnsureRequest",
    "EnsureResponse",
    "ErrorBody",
    "ErrorDetail",
    "EventRecord",
    "EventsResponse",
    "HandoverResponse",
    "ListenerRecord",
    "ResetRequest",
    "ResetResult",
    "RetireRequest",
    "RetireResponse",
    "RootState",
    "Settings",
    "ShutdownRequest",
    "ShutdownResponse",
    "StatusResponse",
    "StopPath",
    "SupervisorHealth",
    "SupervisorView",
    "SweptRecord",
    "SkippedRecord",
    "FailedRecord",
    "VersionPolicy",
]

#: The protocol this package speaks. A supervisor refuses a client of another major version.


# The empty defaults' factories are functions of ours, not ``list`` and ``dict``: building a
# model, pydantic reads each factory's signature, and a builtin's is parsed from its text
# signature with ``tokenize`` (about 1.3 M instructions a field, at each model's first use).
def _no_items() -> list[Any]:
    return []


def _no_entries() -> dict[str, Any]:
    return {}


class _Model(BaseModel):
    # defer_build: each model's validator and serializer are built on its first use, not at
    # import (27 models; most processes use two or three). Safe under threads in the pinned
    # pydantic, whose rebuild takes a lock (ADR 0012; tests/unit/test_deferred_models.py).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _Request(_Model):
    """Request bodies take JSON's own types only: ``"yes"`` is not a boolean, ``true`` not a pid.

    Lax parsing would turn ``{"force": "yes"}`` into a forced reset and ``{"pid": true}`` into
    pid 1; a request that does not say exactly what it means is refused with a 400.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, defer_build=True)


class _Lenient(BaseModel):
    """Responses ignore unknown fields so that an older client reads a newer supervisor."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


VersionPolicy = Literal["keep_newer", "latest_wins"]
DaemonOrigin = Literal["spawned", "adopted"]
DaemonState = Literal["healthy", "unresponsive", "retiring"]
DaemonRole = Literal["current", "retiring"]
RootState = Literal["ok", "quarantined"]
EnsureAction = Literal["reused", "spawned", "adopted", "upgraded", "kept_newer", "replaced"]


class Settings(_Model):
    """Every tunable of a supervisor, as ``status --json`` shows it.

    Loaded from ``SPEC_KITTY_SUPERVISOR_*`` variables, then ``R/supervisor/config.toml``,
    then command-line flags (later sources win).
    """

    port_range: tuple[int, int] = Field(
        default=FAMILY_PORT_RANGE,
        description="Half-open [lo, hi) range for spawning daemons; inside [9400, 9450).",
    )
    scan_range: tuple[int, int] = Field(
        default=FAMILY_PORT_RANGE,
        description="Half-open [lo, hi) range doctor and sweeps scan; inside [9400, 9450).",
    )
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    health_timeout_seconds: float = Field(default=1.0, gt=0)
    idle_retirement_seconds: float = Field(default=900.0, gt=0)
    watchdog_seconds: float = Field(default=60.0, gt=0)
    idle_exit_seconds: float = Field(default=1800.0, gt=0)
    sweep_seconds: float = Field(default=600.0, gt=0)
    spawn_timeout_seconds: float = Field(default=15.0, gt=0)
    stop_grace_seconds: float = Field(default=3.0, gt=0)
    version_policy: VersionPolicy = "keep_newer"
    restart_backoff_seconds: float = Field(default=1.0, ge=0)
    restart_backoff_max_seconds: float = Field(default=30.0, ge=0)
    quarantine_deaths: int = Field(default=5, ge=1)
    quarantine_window_seconds: float = Field(default=300.0, gt=0)

    @field_validator("port_range", "scan_range")
    @classmethod
    def _inside_family(cls, value: tuple[int, int]) -> tuple[int, int]:
        error = family_sub_range_error(*value)
        if error is not None:
            raise ValueError(error)
        return value


class ErrorDetail(_Lenient):
    code: str
    message: str
    details: dict[str, object] | None = None


class ErrorBody(_Lenient):
    """Every 4xx/5xx answer: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class SupervisorHealth(_Lenient):
    """``GET /v1/health``: cheap liveness and the protocol handshake.

    ``state`` is ``starting`` while the supervisor's first stage answers (its table is not
    recovered yet; every other request is held until it is, docs/adr/0015), ``serving``
    after. A supervisor that predates the field only answered once serving.
    """

    status: Literal["ok"] = "ok"
    state: Literal["starting", "serving"] = Field(
        default="serving",
        description=(
            "starting: the supervisor holds the root and its socket, and is still importing or "
            "recovering its table; requests other than health are answered once it serves."
        ),
    )
    pid: int
    version: str
    protocol_version: int
    root: str


class SupervisorView(_Lenient):
    pid: int
    version: str
    protocol_version: int
    root: str
    socket: str
    started_at: str
    auto_started: bool
    service_manager: str | None = None
    settings: Settings
    heartbeats: int = Field(
        default=0,
        description=(
            "Heartbeats completed since this supervisor started: a count that moves on shows the "
            "lifecycle's loop is alive and that everything it decides on a tick has been decided."
        ),
    )


class DaemonView(_Lenient):
    """One sync daemon the supervisor owns. ``token`` is only filled for ``ensure`` callers."""

    pid: int
    port: int
    url: str
    package_version: str
    python: str
    origin: DaemonOrigin
    state: DaemonState
    role: DaemonRole
    started_at: str
    last_healthy_at: str | None = None
    token: str | None = None


class StatusResponse(_Lenient):
    supervisor: SupervisorView | None
    root_state: RootState = "ok"
    root_state_reason: str | None = None
    daemons: list[DaemonView] = Field(default_factory=_no_items)
    degraded: str | None = Field(
        default=None,
        description=(
            "Why the supervisor cannot do all it should now; None when it can. The causes, "
            "joined by '; ': its journal or R/sync-daemon cannot be written (a full disk, a "
            "read-only file system, a permission: anything that needs that write answers "
            "state_not_writable and is not done); its ledger's file misses events (they are "
            "kept in memory and served by events; nothing is refused for it); one of "
            "upstream's files in the root (R/sync-daemon.lock, R/sync-daemon.log, "
            "R/sync/daemon/owner.json) is not a regular file of the user's (what needs it "
            "answers root_file_refused). status, events and doctor keep working, and each "
            "cause ends by itself once it is gone."
        ),
    )


class EnsureRequest(_Request):
    """Ask for the root's sync daemon, for a given interpreter and spec-kitty-cli version."""

    python: str = Field(
        description="Absolute path of the interpreter with spec-kitty-cli installed."
    )
    package_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description=(
            "The spec-kitty-cli version the client believes it runs. Optional: the supervisor "
            "reads the version installed for the interpreter and refuses a claim that differs."
        ),
    )
    cwd: str | None = Field(default=None, description="The client's working directory.")
    env: dict[str, str] = Field(
        default_factory=_no_entries,
        description="The client's environment; only allow-listed variables are passed on.",
    )
    replace: bool = Field(
        default=False,
        description=(
            "Replace the current daemon even when it would serve this request (what "
            "`spec-kitty doctor restart-daemon` asks for): a new daemon for this interpreter, "
            "version, environment and working directory is started and healthy before the "
            "current one is retired. With no current daemon it is an ordinary spawn."
        ),
    )

    @field_validator("python")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("python must be an absolute path")
        return value


class EnsureResponse(_Lenient):
    action: EnsureAction
    daemon: DaemonView
    message: str = ""


class RetireRequest(_Request):
    pid: int | None = None
    port: int | None = None
    reason: str = Field(default="requested", max_length=200)

    @model_validator(mode="after")
    def _names_one(self) -> RetireRequest:
        if self.pid is None and self.port is None:
            raise ValueError("name the daemon to retire by pid or port")
        return self


class RetireResponse(_Lenient):
    retired: DaemonView
    stop_path: StopPath


class ShutdownRequest(_Request):
    stop_children: bool = False


class ShutdownResponse(_Lenient):
    stopping: bool
    children_stopped: list[int] = Field(default_factory=_no_items)


class HandoverResponse(_Lenient):
    """The outgoing supervisor's answer: it persisted its table and is exiting."""

    handing_over: bool
    pid: int
    daemons: list[int] = Field(default_factory=_no_items)


class EventRecord(_Lenient):
    seq: int
    time: str
    kind: str
    pid: int | None = None
    port: int | None = None
    package_version: str | None = None
    reason: str = ""


class EventsResponse(_Lenient):
    events: list[EventRecord]


class ListenerRecord(_Lenient):
    """One listener in the family range, classified.

    The first eighteen fields are upstream's ``auth doctor --json`` (schema 2) orphan keys.
    """

    daemon_family: str | None = None
    pid: int | None = None
    port: int
    protocol_version: int | None = None
    package_version: str | None = None
    singleton_scope_id: str | None = None
    daemon_root: str | None = None
    queue_db_path: str | None = None
    auth_scope: str | None = None
    server_url: str | None = None
    owner_present: bool = False
    identity_source: str | None = None
    executable_summary: str | None = None
    spawn_shape_ok: bool = False
    self_report_matches_listener: bool = False
    is_recorded_singleton: bool = False
    cleanup_class: CleanupClass
    skip_reason: str | None = None
    # Ours.
    uid: int | None = None
    process_start: str | None = None
    why: str = ""


class DoctorFinding(_Lenient):
    severity: Literal["info", "warning", "error"]
    code: str
    message: str
    remediation: str | None = None


class SweptRecord(_Lenient):
    pid: int
    port: int
    package_version: str | None = None
    protocol_version: int | None = None
    cleanup_path: StopPath
    reason: str


class SkippedRecord(_Lenient):
    pid: int | None
    port: int
    cleanup_class: CleanupClass
    skip_reason: str | None


class FailedRecord(_Lenient):
    pid: int | None
    port: int
    failure_reason: str


class ResetResult(_Lenient):
    swept: list[SweptRecord] = Field(default_factory=_no_items)
    skipped: list[SkippedRecord] = Field(default_factory=_no_items)
    failed: list[FailedRecord] = Field(default_factory=_no_items)


class DoctorReport(_Lenient):
    schema_version: int = 2
    supervisor: SupervisorView | None = None
    daemons: list[DaemonView] = Field(default_factory=_no_items)
    orphans: list[ListenerRecord] = Field(default_factory=_no_items)
    listeners: list[ListenerRecord] = Field(default_factory=_no_items)
    findings: list[DoctorFinding] = Field(default_factory=_no_items)
    reset_result: ResetResult | None = None


class ResetRequest(_Request):
    force: bool = False
    dry_run: bool = False
    confirmed_pids: list[int] = Field(
        default_factory=_no_items,
        description="operator_required pids the operator confirmed one by one (D-02).",
    )

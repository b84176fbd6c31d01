"""The light client spec-kitty imports to ask the supervisor for its sync daemon.

Importing the package imports nothing else: each public name is imported from its module the
first time it is used (PEP 562's module ``__getattr__``). A spec-kitty process that only calls
:func:`ensure_sync_daemon` so imports neither pydantic nor httpx
(``python -X importtime -c "import spec_kitty_supervisor_client"`` lists this file alone).
"""

from __future__ import annotations

from importlib import import_module

# Not ``typing.TYPE_CHECKING``: importing typing alone would double this file's import time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._client import AsyncSupervisorClient, SupervisorClient
    from ._discover import SpecKittyNotFound, installed_spec_kitty_version, spec_kitty_python
    from ._errors import (
        InvalidRequest,
        ProtocolMismatch,
        RequestConflict,
        RequestFailed,
        RootQuarantined,
        SpawnFailed,
        SupervisorBusy,
        SupervisorError,
        SupervisorExiting,
        SupervisorStartFailed,
        SupervisorUnavailable,
        UnsafeDirectoryError,
    )
    from ._models import (
        FAMILY_PORT_RANGE,
        PROTOCOL_VERSION,
        CleanupClass,
        DaemonOrigin,
        DaemonRole,
        DaemonState,
        DaemonView,
        DoctorFinding,
        DoctorReport,
        EnsureAction,
        EnsureRequest,
        EnsureResponse,
        ErrorBody,
        ErrorDetail,
        EventRecord,
        EventsResponse,
        FailedRecord,
        HandoverResponse,
        ListenerRecord,
        ResetRequest,
        ResetResult,
        RetireRequest,
        RetireResponse,
        RootState,
        Settings,
        ShutdownRequest,
        ShutdownResponse,
        SkippedRecord,
        StatusResponse,
        StopPath,
        SupervisorHealth,
        SupervisorView,
        SweptRecord,
        VersionPolicy,
    )
    from ._one_call import DaemonAnswer, EnsureAnswer, ensure_sync_daemon
    from ._paths import (
        SOCKET_PATH_LIMIT,
        ensure_private_dir,
        resolve_daemon_root,
        socket_path_for_root,
        supervisor_dir,
    )
    from ._upstream import (
        DaemonStartOutcome,
        doctor_report_upstream_shape,
        ensure_sync_daemon_running_compatible,
        upstream_auth_doctor,
    )

#: Each public name and the private module that defines it.
_MODULE_OF: dict[str, str] = {
    "AsyncSupervisorClient": "._client",
    "SupervisorClient": "._client",
    "SpecKittyNotFound": "._discover",
    "installed_spec_kitty_version": "._discover",
    "spec_kitty_python": "._discover",
    "InvalidRequest": "._errors",
    "ProtocolMismatch": "._errors",
    "RequestConflict": "._errors",
    "RequestFailed": "._errors",
    "RootQuarantined": "._errors",
    "SpawnFailed": "._errors",
    "SupervisorBusy": "._errors",
    "SupervisorError": "._errors",
    "SupervisorExiting": "._errors",
    "SupervisorStartFailed": "._errors",
    "SupervisorUnavailable": "._errors",
    "UnsafeDirectoryError": "._errors",
    "CleanupClass": "._models",
    "DaemonOrigin": "._models",
    "DaemonRole": "._models",
    "DaemonState": "._models",
    "DaemonView": "._models",
    "DoctorFinding": "._models",
    "DoctorReport": "._models",
    "EnsureAction": "._models",
    "EnsureRequest": "._models",
    "EnsureResponse": "._models",
    "ErrorBody": "._models",
    "ErrorDetail": "._models",
    "EventRecord": "._models",
    "EventsResponse": "._models",
    "FAMILY_PORT_RANGE": "._models",
    "FailedRecord": "._models",
    "HandoverResponse": "._models",
    "ListenerRecord": "._models",
    "PROTOCOL_VERSION": "._models",
    "ResetRequest": "._models",
    "ResetResult": "._models",
    "RetireRequest": "._models",
    "RetireResponse": "._models",
    "RootState": "._models",
    "Settings": "._models",
    "ShutdownRequest": "._models",
    "ShutdownResponse": "._models",
    "SkippedRecord": "._models",
    "StatusResponse": "._models",
    "StopPath": "._models",
    "SupervisorHealth": "._models",
    "SupervisorView": "._models",
    "SweptRecord": "._models",
    "VersionPolicy": "._models",
    "DaemonAnswer": "._one_call",
    "EnsureAnswer": "._one_call",
    "ensure_sync_daemon": "._one_call",
    "SOCKET_PATH_LIMIT": "._paths",
    "ensure_private_dir": "._paths",
    "resolve_daemon_root": "._paths",
    "socket_path_for_root": "._paths",
    "supervisor_dir": "._paths",
    "DaemonStartOutcome": "._upstream",
    "doctor_report_upstream_shape": "._upstream",
    "ensure_sync_daemon_running_compatible": "._upstream",
    "upstream_auth_doctor": "._upstream",
}

__all__ = [
    "AsyncSupervisorClient",
    "SpecKittyNotFound",
    "SupervisorClient",
    "ensure_sync_daemon",
    "DaemonAnswer",
    "EnsureAnswer",
    "installed_spec_kitty_version",
    "spec_kitty_python",
    "InvalidRequest",
    "ProtocolMismatch",
    "RequestConflict",
    "RequestFailed",
    "RootQuarantined",
    "SOCKET_PATH_LIMIT",
    "SpawnFailed",
    "SupervisorBusy",
    "SupervisorError",
    "SupervisorExiting",
    "SupervisorStartFailed",
    "SupervisorUnavailable",
    "UnsafeDirectoryError",
    "ensure_private_dir",
    "resolve_daemon_root",
    "socket_path_for_root",
    "supervisor_dir",
    "DaemonStartOutcome",
    "doctor_report_upstream_shape",
    "ensure_sync_daemon_running_compatible",
    "upstream_auth_doctor",
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
    "FAMILY_PORT_RANGE",
    "FailedRecord",
    "HandoverResponse",
    "ListenerRecord",
    "PROTOCOL_VERSION",
    "ResetRequest",
    "ResetResult",
    "RetireRequest",
    "RetireResponse",
    "RootState",
    "Settings",
    "ShutdownRequest",
    "ShutdownResponse",
    "SkippedRecord",
    "StatusResponse",
    "StopPath",
    "SupervisorHealth",
    "SupervisorView",
    "SweptRecord",
    "VersionPolicy",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups are ordinary attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

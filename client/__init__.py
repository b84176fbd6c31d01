"""The light client spec-kitty imports to ask the supervisor for its sync daemon."""

from __future__ import annotations

from ._errors import (
    InvalidRequest,
    ProtocolMismatch,
    RequestFailed,
    RootQuarantined,
    SpawnFailed,
    SupervisorError,
    SupervisorStartFailed,
    SupervisorUnavailable,
    UnsafeDirectoryError,
)
from ._models import *  # noqa: F403
from ._models import __all__ as _models_all
from ._paths import (
    SOCKET_PATH_LIMIT,
    ensure_private_dir,
    resolve_daemon_root,
    socket_path_for_root,
    supervisor_dir,
)

__all__ = [
    "InvalidRequest",
    "ProtocolMismatch",
    "RequestFailed",
    "RootQuarantined",
    "SOCKET_PATH_LIMIT",
    "SpawnFailed",
    "SupervisorError",
    "SupervisorStartFailed",
    "SupervisorUnavailable",
    "UnsafeDirectoryError",
    "ensure_private_dir",
    "resolve_daemon_root",
    "socket_path_for_root",
    "supervisor_dir",
    *_models_all,
]

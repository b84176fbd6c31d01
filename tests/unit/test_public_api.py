"""The client's public names are pinned, so that spec-kitty's imports change only on purpose.

Adding a name is a decision (it must then be kept for the whole of protocol v1); removing or
renaming one breaks every spec-kitty release that imports it. Update ``PUBLIC_NAMES`` in the
same change that updates ``client/__init__.py``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import spec_kitty_supervisor_client as client

PUBLIC_NAMES = [
    "AsyncSupervisorClient",
    "CleanupClass",
    "DaemonAnswer",
    "DaemonOrigin",
    "DaemonRole",
    "DaemonStartOutcome",
    "DaemonState",
    "DaemonView",
    "DoctorFinding",
    "DoctorReport",
    "EnsureAction",
    "EnsureAnswer",
    "EnsureRequest",
    "EnsureResponse",
    "ErrorBody",
    "ErrorDetail",
    "EventRecord",
    "EventsResponse",
    "FAMILY_PORT_RANGE",
    "FailedRecord",
    "HandoverResponse",
    "InvalidRequest",
    "ListenerRecord",
    "PROTOCOL_VERSION",
    "ProtocolMismatch",
    "RequestConflict",
    "RequestFailed",
    "ResetRequest",
    "ResetResult",
    "RetireRequest",
    "RetireResponse",
    "RootQuarantined",
    "RootState",
    "SOCKET_PATH_LIMIT",
    "Settings",
    "ShutdownRequest",
    "ShutdownResponse",
    "SkippedRecord",
    "SpawnFailed",
    "SpecKittyNotFound",
    "StatusResponse",
    "StopPath",
    "SupervisorBusy",
    "SupervisorClient",
    "SupervisorError",
    "SupervisorExiting",
    "SupervisorHealth",
    "SupervisorStartFailed",
    "SupervisorUnavailable",
    "SupervisorView",
    "SweptRecord",
    "UnsafeDirectoryError",
    "VersionPolicy",
    "doctor_report_upstream_shape",
    "ensure_private_dir",
    "ensure_sync_daemon",
    "ensure_sync_daemon_running_compatible",
    "installed_spec_kitty_version",
    "resolve_daemon_root",
    "socket_path_for_root",
    "spec_kitty_python",
    "supervisor_dir",
    "upstream_auth_doctor",
]


def test_public_names_are_exactly_the_pinned_list() -> None:
    assert sorted(client.__all__) == PUBLIC_NAMES


def test_public_names_are_listed_once() -> None:
    assert len(client.__all__) == len(set(client.__all__))


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("spec_kitty_supervisor_client")
    assert getattr(module, name, None) is not None, f"{name} is in __all__ but not importable"


def test_star_import_brings_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from spec_kitty_supervisor_client import *", namespace)
    assert set(PUBLIC_NAMES) <= set(namespace)


def test_every_exported_exception_is_a_supervisor_error() -> None:
    exceptions = [
        value
        for name in client.__all__
        if isinstance(value := getattr(client, name), type) and issubclass(value, BaseException)
    ]
    assert exceptions
    for exception in exceptions:
        assert issubclass(exception, client.SupervisorError), exception.__name__


def _public_methods(cls: type) -> set[str]:
    return {
        name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")
    }


def test_sync_and_async_clients_have_the_same_methods() -> None:
    # httpx's pairing: one name per operation; only closing differs (close / aclose).
    sync_methods = _public_methods(client.SupervisorClient) - {"close"}
    async_methods = _public_methods(client.AsyncSupervisorClient) - {"aclose"}
    assert sync_methods == async_methods

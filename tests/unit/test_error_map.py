"""One error map: every known bad request gets its 4xx (or 503) and its code, never a 500.

The requests go to a real supervisor's router over a real Unix socket; none of them needs a
daemon, and none may leave one behind or change the table.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import anyio
import pytest
from anyio.abc import SocketStream

from sks_harness import DEFAULT_TIMEOUT, fake_spec_kitty_venv
from spec_kitty_supervisor._api import serve_connection
from spec_kitty_supervisor._app import STATUS_BY_CODE, build_router
from spec_kitty_supervisor._core import Supervisor
from spec_kitty_supervisor._doctor_routes import doctor_routes
from spec_kitty_supervisor._errors import ErrorCode
from spec_kitty_supervisor._layout import RootLayout
from spec_kitty_supervisor_client import (
    AsyncSupervisorClient,
    InvalidRequest,
    RequestConflict,
    RequestFailed,
    RootQuarantined,
    Settings,
    SpawnFailed,
    SupervisorClient,
    SupervisorExiting,
    SupervisorUnavailable,
)
from spec_kitty_supervisor_client import _autostart as autostart_module
from spec_kitty_supervisor_client import _client as client_module
from spec_kitty_supervisor_client._errors import error_from_response
from spec_kitty_supervisor_client._transport import Reply

pytestmark = pytest.mark.anyio


@dataclass
class Served:
    supervisor: Supervisor
    socket: Path
    tmp: Path


@pytest.fixture
def layout(tmp_path: Path) -> RootLayout:
    layout = RootLayout(tmp_path / "root")
    layout.prepare()
    return layout


@pytest.fixture
async def served(tmp_path: Path, layout: RootLayout) -> AsyncIterator[Served]:
    supervisor = Supervisor(layout, Settings(), legacy_lock_wait=0.05)
    router = build_router(supervisor, doctor_routes)
    path = tmp_path / "api.sock"

    async def handle(stream: SocketStream) -> None:
        await serve_connection(stream, router, supervisor)

    async with (
        await anyio.create_unix_listener(path, mode=0o600) as listener,
        anyio.create_task_group() as group,
    ):
        group.start_soon(listener.serve, handle)
        yield Served(supervisor, path, tmp_path)
        group.cancel_scope.cancel()


async def _post(path: Path, target: str, body: object) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode()
    request = (
        f"POST {target} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    async with await anyio.connect_unix(path) as stream:
        await stream.send(request)
        chunks = []
        with anyio.fail_after(DEFAULT_TIMEOUT):  # a guard against a hang, not a duration
            while True:
                try:
                    chunks.append(await stream.receive())
                except anyio.EndOfStream:
                    break
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


def _ensure_body(tmp: Path, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        # Reports 3.2.4 without spec-kitty installed: every case is refused before a spawn.
        "python": str(fake_spec_kitty_venv(tmp, "3.2.4")),
        "package_version": "3.2.4",
        "cwd": str(tmp),
        "env": {"HOME": str(tmp), "PATH": os.defpath},
    }
    body.update(changes)
    return body


def _error(body: dict[str, object]) -> dict[str, object]:
    error = body["error"]
    assert isinstance(error, dict)
    assert error["message"]
    return error


@pytest.fixture
def legacy_lock_held(layout: RootLayout) -> Iterator[None]:
    """An upstream CLI holding ``R/sync-daemon.lock`` (as it does for up to ~21 s)."""
    fd = os.open(layout.legacy_lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def _ensure_cases(tmp: Path) -> list[tuple[str, dict[str, object], int, str]]:
    return [
        ("relative python", _ensure_body(tmp, python="python3"), 400, "invalid_request"),
        ("python with a NUL byte", _ensure_body(tmp, python="/usr/bin/py\x00thon"), 400,
         "invalid_python"),
        ("missing python", _ensure_body(tmp, python=str(tmp / "no" / "python")), 400,
         "invalid_python"),
        ("cwd that is no directory", _ensure_body(tmp, cwd=str(tmp / "missing")), 400,
         "invalid_cwd"),
        ("cwd with a NUL byte", _ensure_body(tmp, cwd="/tmp/\x00"), 400, "invalid_cwd"),
        ("environment with a NUL byte", _ensure_body(tmp, env={"HOME": "/h\x00"}), 400,
         "invalid_env"),
        ("version with a NUL byte", _ensure_body(tmp, package_version="3.2.4\x00"), 400,
         "version_mismatch"),
        ("a version the interpreter does not have", _ensure_body(tmp, package_version="3.2.7"),
         400, "version_mismatch"),
        ("an interpreter without spec-kitty-cli", _ensure_body(tmp, python=sys.executable,
         package_version=None), 400, "invalid_python"),
        ("3.2.2 for a root it cannot serve", _ensure_body(
            tmp, python=str(fake_spec_kitty_venv(tmp, "3.2.2")), package_version=None), 400,
         "unsupported_root"),
        ("a release without a sync daemon", _ensure_body(
            tmp, python=str(fake_spec_kitty_venv(tmp, "4.0.0rc7")), package_version=None), 400,
         "no_sync_daemon"),
        ("empty version", _ensure_body(tmp, package_version=""), 400, "invalid_request"),
    ]  # fmt: skip


async def test_bad_ensure_requests_get_their_code_and_change_nothing(served: Served) -> None:
    for name, body, status, code in _ensure_cases(served.tmp):
        got_status, answer = await _post(served.socket, "/v1/sync/ensure", body)
        assert (got_status, _error(answer)["code"]) == (status, code), name
    assert served.supervisor.table.daemons == []
    assert not served.supervisor.layout.legacy_state.exists()
    # Refused before any spawn: no daemon ever wrote to the root's log.
    assert not served.supervisor.layout.daemon_log.exists()


async def test_an_ensure_that_waits_too_long_for_upstreams_lock_is_a_conflict(
    served: Served, legacy_lock_held: None
) -> None:
    status, answer = await _post(served.socket, "/v1/sync/ensure", _ensure_body(served.tmp))
    assert (status, _error(answer)["code"]) == (409, "legacy_lock_busy")
    assert served.supervisor.table.daemons == []


async def test_a_quarantined_root_refuses_ensure_with_503(served: Served) -> None:
    served.supervisor.layout.state.write_text(
        json.dumps(
            {"schema_version": 1, "supervisor_pid": 1, "daemons": [], "quarantine_reason": "x"}
        )
    )
    await served.supervisor.recover()
    status, answer = await _post(served.socket, "/v1/sync/ensure", _ensure_body(served.tmp))
    assert (status, _error(answer)["code"]) == (503, "root_quarantined")


async def test_an_exiting_supervisor_refuses_ensure_and_reset_with_503(served: Served) -> None:
    served.supervisor.request_exit("test")
    for target, body in (("/v1/sync/ensure", _ensure_body(served.tmp)), ("/v1/reset", {})):
        status, answer = await _post(served.socket, target, body)
        assert (status, _error(answer)["code"]) == (503, "supervisor_exiting"), target


async def test_retiring_what_is_not_supervised_is_404(served: Served) -> None:
    status, answer = await _post(served.socket, "/v1/sync/retire", {"pid": os.getpid()})
    assert (status, _error(answer)["code"]) == (404, "no_such_daemon")


def test_every_error_code_of_the_core_has_a_status_and_none_is_500() -> None:
    assert set(STATUS_BY_CODE) == set(get_args(ErrorCode))
    for code, status in STATUS_BY_CODE.items():
        assert status in (400, 404, 409, 502, 503), code


# --------------------------------------------------------------------------------------------
# The client: its exception follows the code, never the status


@pytest.mark.parametrize(
    ("code", "status", "exception"),
    [
        ("supervisor_exiting", 503, SupervisorExiting),
        ("root_quarantined", 503, RootQuarantined),
        ("state_not_writable", 503, RequestFailed),
        ("root_file_refused", 503, RequestFailed),
        ("no_free_port", 503, SpawnFailed),
        ("spawn_failed", 502, SpawnFailed),
        ("legacy_lock_busy", 409, RequestConflict),
        ("already_retiring", 409, RequestConflict),
        ("retire_failed", 409, RequestConflict),
        ("invalid_python", 400, InvalidRequest),
        ("no_sync_daemon", 400, InvalidRequest),
        ("version_mismatch", 400, InvalidRequest),
        ("no_such_daemon", 404, InvalidRequest),
        ("a_code_of_a_newer_supervisor", 400, RequestFailed),
    ],
)
def test_the_client_exception_follows_the_code(
    code: str, status: int, exception: type[Exception]
) -> None:
    error = error_from_response(code, "why", status, None)
    assert type(error) is exception


def test_only_supervisor_exiting_means_retry_with_a_new_supervisor() -> None:
    retried = [
        code
        for code in [*get_args(ErrorCode), "invalid_request", "not_found", "internal_error"]
        if isinstance(error_from_response(code, "why", 503, None), SupervisorUnavailable)
    ]
    assert retried == ["supervisor_exiting"]


class _ScriptedTransport:
    """The sync client's transport, answering each request with the next canned reply."""

    def __init__(self, replies: list[tuple[int, dict[str, object]] | Exception]) -> None:
        self.replies = replies
        self.closed = 0
        self.socket_path = Path("/unused/supervisor.sock")
        self.followed: list[Path] = []

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        status, document = reply
        return Reply(status=status, protocol="1", body=json.dumps(document).encode())

    async def arequest(self, method: str, path: str, body: bytes | None = None) -> Reply:
        return self.request(method, path, body)

    def close(self) -> None:
        self.closed += 1

    def follow(self, socket_path: Path) -> None:
        self.followed.append(socket_path)


def _error_document(code: str) -> dict[str, object]:
    return {"error": {"code": code, "message": f"the supervisor says {code}"}}


def _ensure_answer(pid: int) -> dict[str, object]:
    return {
        "action": "spawned",
        "daemon": {
            "pid": pid,
            "port": 9440,
            "url": "http://127.0.0.1:9440",
            "package_version": "3.2.4",
            "python": "/usr/bin/python3",
            "origin": "spawned",
            "state": "healthy",
            "role": "current",
            "started_at": "2026-12-01T00:00:00+00:00",
        },
    }


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(
        autostart_module, "start_supervisor", lambda root, first_request=None: calls.append("start")
    )
    monkeypatch.setattr(
        autostart_module,
        "replace_exiting_supervisor",
        lambda root, first_request=None: calls.append("replace"),
    )
    return calls


def test_an_exiting_supervisor_is_replaced_and_the_ensure_retried(
    tmp_path: Path, started: list[str]
) -> None:
    client = SupervisorClient(tmp_path / "root")
    transport = _ScriptedTransport(
        [(503, _error_document("supervisor_exiting")), (200, _ensure_answer(7))]
    )
    client._transport = transport  # type: ignore[assignment]
    answer = client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert answer.daemon.pid == 7
    assert started == ["replace"]
    assert transport.closed == 1  # the kept-alive connection to the leaving supervisor


@pytest.mark.parametrize("code", ["root_quarantined", "state_not_writable"])
def test_a_503_that_is_not_supervisor_exiting_is_raised_without_a_retry(
    tmp_path: Path, started: list[str], code: str
) -> None:
    client = SupervisorClient(tmp_path / "root")
    client._transport = _ScriptedTransport([(503, _error_document(code))])  # type: ignore[assignment]
    with pytest.raises(RequestFailed) as raised:
        client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert raised.value.code == code
    assert started == []


def test_without_autostart_an_exiting_supervisor_is_reported_not_replaced(
    tmp_path: Path, started: list[str]
) -> None:
    client = SupervisorClient(tmp_path / "root", autostart=False)
    client._transport = _ScriptedTransport([(503, _error_document("supervisor_exiting"))])  # type: ignore[assignment]
    with pytest.raises(SupervisorExiting):
        client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert started == []


# A supervisor killed while it served us: it may still accept a connection for a moment while
# the kernel closes its sockets, so one look may find it "there" and the request fails again.
# The supervisor the call itself started may be the one killed while it served the request.

_RESET = SupervisorUnavailable("the supervisor on /r/supervisor.sock did not answer: reset")
_CLOSED = SupervisorUnavailable(
    "the supervisor on /r/supervisor.sock did not answer: connection closed before a complete reply"
)


def test_a_supervisor_gone_mid_request_is_looked_for_twice_and_the_ensure_answered(
    tmp_path: Path, started: list[str]
) -> None:
    client = SupervisorClient(tmp_path / "root")
    transport = _ScriptedTransport([_RESET, _RESET, (200, _ensure_answer(7))])
    client._transport = transport  # type: ignore[assignment]
    answer = client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert answer.daemon.pid == 7
    assert started == ["start", "start"]


def test_the_started_supervisor_killed_while_serving_then_its_dying_socket_then_a_successor(
    tmp_path: Path, started: list[str]
) -> None:
    # No supervisor; the one started is killed while it serves the request (closed); the next
    # look finds its socket still accepting while the kernel closes it (reset); the third
    # start is the successor, which answers.
    client = SupervisorClient(tmp_path / "root")
    transport = _ScriptedTransport([_RESET, _CLOSED, _RESET, (200, _ensure_answer(7))])
    client._transport = transport  # type: ignore[assignment]
    answer = client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert answer.daemon.pid == 7
    assert started == ["start", "start", "start"]


def test_a_supervisor_that_stays_gone_is_reported_after_three_looks(
    tmp_path: Path, started: list[str]
) -> None:
    client = SupervisorClient(tmp_path / "root")
    client._transport = _ScriptedTransport([_RESET] * 4)  # type: ignore[assignment]
    with pytest.raises(SupervisorUnavailable, match="did not answer"):
        client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert started == ["start", "start", "start"]


def test_an_exiting_supervisor_then_a_dying_one_are_replaced_then_started(
    tmp_path: Path, started: list[str]
) -> None:
    client = SupervisorClient(tmp_path / "root")
    transport = _ScriptedTransport(
        [(503, _error_document("supervisor_exiting")), _RESET, (200, _ensure_answer(8))]
    )
    client._transport = transport  # type: ignore[assignment]
    answer = client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert answer.daemon.pid == 8
    assert started == ["replace", "start"]


@pytest.mark.anyio
async def test_the_async_client_looks_for_a_supervisor_gone_mid_request_as_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        client_module, "start_supervisor", lambda root, first_request=None: calls.append("start")
    )
    client = AsyncSupervisorClient(tmp_path / "root")
    scripted = _ScriptedTransport([_RESET, _CLOSED, _RESET, (200, _ensure_answer(9))])
    monkeypatch.setattr(client._transport, "request", scripted.arequest)
    answer = await client.ensure(str(fake_spec_kitty_venv(tmp_path, "3.2.4")), "3.2.4", env={})
    assert answer.daemon.pid == 9
    assert calls == ["start", "start", "start"]
    await client.aclose()

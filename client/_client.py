"""``SupervisorClient`` and ``AsyncSupervisorClient``: the same methods, sync and async.

with SupervisorClient() as client:
    daemon = client.ensure(python="/path/to/venv/bin/python", package_version="3.2.7").daemon
    print(daemon.url, daemon.token)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ._autostart import (
    START_ATTEMPTS,
    handed_request,
    replace_exiting_supervisor,
    request_or_start,
    start_supervisor,
)
from ._discover import check_spec_kitty_interpreter
from ._environment import passed_environment
from ._errors import InvalidRequest, SupervisorExiting, SupervisorUnavailable
from ._models import (
    DoctorReport,
    EnsureRequest,
    EnsureResponse,
    EventsResponse,
    HandoverResponse,
    ResetRequest,
    RetireRequest,
    RetireResponse,
    ShutdownRequest,
    ShutdownResponse,
    StatusResponse,
    SupervisorHealth,
)
from ._paths import resolve_daemon_root, socket_path_for_root
from ._transport import AsyncTransport, SyncTransport, raise_for_reply

__all__ = ["AsyncSupervisorClient", "SupervisorClient"]

_R = TypeVar("_R", bound=BaseModel)

DEFAULT_TIMEOUT = 120.0


def _ensure_request(
    python: str, package_version: str | None, cwd: str | None, env: Mapping[str, str] | None
) -> EnsureRequest:
    try:
        return EnsureRequest(
            python=python,
            package_version=package_version,
            cwd=cwd if cwd is not None else os.getcwd(),
            env=passed_environment(os.environ if env is None else env),
        )
    except ValidationError as exc:
        # The same code the supervisor would answer: the request never leaves the client.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest("invalid_request", problems, 400) from None


def _body(model: BaseModel | None) -> bytes | None:
    return None if model is None else model.model_dump_json().encode()


class SupervisorClient:
    """A connection to the supervisor of one daemon root (``$SPEC_KITTY_HOME`` by default)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        autostart: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.daemon_root = resolve_daemon_root(root)
        self.socket_path = socket_path_for_root(self.daemon_root)
        self.autostart = autostart
        self._transport = SyncTransport(self.socket_path, timeout)

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def _call(
        self,
        method: str,
        path: str,
        response_model: type[_R],
        body: BaseModel | None = None,
        *,
        may_start: bool = False,
        before_start: Callable[[], object] | None = None,
    ) -> _R:
        reply = request_or_start(
            self._transport,
            self.daemon_root,
            method,
            path,
            _body(body),
            may_start=may_start and self.autostart,
            before_start=before_start,
        )
        self.socket_path = self._transport.socket_path  # a started supervisor may move it
        return response_model.model_validate_json(reply.body)

    def start(self) -> SupervisorHealth:
        """Make sure a supervisor runs for this root (starting one if needed)."""
        return self._call("GET", "/v1/health", SupervisorHealth, may_start=True)

    def health(self) -> SupervisorHealth:
        return self._call("GET", "/v1/health", SupervisorHealth)

    def status(self) -> StatusResponse:
        return self._call("GET", "/v1/status", StatusResponse)

    def ensure(
        self,
        python: str,
        package_version: str | None = None,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> EnsureResponse:
        """The root's sync daemon for this interpreter, started if needed.

        The supervisor reads the spec-kitty-cli version installed for ``python``;
        ``package_version``, when given, must be that version.
        """
        request = _ensure_request(python, package_version, cwd, env)
        return self._call(
            "POST",
            "/v1/sync/ensure",
            EnsureResponse,
            request,
            may_start=True,
            before_start=lambda: check_spec_kitty_interpreter(python, package_version),
        )

    def retire(
        self, *, pid: int | None = None, port: int | None = None, reason: str = "requested"
    ) -> RetireResponse:
        request = RetireRequest(pid=pid, port=port, reason=reason)
        return self._call("POST", "/v1/sync/retire", RetireResponse, request)

    def events(self, since: int = 0, limit: int = 200) -> EventsResponse:
        return self._call("GET", f"/v1/events?since={since}&limit={limit}", EventsResponse)

    def shutdown(self, *, stop_children: bool = False) -> ShutdownResponse:
        request = ShutdownRequest(stop_children=stop_children)
        return self._call("POST", "/v1/shutdown", ShutdownResponse, request)

    def handover(self) -> HandoverResponse:
        return self._call("POST", "/v1/handover", HandoverResponse)

    def restart(self) -> StatusResponse:
        return self._call("POST", "/v1/restart", StatusResponse)

    def doctor(self) -> DoctorReport:
        return self._call("GET", "/v1/doctor", DoctorReport)

    def reset(
        self, *, force: bool = False, dry_run: bool = False, confirmed_pids: list[int] | None = None
    ) -> DoctorReport:
        request = ResetRequest(force=force, dry_run=dry_run, confirmed_pids=confirmed_pids or [])
        return self._call("POST", "/v1/reset", DoctorReport, request)


class AsyncSupervisorClient:
    """The async twin of :class:`SupervisorClient` (httpx over the socket)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        autostart: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.daemon_root = resolve_daemon_root(root)
        self.socket_path = socket_path_for_root(self.daemon_root)
        self.autostart = autostart
        self._transport = AsyncTransport(self.socket_path, timeout)

    async def __aenter__(self) -> AsyncSupervisorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        response_model: type[_R],
        body: BaseModel | None = None,
        *,
        may_start: bool = False,
        before_start: Callable[[], object] | None = None,
    ) -> _R:
        try:
            reply = await self._transport.request(method, path, _body(body))
            raise_for_reply(reply)
            return response_model.model_validate_json(reply.body)
        except SupervisorUnavailable as exc:
            if not (may_start and self.autostart):
                raise
            failure = exc
        import anyio.to_thread

        if before_start is not None:
            await anyio.to_thread.run_sync(before_start)
        # As request_or_start does (see START_ATTEMPTS there).
        handed = handed_request(method, path, _body(body))
        for attempt in range(1, START_ATTEMPTS + 1):
            exiting = isinstance(failure, SupervisorExiting)
            restart = replace_exiting_supervisor if exiting else start_supervisor
            await anyio.to_thread.run_sync(
                functools.partial(restart, self.daemon_root, first_request=handed)
            )
            socket_path = socket_path_for_root(self.daemon_root)
            if socket_path != self.socket_path:  # see SupervisorClient._follow_socket
                await self._transport.aclose()
                self.socket_path = socket_path
                self._transport = AsyncTransport(socket_path, self._transport.timeout)
            try:
                reply = await self._transport.request(method, path, _body(body))
                raise_for_reply(reply)
                return response_model.model_validate_json(reply.body)
            except SupervisorUnavailable as exc:
                if attempt == START_ATTEMPTS:
                    raise
                failure = exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def start(self) -> SupervisorHealth:
        return await self._call("GET", "/v1/health", SupervisorHealth, may_start=True)

    async def health(self) -> SupervisorHealth:
        return await self._call("GET", "/v1/health", SupervisorHealth)

    async def status(self) -> StatusResponse:
        return await self._call("GET", "/v1/status", StatusResponse)

    async def ensure(
        self,
        python: str,
        package_version: str | None = None,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> EnsureResponse:
        request = _ensure_request(python, package_version, cwd, env)
        return await self._call(
            "POST",
            "/v1/sync/ensure",
            EnsureResponse,
            request,
            may_start=True,
            before_start=lambda: check_spec_kitty_interpreter(python, package_version),
        )

    async def retire(
        self, *, pid: int | None = None, port: int | None = None, reason: str = "requested"
    ) -> RetireResponse:
        request = RetireRequest(pid=pid, port=port, reason=reason)
        return await self._call("POST", "/v1/sync/retire", RetireResponse, request)

    async def events(self, since: int = 0, limit: int = 200) -> EventsResponse:
        return await self._call("GET", f"/v1/events?since={since}&limit={limit}", EventsResponse)

    async def shutdown(self, *, stop_children: bool = False) -> ShutdownResponse:
        request = ShutdownRequest(stop_children=stop_children)
        return await self._call("POST", "/v1/shutdown", ShutdownResponse, request)

    async def handover(self) -> HandoverResponse:
        return await self._call("POST", "/v1/handover", HandoverResponse)

    async def restart(self) -> StatusResponse:
        return await self._call("POST", "/v1/restart", StatusResponse)

    async def doctor(self) -> DoctorReport:
        return await self._call("GET", "/v1/doctor", DoctorReport)

    async def reset(
        self, *, force: bool = False, dry_run: bool = False, confirmed_pids: list[int] | None = None
    ) -> DoctorReport:
        request = ResetRequest(force=force, dry_run=dry_run, confirmed_pids=confirmed_pids or [])
        return await self._call("POST", "/v1/reset", DoctorReport, request)

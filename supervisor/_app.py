"""The ``/v1`` endpoints: thin handlers that parse a model, ask the supervisor, answer a model."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from spec_kitty_supervisor_client._models import (
    PROTOCOL_VERSION,
    EnsureRequest,
    EventsResponse,
    HandoverResponse,
    RetireRequest,
    RetireResponse,
    ShutdownRequest,
    ShutdownResponse,
    StatusResponse,
    SupervisorHealth,
    SupervisorView,
)

from ._api import ApiError, ApiRequest, Route, Router
from ._core import LifecycleError, Supervisor
from ._signals import SignalRefused

__all__ = ["build_router", "supervisor_view"]


def supervisor_view(supervisor: Supervisor) -> SupervisorView:
    return SupervisorView(
        pid=supervisor.pid,
        version=supervisor.version,
        protocol_version=PROTOCOL_VERSION,
        root=str(supervisor.layout.daemon_root),
        socket=str(supervisor.layout.socket),
        started_at=supervisor.started_at,
        auto_started=supervisor.auto_started,
        service_manager=supervisor.service_manager,
        settings=supervisor.settings,
    )


def status_of(supervisor: Supervisor) -> StatusResponse:
    reason = supervisor.table.quarantine_reason
    return StatusResponse(
        supervisor=supervisor_view(supervisor),
        root_state="quarantined" if reason is not None else "ok",
        root_state_reason=reason,
        daemons=supervisor.daemon_views(),
    )


def build_router(
    supervisor: Supervisor, extra_routes: Callable[[Supervisor], list[Route]] | None = None
) -> Router:
    async def health(request: ApiRequest) -> BaseModel:
        return SupervisorHealth(
            pid=supervisor.pid,
            version=supervisor.version,
            protocol_version=PROTOCOL_VERSION,
            root=str(supervisor.layout.daemon_root),
        )

    async def status(request: ApiRequest) -> BaseModel:
        return status_of(supervisor)

    async def ensure(request: ApiRequest) -> BaseModel:
        body = request.parse(EnsureRequest)
        if supervisor.exiting:
            raise ApiError(503, "supervisor_exiting", "the supervisor is shutting down; retry")
        try:
            return await supervisor.ensure(body)
        except LifecycleError as exc:
            raise ApiError(exc.status, exc.code, str(exc), exc.details) from None

    async def retire(request: ApiRequest) -> BaseModel:
        body = request.parse(RetireRequest)
        record = supervisor.find(body.pid, body.port)
        if record is None:
            raise ApiError(
                404, "no_such_daemon", f"no supervised daemon with pid={body.pid} port={body.port}"
            )
        view = record.view()
        try:
            stop_path = await supervisor.retire(record, body.reason)
        except (SignalRefused, TimeoutError) as exc:
            raise ApiError(409, "retire_failed", str(exc)) from None
        return RetireResponse(retired=view, stop_path=stop_path)

    async def events(request: ApiRequest) -> BaseModel:
        since = request.query_int("since", 0)
        limit = request.query_int("limit", 200)
        if limit < 1 or since < 0:
            raise ApiError(400, "invalid_request", "since must be >= 0 and limit >= 1")
        return EventsResponse(events=supervisor.ledger.events(since=since, limit=limit))

    async def shutdown(request: ApiRequest) -> BaseModel:
        body = request.parse(ShutdownRequest)
        stopped: list[int] = []
        if body.stop_children:
            stopped = await supervisor.stop_all("supervisor stop --children")
        supervisor.request_exit("stop requested")
        return ShutdownResponse(stopping=True, children_stopped=stopped)

    async def handover(request: ApiRequest) -> BaseModel:
        daemons = [record.pid for record in supervisor.table.daemons]
        supervisor.ledger.record("handover", reason="a newer supervisor asked to take over")
        supervisor.request_exit("handover")
        return HandoverResponse(handing_over=True, pid=supervisor.pid, daemons=daemons)

    async def restart(request: ApiRequest) -> BaseModel:
        supervisor.lift_quarantine("spec-kitty-supervisor restart")
        return status_of(supervisor)

    routes = [
        Route("GET", "/v1/health", health),
        Route("GET", "/v1/status", status),
        Route("POST", "/v1/sync/ensure", ensure),
        Route("POST", "/v1/sync/retire", retire),
        Route("GET", "/v1/events", events),
        Route("POST", "/v1/shutdown", shutdown),
        Route("POST", "/v1/handover", handover),
        Route("POST", "/v1/restart", restart),
    ]
    if extra_routes is not None:
        routes += extra_routes(supervisor)
    return Router(routes)

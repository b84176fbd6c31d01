"""The ``/v1`` endpoints: thin handlers that parse a model, ask the supervisor, answer a model."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from spec_kitty_supervisor_client._models import (
    PROTOCOL_VERSION,
    EnsureRequest,
    EnsureResponse,
    EventsResponse,
    HandoverResponse,
    RetireRequest,
    RetireResponse,
    ShutdownRequest,
    ShutdownResponse,
    SupervisorHealth,
)

from ._api import ApiError, ApiRequest, Encoded, Handler, ParsedBodies, Route, Router
from ._core import Supervisor
from ._errors import ErrorCode, LifecycleError, RequestErrorCode

__all__ = [
    "STATUSES_OF_REQUEST_CODES",
    "STATUS_BY_CODE",
    "api_error",
    "build_router",
    "refuse_while_exiting",
]

#: The one map from the core's error codes to HTTP statuses (see :mod:`._errors`).
STATUS_BY_CODE: dict[ErrorCode, int] = {
    "invalid_python": 400,
    "invalid_cwd": 400,
    "invalid_env": 400,
    "unsupported_root": 400,
    "no_sync_daemon": 400,
    "version_mismatch": 400,
    "no_such_daemon": 404,
    "already_retiring": 409,
    "retire_failed": 409,
    "legacy_lock_busy": 409,
    "spawn_failed": 502,
    "no_free_port": 503,
    "root_quarantined": 503,
    "state_not_writable": 503,
    "root_file_refused": 503,
    "supervisor_exiting": 503,
}


#: The statuses the HTTP layer (``_api.py``) answers its own codes with; ``bad_http`` carries
#: the status its parser chose (``_http.HttpError``). Kept in step with the code by
#: ``tests/unit/test_error_codes.py``, and written into ``docs/protocol.schema.json``.
STATUSES_OF_REQUEST_CODES: dict[RequestErrorCode, frozenset[int]] = {
    "bad_http": frozenset({400, 411, 413, 431}),
    "invalid_json": frozenset({400}),
    "invalid_request": frozenset({400}),
    "not_found": frozenset({404}),
    "method_not_allowed": frozenset({405}),
    "peer_refused": frozenset({403}),
    "protocol_mismatch": frozenset({400}),
    "internal_error": frozenset({500}),
}


def api_error(exc: LifecycleError) -> ApiError:
    """The error document for a refusal of the core."""
    return ApiError(STATUS_BY_CODE[exc.code], exc.code, str(exc), exc.details or None)


def refuse_while_exiting(supervisor: Supervisor) -> None:
    """A request that would change what runs is refused once the supervisor is leaving."""
    if supervisor.exiting:
        raise LifecycleError("supervisor_exiting", "the supervisor is shutting down; retry")


def _answering_errors(handler: Handler) -> Handler:
    """The route layer: a refusal of the core becomes its error document, with its status."""

    async def handle(request: ApiRequest) -> BaseModel | Encoded:
        try:
            return await handler(request)
        except LifecycleError as exc:
            raise api_error(exc) from None

    return handle


class _LastJson:
    """The JSON of the last ``ensure`` answer, kept while the lifecycle gives that same answer.

    A warm ``ensure`` is answered with the very :class:`EnsureResponse` object of the last one
    while nothing it says changed (``_lifecycle._ensure``). That object cannot change: the
    model is frozen and holds only strings, numbers and a frozen :class:`DaemonView` of them
    (``tests/unit/test_api.py`` checks that), so its JSON is written once.
    """

    def __init__(self) -> None:
        self._last: tuple[EnsureResponse, Encoded] | None = None

    def encoded(self, answer: EnsureResponse) -> Encoded:
        last = self._last
        if last is not None and last[0] is answer:
            return last[1]
        encoded = Encoded(answer.model_dump_json().encode())
        self._last = (answer, encoded)
        return encoded


class _LastStatus:
    """The JSON of the last ``status`` answer, with the values it was made of.

    Given again only while every one of them compares equal (``Supervisor.status_values``;
    ADR 0016: a value is remembered, never a decision; ADR 0023). They are read for every
    request; the answer is built and written only when one changed.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._last: tuple[tuple[object, ...], Encoded] | None = None

    def encoded(self) -> Encoded:
        said = self._supervisor.status_values()
        last = self._last
        if last is not None and last[0] == said:
            return last[1]
        encoded = Encoded(self._supervisor.status().model_dump_json().encode())
        self._last = (said, encoded)
        return encoded


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

    status_json = _LastStatus(supervisor)

    async def status(request: ApiRequest) -> Encoded:
        return status_json.encoded()

    ensure_bodies = ParsedBodies(EnsureRequest)
    ensure_json = _LastJson()

    async def ensure(request: ApiRequest) -> BaseModel | Encoded:
        body = ensure_bodies.parse(request)
        refuse_while_exiting(supervisor)
        return ensure_json.encoded(await supervisor.ensure(body))

    async def retire(request: ApiRequest) -> BaseModel:
        body = request.parse(RetireRequest)
        record = supervisor.find(body.pid, body.port)
        if record is None:
            raise LifecycleError(
                "no_such_daemon", f"no supervised daemon with pid={body.pid} port={body.port}"
            )
        view = record.view()
        stop_path = await supervisor.retire(record, body.reason)
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
        await supervisor.lift_quarantine("spec-kitty-supervisor restart")
        return supervisor.status()

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
    return Router([Route(r.method, r.path, _answering_errors(r.handler)) for r in routes])

"""``GET /v1/doctor`` and ``POST /v1/reset``: the running supervisor's face of :mod:`._doctor`.

Apart from :mod:`._doctor` so that the ``doctor`` command, which runs without serving
anything, does not import the API's request handling (:mod:`._api`) with it.
"""

from __future__ import annotations

from pydantic import BaseModel

from spec_kitty_supervisor_client._models import ResetRequest

from ._api import ApiRequest, Route
from ._doctor import RunningSupervisor, supervisor_doctor
from ._errors import LifecycleError
from ._legacy_state import LegacyLockTimeout

__all__ = ["doctor_routes"]


def doctor_routes(supervisor: RunningSupervisor) -> list[Route]:
    """``GET /v1/doctor`` and ``POST /v1/reset`` for :func:`._app.build_router`."""

    async def doctor(request: ApiRequest) -> BaseModel:
        return await supervisor_doctor(supervisor)

    async def reset(request: ApiRequest) -> BaseModel:
        body = request.parse(ResetRequest)
        if supervisor.exiting:
            raise LifecycleError("supervisor_exiting", "the supervisor is shutting down; retry")
        try:
            return await supervisor_doctor(supervisor, body)
        except LegacyLockTimeout as exc:
            raise LifecycleError(
                "legacy_lock_busy", f"an upstream spec-kitty CLI is busy: {exc}; retry"
            ) from None

    return [Route("GET", "/v1/doctor", doctor), Route("POST", "/v1/reset", reset)]

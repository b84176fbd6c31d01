"""``GET /v1/doctor`` and ``POST /v1/reset``: the running supervisor's face of :mod:`._doctor`.

Apart from :mod:`._doctor` so that the ``doctor`` command, which runs without serving
anything, does not import the API's request handling (:mod:`._api`) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from spec_kitty_supervisor_client._models import ResetRequest

from ._api import ApiRequest, Route
from ._errors import LifecycleError
from ._legacy_state import LegacyLockTimeout

if TYPE_CHECKING:
    from ._doctor import RunningSupervisor

__all__ = ["doctor_routes"]


def doctor_routes(supervisor: RunningSupervisor) -> list[Route]:
    """``GET /v1/doctor`` and ``POST /v1/reset`` for :func:`._app.build_router`.

    :mod:`._doctor` (with classification and discovery) is imported by the first doctor
    request or the first orphan sweep, not by the supervisor's start: serving needs neither.
    """

    async def doctor(request: ApiRequest) -> BaseModel:
        from ._doctor import supervisor_doctor

        return await supervisor_doctor(supervisor)

    async def reset(request: ApiRequest) -> BaseModel:
        from ._doctor import supervisor_doctor

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

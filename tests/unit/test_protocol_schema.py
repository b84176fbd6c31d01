"""The wire protocol is pinned by ``docs/protocol.schema.json``, so it changes only on purpose.

Within protocol version 1 changes must be additive (new optional fields, new models, new
endpoints): a client of an older release must still read a newer supervisor's answers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import BaseModel

from scripts.export_schema import SCHEMA_PATH, protocol_models, render_schema
from spec_kitty_supervisor._app import build_router
from spec_kitty_supervisor._core import Supervisor
from spec_kitty_supervisor._doctor_routes import doctor_routes
from spec_kitty_supervisor_client import PROTOCOL_VERSION, SupervisorClient

STALE = (
    "docs/protocol.schema.json differs from what the models in client/_models.py produce. "
    "Run `python scripts/export_schema.py` and commit the result; within protocol v1 changes "
    "must be additive (new optional fields, new models, new endpoints)."
)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    request_model: type[BaseModel] | None
    response_model: type[BaseModel]


def _client_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Endpoint]:
    """Call every public method of the sync client and record what it would send and expect."""
    seen: dict[str, Endpoint] = {}

    def record(
        self: SupervisorClient,
        method: str,
        path: str,
        response_model: type[BaseModel],
        body: BaseModel | None = None,
        *,
        may_start: bool = False,
        before_start: Callable[[], object] | None = None,
    ) -> Any:
        route = path.split("?", 1)[0]
        seen[f"{method} {route}"] = Endpoint(
            method, route, type(body) if body is not None else None, response_model
        )
        return None

    monkeypatch.setattr(SupervisorClient, "_call", record)
    client = SupervisorClient(tmp_path / "root", autostart=False)
    arguments: dict[str, dict[str, Any]] = {
        "ensure": {"python": "/usr/bin/python3", "package_version": "3.2.4", "env": {}},
        "retire": {"pid": 1},
    }
    for name, method in inspect.getmembers(client, inspect.ismethod):
        if name.startswith("_") or name == "close":
            continue
        method(**arguments.get(name, {}))
    client.close()
    return seen


def test_checked_in_schema_matches_the_models() -> None:
    assert SCHEMA_PATH.is_file(), f"{SCHEMA_PATH} is missing. {STALE}"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), STALE


def test_schema_names_the_protocol_version() -> None:
    document = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert document["protocol_version"] == PROTOCOL_VERSION == 1


def test_schema_holds_every_exported_model_and_nothing_else() -> None:
    document = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert sorted(document["models"]) == sorted(protocol_models())


def test_every_endpoint_request_and_response_model_is_in_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["models"]
    endpoints = _client_endpoints(tmp_path, monkeypatch)
    assert endpoints, "the client calls no endpoint"
    missing = [
        f"{key}: {model.__name__}"
        for key, endpoint in sorted(endpoints.items())
        for model in (endpoint.request_model, endpoint.response_model)
        if model is not None and model.__name__ not in models
    ]
    assert not missing, f"endpoint models missing from the schema: {missing}. {STALE}"


def test_every_served_endpoint_has_a_client_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router the supervisor serves (as ``_runner`` builds it); its handlers close over
    # the supervisor but are not called here.
    router = build_router(cast(Supervisor, object()), doctor_routes)
    served = {f"{method} {path}" for method, path in router._routes}
    called = set(_client_endpoints(tmp_path, monkeypatch))
    assert served - called == set(), "endpoints the client cannot reach (so untested here)"


def test_the_ensure_endpoint_uses_the_ensure_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = _client_endpoints(tmp_path, monkeypatch)["POST /v1/sync/ensure"]
    assert endpoint.request_model is not None
    assert endpoint.request_model.__name__ == "EnsureRequest"
    assert endpoint.response_model.__name__ == "EnsureResponse"

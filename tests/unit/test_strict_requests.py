"""Request bodies are parsed strictly: JSON's types as they are, no coercion (issue 14)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from spec_kitty_supervisor._api import ApiError, ApiRequest
from spec_kitty_supervisor_client._models import (
    EnsureRequest,
    ResetRequest,
    RetireRequest,
    ShutdownRequest,
)

ENSURE = '"python": "/usr/bin/python3", "package_version": "3.2.4"'

REFUSED: list[tuple[type[BaseModel], str]] = [
    (ResetRequest, '{"force": "yes"}'),
    (ResetRequest, '{"force": "true"}'),
    (ResetRequest, '{"force": 1}'),
    (ResetRequest, '{"dry_run": 0}'),
    (ResetRequest, '{"confirmed_pids": [true]}'),
    (ResetRequest, '{"confirmed_pids": ["12"]}'),
    (ResetRequest, '{"confirmed_pids": [12.0]}'),
    (RetireRequest, '{"pid": true}'),
    (RetireRequest, '{"pid": false, "port": 9431}'),
    (RetireRequest, '{"pid": "1"}'),
    (RetireRequest, '{"pid": 1.0}'),
    (RetireRequest, '{"port": "9431"}'),
    (RetireRequest, '{"port": 9431, "reason": 5}'),
    (ShutdownRequest, '{"stop_children": "yes"}'),
    (ShutdownRequest, '{"stop_children": 1}'),
    (ShutdownRequest, '{"stop_children": null}'),
    (EnsureRequest, '{"python": "/usr/bin/python3", "package_version": 3.2}'),
    (EnsureRequest, '{"python": true, "package_version": "3.2.4"}'),
    (EnsureRequest, "{" + ENSURE + ', "env": {"HOME": 1}}'),
    (EnsureRequest, "{" + ENSURE + ', "cwd": 7}'),
]

ACCEPTED: list[tuple[type[BaseModel], str]] = [
    (ResetRequest, '{"force": true, "dry_run": false, "confirmed_pids": [12, 13]}'),
    (RetireRequest, '{"pid": 4242, "reason": "requested"}'),
    (RetireRequest, '{"port": 9431}'),
    (ShutdownRequest, '{"stop_children": true}'),
    (EnsureRequest, "{" + ENSURE + ', "cwd": null, "env": {"HOME": "/home/ada"}}'),
]


def _request(body: str) -> ApiRequest:
    return ApiRequest(method="POST", path="/v1/x", query={}, body=body.encode())


@pytest.mark.parametrize(("model", "body"), REFUSED, ids=[f"{m.__name__}:{b}" for m, b in REFUSED])
def test_a_value_of_another_json_type_is_a_400_not_a_coercion(
    model: type[BaseModel], body: str
) -> None:
    with pytest.raises(ApiError) as refused:
        _request(body).parse(model)
    assert (refused.value.status, refused.value.code) == (400, "invalid_request")


@pytest.mark.parametrize(("model", "body"), ACCEPTED, ids=[m.__name__ for m, _ in ACCEPTED])
def test_a_body_of_the_right_types_is_accepted(model: type[BaseModel], body: str) -> None:
    assert isinstance(_request(body).parse(model), model)


def test_the_clients_own_requests_pass_strict_parsing() -> None:
    # What the client library builds in Python must survive the same strictness.
    built = [
        EnsureRequest(python="/usr/bin/python3", package_version="3.2.4", cwd="/", env={}),
        RetireRequest(pid=4242),
        ShutdownRequest(stop_children=True),
        ResetRequest(force=True, confirmed_pids=[1, 2]),
    ]
    for request in built:
        assert type(request).model_validate_json(request.model_dump_json()) == request

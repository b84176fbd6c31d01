"""The ``status`` route remembers its JSON with the values it was made of (docs/adr/0023).

ADR 0016's rule: a remembered answer is given again only while everything it is made of
compares equal, and each memory has a test that changes each input and fails if the old answer
comes back. Here every field of the answer is changed in turn, through what the supervisor
holds, and the route's answer must then be exactly what building it now gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spec_kitty_supervisor._api import ApiRequest, Encoded
from spec_kitty_supervisor._app import build_router
from spec_kitty_supervisor._core import Supervisor
from spec_kitty_supervisor._layout import RootLayout
from spec_kitty_supervisor_client._models import (
    DaemonView,
    Settings,
    StatusResponse,
    SupervisorView,
)
from tests.unit.lifecycle_fakes import FakeClock, FakeEffects, daemon_record

pytestmark = pytest.mark.anyio

STATUS = ApiRequest(method="GET", path="/v1/status", query={}, body=b"")


def _supervisor(tmp_path: Path) -> tuple[Supervisor, FakeEffects]:
    layout = RootLayout(tmp_path / "root")
    layout.prepare()
    effects = FakeEffects()
    supervisor = Supervisor(layout, Settings(), effects=effects, clock=FakeClock())
    supervisor.table.daemons.append(daemon_record(100))
    return supervisor, effects


class _Route:
    """One router, so that its memory lives across the requests of a test."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.router = build_router(supervisor)

    async def answer(self) -> bytes:
        status, answer = await self.router.dispatch(STATUS)
        assert status == 200
        assert isinstance(answer, Encoded)
        return answer.json

    def fresh(self) -> bytes:
        return self.supervisor.status().model_dump_json().encode()


async def test_an_unchanged_status_is_given_again_and_is_what_building_it_gives(
    tmp_path: Path,
) -> None:
    supervisor, _ = _supervisor(tmp_path)
    route = _Route(supervisor)
    first = await route.answer()
    assert first == route.fresh()
    assert await route.answer() is first  # remembered: the same bytes object
    assert StatusResponse.model_validate_json(first).daemons[0].pid == 100


async def test_every_field_of_a_daemon_in_the_status_changes_the_answer(tmp_path: Path) -> None:
    supervisor, _ = _supervisor(tmp_path)
    route = _Route(supervisor)
    record = supervisor.table.daemons[0]
    changes: dict[str, Any] = {
        "pid": 101,
        "port": 9432,
        "package_version": "3.2.5",
        "python": "/w/bin/python",
        "origin": "adopted",
        "state": "unresponsive",
        "role": "retiring",
        "started_at": "2026-11-28T00:00:00+00:00",
        "last_healthy_at": "2026-11-28T00:00:05+00:00",
    }
    # Every field a daemon's view shows, but the url (made of the port) and the token (which
    # status never shows): a new field of DaemonView fails here until it is covered.
    assert set(changes) == set(DaemonView.model_fields) - {"url", "token"}
    for name, value in changes.items():
        before = await route.answer()
        setattr(record, name, value)
        after = await route.answer()
        assert after != before, name
        assert after == route.fresh(), name
    # A daemon more, and a daemon less.
    before = await route.answer()
    supervisor.table.daemons.append(daemon_record(102))
    assert (await route.answer()) != before
    assert (await route.answer()) == route.fresh()
    supervisor.table.daemons.pop()
    assert (await route.answer()) == before


async def test_every_field_of_the_supervisor_and_the_root_changes_the_answer(
    tmp_path: Path,
) -> None:
    supervisor, effects = _supervisor(tmp_path)
    route = _Route(supervisor)
    other = RootLayout(tmp_path / "other")
    changes: dict[str, Any] = {
        "pid": supervisor.pid + 1,
        "version": supervisor.version + "+1",
        "started_at": "2026-11-28T00:00:00+00:00",
        "auto_started": not supervisor.auto_started,
        "service_manager": "systemd",
        "settings": Settings(heartbeat_seconds=7.0),
        "heartbeats": supervisor.heartbeats + 1,
    }
    # Every field of the supervisor's view: those above, the protocol (a constant of the
    # code), and the root and socket (the layout's, changed below).
    shown = set(changes) | {"protocol_version", "root", "socket"}
    assert shown == set(SupervisorView.model_fields)
    for name, value in changes.items():
        before = await route.answer()
        setattr(supervisor, name, value)
        after = await route.answer()
        assert after != before, name
        assert after == route.fresh(), name
    before = await route.answer()
    supervisor.layout = other
    after = await route.answer()
    assert json.loads(after)["supervisor"]["root"] == str(other.daemon_root)
    assert after != before
    assert after == route.fresh()
    # The root's state and reason, and why the supervisor is degraded.
    assert set(StatusResponse.model_fields) == {
        "supervisor",
        "root_state",
        "root_state_reason",
        "daemons",
        "degraded",
    }
    before = await route.answer()
    supervisor.table.quarantine("5 deaths in 300 s")
    quarantined = await route.answer()
    assert json.loads(quarantined)["root_state"] == "quarantined"
    assert quarantined == route.fresh()
    supervisor.table.lift_quarantine()
    assert (await route.answer()) == before
    effects.journal_fails = True
    supervisor.lifecycle.write_journal()
    degraded = await route.answer()
    assert json.loads(degraded)["degraded"] is not None
    assert degraded == route.fresh()

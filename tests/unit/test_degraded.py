"""Write failures (a full disk, a read-only file system): nothing acted on, degraded, then not.

An injected ``state_not_writable`` from the fake effects stands for ENOSPC, EROFS or EACCES
(the real effects turn each into that code: ``supervisor/_lifecycle/_real.py``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from spec_kitty_supervisor._core import Supervisor
from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._layout import RootLayout
from spec_kitty_supervisor._lifecycle import Lifecycle, ensure, tick
from spec_kitty_supervisor_client._models import EnsureRequest, EnsureResponse, Settings
from tests.unit.lifecycle_fakes import FakeClock, FakeEffects, make_lifecycle

pytestmark = pytest.mark.anyio


@dataclass
class World:
    lifecycle: Lifecycle
    effects: FakeEffects

    async def ensure(self, version: str = "3.2.4") -> EnsureResponse:
        request = EnsureRequest(python=sys.executable, package_version=version)
        answer = await ensure(self.lifecycle, request)
        await wait_all_tasks_blocked()
        return answer

    async def tick(self) -> None:
        await tick(self.lifecycle)
        await wait_all_tasks_blocked()

    def alive(self) -> list[int]:
        return [pid for pid, d in self.effects.daemons.items() if d.alive]


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    effects = FakeEffects()
    lifecycle = make_lifecycle(effects, FakeClock(), Settings())
    async with anyio.create_task_group() as group:
        lifecycle.attach(group)
        yield World(lifecycle, effects)
        group.cancel_scope.cancel()


async def test_a_full_disk_refuses_the_spawn_leaves_no_daemon_and_degrades() -> None:
    async with world() as w:
        w.effects.journal_fails = True
        with pytest.raises(LifecycleError) as raised:
            await w.ensure()
        assert raised.value.code == "state_not_writable"
        assert w.lifecycle.degraded is not None
        assert "No space left" in w.lifecycle.degraded
        assert w.alive() == []  # the daemon nobody could record was stopped
        assert w.lifecycle.table.daemons == []
        assert w.effects.legacy is None


async def test_degraded_ends_by_itself_on_the_first_tick_whose_write_succeeds() -> None:
    async with world() as w:
        w.effects.journal_fails = True
        with pytest.raises(LifecycleError):
            await w.ensure()
        await w.tick()
        assert w.lifecycle.degraded is not None  # still full: still degraded
        w.effects.journal_fails = False  # space freed
        await w.tick()
        assert w.lifecycle.degraded is None
        answer = await w.ensure()
        assert answer.action == "spawned"
        assert w.alive() == [answer.daemon.pid]


async def test_a_failed_state_file_write_is_repaired_by_the_heartbeat() -> None:
    async with world() as w:
        old = (await w.ensure()).daemon.pid
        w.effects.legacy_write_fails = True
        with pytest.raises(LifecycleError) as raised:
            await w.ensure("3.2.7")  # an upgrade: journaled, then R/sync-daemon fails
        assert raised.value.code == "state_not_writable"
        assert w.lifecycle.degraded is not None
        new = w.lifecycle.table.current
        assert new is not None
        assert new.pid != old
        assert w.effects.legacy is not None
        assert w.effects.legacy.pid == old  # upstream CLIs still see the old daemon
        w.effects.legacy_write_fails = False
        await w.tick()
        assert w.lifecycle.degraded is None
        assert w.effects.legacy.pid == new.pid
        # Every live daemon is in the table: none was left unrecorded.
        assert set(w.alive()) <= {d.pid for d in w.lifecycle.table.daemons}


async def test_a_degraded_supervisor_still_answers_a_warm_ensure() -> None:
    async with world() as w:
        pid = (await w.ensure()).daemon.pid
        w.effects.journal_fails = True
        await w.tick()  # nothing to write: not degraded by a tick alone
        assert w.lifecycle.degraded is None
        w.lifecycle.write_journal()
        assert w.lifecycle.degraded is not None
        answer = await w.ensure()  # needs no write
        assert (answer.action, answer.daemon.pid) == ("reused", pid)


async def test_status_reports_degraded_with_its_reason_then_ok_again(tmp_path: Path) -> None:
    layout = RootLayout(tmp_path / "root")
    layout.prepare()
    effects = FakeEffects()
    supervisor = Supervisor(layout, Settings(), effects=effects, clock=FakeClock())
    assert supervisor.status().degraded is None
    effects.journal_fails = True
    supervisor.lifecycle.write_journal()
    status = supervisor.status()
    assert status.degraded is not None
    assert "No space left" in status.degraded
    assert status.root_state == "ok"  # the root is fine; its files are not
    effects.journal_fails = False
    await supervisor.heartbeat()
    assert supervisor.status().degraded is None

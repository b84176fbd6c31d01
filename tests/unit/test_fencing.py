"""Fencing before every act, on fake effects: once the root's lock file is not ours, nothing.

``FencedEffects`` wraps the fakes exactly as it wraps the real effects in a running supervisor;
``holds`` stands for "the lock file at its path is still the one we hold". The real split brain
(``rm -rf R/supervisor`` and a second supervisor) is ``tests/interop/test_split_brain.py``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._lifecycle import (
    FencedEffects,
    Lifecycle,
    ensure,
    sweep_orphans,
    tick,
    watch_exits,
)
from spec_kitty_supervisor._lifecycle._effects import SpawnOrder
from spec_kitty_supervisor_client._models import EnsureRequest, EnsureResponse, Settings
from tests.unit.lifecycle_fakes import ROOT, FakeClock, FakeEffects

pytestmark = pytest.mark.anyio


@dataclass
class Fenced:
    lifecycle: Lifecycle
    fakes: FakeEffects
    clock: FakeClock
    holds: bool = True
    exits: list[str] = field(default_factory=list)

    async def ensure(self, version: str = "3.2.4") -> EnsureResponse:
        request = EnsureRequest(python=sys.executable, package_version=version)
        answer = await ensure(self.lifecycle, request)
        await wait_all_tasks_blocked()
        return answer


@asynccontextmanager
async def fenced_world(**settings: object) -> AsyncIterator[Fenced]:
    fakes, clock = FakeEffects(), FakeClock()
    world: Fenced
    effects = FencedEffects(
        fakes, holds_root=lambda: world.holds, on_lost=lambda: world.exits.append("lock lost")
    )
    lifecycle = Lifecycle(ROOT, effects, clock, Settings.model_validate(settings))
    watch_exits(lifecycle)
    world = Fenced(lifecycle, fakes, clock)
    async with anyio.create_task_group() as group:
        lifecycle.attach(group)
        yield world
        group.cancel_scope.cancel()


async def test_a_supervisor_that_lost_its_lock_spawns_nothing_and_writes_nothing() -> None:
    async with fenced_world() as world:
        world.holds = False
        with pytest.raises(LifecycleError) as raised:
            await world.ensure()
        assert raised.value.code == "supervisor_exiting"
        assert world.fakes.acts == []  # no spawn, no journal, no state file
        assert world.fakes.events == []  # not even the ledger: its file may be another's now
        assert world.exits == ["lock lost"]
        assert world.lifecycle.table.daemons == []


async def test_the_exit_is_asked_for_once_however_many_acts_are_refused() -> None:
    async with fenced_world() as world:
        world.holds = False
        for _ in range(3):
            with pytest.raises(LifecycleError):
                await world.ensure()
        assert world.exits == ["lock lost"]


async def test_a_lost_lock_is_never_found_again() -> None:
    # A lock file recreated at the same path by another supervisor may even be one we could
    # stat as "ours" by accident of inode reuse: once fenced, a supervisor stays fenced.
    async with fenced_world() as world:
        world.holds = False
        with pytest.raises(LifecycleError):
            await world.ensure()
        world.holds = True
        with pytest.raises(LifecycleError):
            await world.ensure()
        assert world.fakes.acts == []


async def test_after_losing_the_lock_its_daemon_is_neither_stopped_nor_unrecorded() -> None:
    async with fenced_world(idle_retirement_seconds=900) as world:
        pid = (await world.ensure()).daemon.pid
        acts = list(world.fakes.acts)
        world.holds = False
        world.clock.advance(901)  # idle: a heartbeat would retire it
        await tick(world.lifecycle)
        await wait_all_tasks_blocked()
        assert world.fakes.acts == acts  # no stop, no journal, no unrecord
        assert world.fakes.daemons[pid].alive  # left running for the next supervisor
        assert world.exits == ["lock lost"]
        assert world.fakes.legacy is not None
        assert world.fakes.legacy.pid == pid


async def test_a_lock_lost_between_spawn_and_record_stops_the_spawn_it_cannot_record() -> None:
    async with fenced_world() as world:
        inner_spawn = world.fakes.spawn

        async def spawn_then_lose(order: SpawnOrder):  # type: ignore[no-untyped-def]
            child = await inner_spawn(order)
            world.holds = False  # R/supervisor removed while the daemon came up
            return child

        world.fakes.spawn = spawn_then_lose  # type: ignore[method-assign]
        with pytest.raises(LifecycleError) as raised:
            await world.ensure()
        assert raised.value.code == "supervisor_exiting"
        (pid,) = world.fakes.daemons
        assert world.fakes.acts == [f"spawn {pid}", f"abandon {pid}"]
        assert not world.fakes.daemons[pid].alive  # no daemon left that nobody recorded
        assert world.lifecycle.table.daemons == []


async def test_a_sweep_asks_no_more_orphans_once_the_lock_is_lost() -> None:
    async with fenced_world() as world:
        world.fakes.sweep_deaths = anyio.Event()

        async def orphans_found(table: object) -> bool:
            return True

        world.fakes.orphans_to_sweep = orphans_found  # type: ignore[method-assign]
        async with anyio.create_task_group() as group:
            group.start_soon(sweep_orphans, world.lifecycle)
            await wait_all_tasks_blocked()
            assert world.fakes.acts == ["sweep"]  # condemned and the first wave asked
            world.holds = False  # R/supervisor removed while the sweep still asks
            world.fakes.sweep_deaths.set()
        assert world.fakes.acts == ["sweep", "sweep_done"]  # nobody asked after the loss
        assert world.exits == ["lock lost"]


async def test_a_sweep_that_keeps_the_lock_asks_every_orphan() -> None:
    async with fenced_world() as world:

        async def orphans_found(table: object) -> bool:
            return True

        world.fakes.orphans_to_sweep = orphans_found  # type: ignore[method-assign]
        await sweep_orphans(world.lifecycle)
        assert world.fakes.acts == ["sweep", "sweep_asked_later", "sweep_done"]
        assert world.exits == []

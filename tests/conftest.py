"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sks_harness import ORPHAN_PORTS, DaemonFleet, PortRange, Sandbox, SupervisorUnderTest


@pytest.fixture
def anyio_backend() -> str:
    # The supervisor runs on asyncio (anyio.run's default); its tests run where it runs.
    return "asyncio"


@pytest.fixture
def fleet_ports() -> PortRange:
    """The range a test's :func:`fleet` spawns daemons in; a module overrides it to change it."""
    return ORPHAN_PORTS


@pytest.fixture
def fleet(fleet_ports: PortRange) -> Iterator[DaemonFleet]:
    """Every real daemon the test starts (or its sandboxes hold), stopped by pid at the end."""
    with DaemonFleet(port_range=fleet_ports) as daemons:
        yield daemons


@pytest.fixture
def sandbox(fleet: DaemonFleet) -> Sandbox:
    """A throwaway HOME watched by the test's fleet, removed after its daemons are stopped."""
    return fleet.sandbox()


@pytest.fixture
def sup(sandbox: Sandbox) -> Iterator[SupervisorUnderTest]:
    """The supervisor under test for the sandbox, every process of it stopped by pid at the end."""
    with SupervisorUnderTest(sandbox) as harness:
        yield harness

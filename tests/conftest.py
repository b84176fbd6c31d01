"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from sks_harness import ORPHAN_PORTS, DaemonFleet, PortRange, Sandbox, SupervisorUnderTest

# Properties are about logic, not speed: a loaded machine must not turn a slow example into a
# failure (hypothesis's default 200 ms deadline and its too-slow health check would). In CI the
# examples are derived from each test's name, so a run's outcome does not depend on chance.
settings.register_profile(
    "project",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("project")


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

"""The test harness: free ports in the sync family range and real spec-kitty sync daemons.

``tests.support.ports`` hands out loopback ports that are free right now, from disjoint
sub-ranges per purpose. ``tests.support.real_daemons`` starts the real ``spec-kitty-cli``
releases' daemons in throwaway HOMEs, exactly as upstream spawns them, and stops them by pid
after re-checking their identity. ``scripts/make_orphans.py`` is a thin command line over the
latter, shared with ``make demo`` and the benchmarks.
"""

from __future__ import annotations

from .ports import (
    FAMILY_RANGE,
    ORPHAN_PORTS,
    SPAWN_PORTS,
    TEST_PORT_RANGES,
    NoFreePortsError,
    PortRange,
    free_ports,
    parse_port_range,
    port_is_free,
)
from .real_daemons import (
    DEFAULT_ORPHAN_VERSIONS,
    KNOWN_VERSIONS,
    DaemonFleet,
    DaemonStartError,
    HarnessError,
    MissingVenvError,
    RealDaemon,
    Sandbox,
    StateRecord,
    StopOutcome,
    UpstreamEnsure,
    make_orphans,
    new_token,
    read_state_file,
    run_blocking,
    run_upstream_cli,
    run_upstream_ensure,
    spawn_orphan,
    spec_kitty_cli,
    spec_kitty_python,
    spec_kitty_venv,
    stop,
    venvs_dir,
    wait_healthy,
    write_state_file,
)

__all__ = [
    "DEFAULT_ORPHAN_VERSIONS",
    "FAMILY_RANGE",
    "KNOWN_VERSIONS",
    "ORPHAN_PORTS",
    "SPAWN_PORTS",
    "TEST_PORT_RANGES",
    "DaemonFleet",
    "DaemonStartError",
    "HarnessError",
    "MissingVenvError",
    "NoFreePortsError",
    "PortRange",
    "RealDaemon",
    "Sandbox",
    "StateRecord",
    "StopOutcome",
    "UpstreamEnsure",
    "free_ports",
    "make_orphans",
    "new_token",
    "parse_port_range",
    "port_is_free",
    "read_state_file",
    "run_blocking",
    "run_upstream_cli",
    "run_upstream_ensure",
    "spawn_orphan",
    "spec_kitty_cli",
    "spec_kitty_python",
    "spec_kitty_venv",
    "stop",
    "venvs_dir",
    "wait_healthy",
    "write_state_file",
]

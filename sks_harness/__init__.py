"""The test harness: real spec-kitty sync daemons, free family ports, supervisors under test.

Used by ``tests/``, ``bench/`` and ``scripts/``; it is not part of the wheel (pyproject lists
only the two product packages). Import it from the repository root, never by editing
``sys.path``: pytest puts the root on the path (``pythonpath = ["."]``), and everything else
runs as a module from the root (``python -m bench``, ``python -m sks_harness.orphans``,
``python -m scripts.demo``).

It never imports the code under test. Identities, the spawn argv and the daemons' HTTP API
are implemented here again from the daemon contract (the kernel's facts and what the real
releases do), so that a bug in the supervisor's version of them cannot hide in the tests.
Import everything from ``sks_harness`` itself; its modules are private.

- ports: loopback ports free right now, from disjoint sub-ranges per purpose;
- daemons: the published ``spec-kitty-cli`` releases' daemons started in throwaway HOMEs
  exactly as upstream spawns them, stopped by pid after re-checking their identity;
- supervisors: ``spec-kitty-supervisor`` run as the CLI runs it, stopped by pid;
- ``eventually``: the one way a test waits for something another process does.
"""

from __future__ import annotations

from ._contract import (
    DaemonArgv,
    DaemonHealth,
    daemon_argv,
    daemon_script,
    first_daemon_argv,
    parse_daemon_argv,
    post_shutdown,
    probe_health,
)
from ._daemons import (
    DaemonFleet,
    RealDaemon,
    StopOutcome,
    make_orphans,
    run_blocking,
    spawn_orphan,
    stop,
    wait_healthy,
)
from ._errors import DaemonStartError, HarnessError, MissingVenvError
from ._eventually import DEFAULT_TIMEOUT, aeventually, eventually
from ._fake_spec_kitty import fake_spec_kitty_venv, install_fake_release, linked_venv, relink
from ._ports import (
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
from ._process import ProcessIdentity, is_alive, read_identity, signal_if_same
from ._sandbox import Sandbox
from ._state_file import StateRecord, read_state_file, write_state_file
from ._supervisors import SUPERVISOR, SupervisorUnderTest, daemon_pids, supervisor_pids
from ._throwaway import site_packages, throwaway_venv, tree_snapshot
from ._upstream import UpstreamEnsure, run_upstream_cli, run_upstream_ensure
from ._venvs import (
    DEFAULT_ORPHAN_VERSIONS,
    KNOWN_VERSIONS,
    SAAS_SYNC_ENV,
    new_token,
    spec_kitty_cli,
    spec_kitty_python,
    spec_kitty_venv,
    venvs_dir,
)

__all__ = [
    "site_packages",
    "throwaway_venv",
    "tree_snapshot",
    "DEFAULT_ORPHAN_VERSIONS",
    "DEFAULT_TIMEOUT",
    "FAMILY_RANGE",
    "KNOWN_VERSIONS",
    "ORPHAN_PORTS",
    "SAAS_SYNC_ENV",
    "SPAWN_PORTS",
    "SUPERVISOR",
    "TEST_PORT_RANGES",
    "DaemonArgv",
    "DaemonFleet",
    "DaemonHealth",
    "DaemonStartError",
    "HarnessError",
    "MissingVenvError",
    "NoFreePortsError",
    "PortRange",
    "ProcessIdentity",
    "RealDaemon",
    "Sandbox",
    "StateRecord",
    "StopOutcome",
    "SupervisorUnderTest",
    "UpstreamEnsure",
    "aeventually",
    "daemon_argv",
    "daemon_pids",
    "daemon_script",
    "eventually",
    "fake_spec_kitty_venv",
    "first_daemon_argv",
    "free_ports",
    "install_fake_release",
    "is_alive",
    "linked_venv",
    "make_orphans",
    "new_token",
    "parse_daemon_argv",
    "parse_port_range",
    "port_is_free",
    "post_shutdown",
    "probe_health",
    "read_identity",
    "read_state_file",
    "relink",
    "run_blocking",
    "run_upstream_cli",
    "run_upstream_ensure",
    "signal_if_same",
    "spawn_orphan",
    "spec_kitty_cli",
    "spec_kitty_python",
    "spec_kitty_venv",
    "stop",
    "supervisor_pids",
    "venvs_dir",
    "wait_healthy",
    "write_state_file",
]

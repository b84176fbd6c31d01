"""Strangers in the range: every listener the supervisor did not start is classified, never
signalled, and its port is gone around.

The strangers are a plain web server, a liar whose ``/api/health`` is spec-kitty's shape and
claims this very root, a listener that accepts and never answers, a liar of another uid
(``nobody``), and a real 3.2.4 daemon of another HOME. They hold the first ports of the
supervisor's spawn range, so every spawn must go around them. Each round restarts the
supervisor (its start-up classifies and sweeps), asks for a daemon, reads doctor, asks reset
to stop every never-touch stranger by pid (confirmed, as an operator would), and retires the
daemon; then counts from the processes themselves: the signals each stand-in recorded, whether
each stranger still runs (pid + start), how many daemons the root has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sks_harness import (
    SPAWN_PORTS,
    DaemonFleet,
    PortRange,
    RealDaemon,
    Sandbox,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    is_alive,
    probe_health,
    read_state_file,
    run_blocking,
    spec_kitty_python,
    supervisor_pids,
    wait_healthy,
)
from spec_kitty_supervisor_client import SupervisorClient
from tests.chaos._standin import StandIn, nobody
from tests.chaos._tally import Tally, rounds

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

#: The supervisor spawns only here; the strangers take its first ports.
RANGE = PortRange(SPAWN_PORTS.hi - 10, SPAWN_PORTS.hi)


@dataclass(frozen=True)
class Expected:
    """What a stranger must be classified as: its class, and the reasons that may say why.

    A liar whose health answer comes after the supervisor's probe timeout (a starved machine)
    is rightly ``not_spec_kitty`` rather than ``third_party``: both are never touched.
    """

    cleanup_class: str
    skip_reasons: frozenset[str]


@dataclass(frozen=True)
class Stranger:
    port: int
    process: StandIn | RealDaemon


@pytest.fixture
def fleet_ports() -> PortRange:
    return RANGE


@pytest.fixture
def strangers(sandbox: Sandbox, fleet: DaemonFleet) -> Iterator[dict[str, Stranger]]:
    ports = iter(RANGE)
    started: dict[str, Stranger] = {}
    # The liar claims this very root, in its health and in its argv: only what it is (not a
    # spawn-shaped daemon) may protect it.
    lie = json.dumps(
        {
            "status": "ok",
            "token": "0" * 32,
            "daemon_family": "sync",
            "singleton_scope_id": str(sandbox.root),
            "protocol_version": 1,
            "package_version": "3.2.4",
            "owner": {"pid": 1, "port": RANGE.lo + 1, "package_version": "3.2.4"},
        }
    )
    marker = [f"--spec-kitty-daemon-root={sandbox.root}"]
    try:
        port = next(ports)
        started["plain web server"] = Stranger(port, StandIn.start(listen=port, answer="hello"))
        port = next(ports)
        started["liar claiming this root"] = Stranger(
            port, StandIn.start(listen=port, answer=lie, extra_argv=marker)
        )
        port = next(ports)
        started["listener that never answers"] = Stranger(port, StandIn.start(listen=port))
        user = nobody()
        if user is not None:
            port = next(ports)
            started["liar of another uid"] = Stranger(
                port, StandIn.start(listen=port, answer=lie, extra_argv=marker, user=user)
            )
        other_home = fleet.sandbox()
        daemon = fleet.spawn(other_home, "3.2.4", next(ports))
        run_blocking(wait_healthy, daemon, 30.0)
        started["another HOME's daemon"] = Stranger(daemon.port, daemon)
        yield started
    finally:
        for stranger in started.values():
            if isinstance(stranger.process, StandIn):
                stranger.process.stop()


EXPECTED = {
    "plain web server": Expected("never_touch", frozenset({"not_spec_kitty"})),
    "liar claiming this root": Expected(
        "never_touch", frozenset({"third_party", "not_spec_kitty"})
    ),
    "listener that never answers": Expected("never_touch", frozenset({"not_spec_kitty"})),
    "liar of another uid": Expected("never_touch", frozenset({"other_user"})),
    "another HOME's daemon": Expected("operator_required", frozenset({"cross_root"})),
}


def _daemons_of(root: Path, strangers: dict[str, Stranger]) -> list[int]:
    pids = {s.process.pid for s in strangers.values()}
    return [pid for pid in daemon_pids(root) if pid not in pids]


def _count_what_was_done_to_them(tally: Tally, strangers: dict[str, Stranger], round_: int) -> None:
    for name, found in strangers.items():
        stranger = found.process
        if isinstance(stranger, StandIn):
            touched = stranger.touched()
            tally.foreign(len(touched), f"round {round_}: {name}: {touched}")
        else:
            # A real daemon cannot record signals; it is checked alive and still answering.
            gone = not is_alive(stranger.identity)
            tally.foreign(int(gone), f"round {round_}: {name} (pid {stranger.pid}) is gone")
            if not gone:
                health = run_blocking(probe_health, stranger.port, 10.0)
                tally.foreign(
                    int(health is None), f"round {round_}: {name} no longer answers its health"
                )


def _one_round(
    tally: Tally,
    sup: SupervisorUnderTest,
    strangers: dict[str, Stranger],
    round_: int,
    reasons: dict[str, int],
) -> None:
    taken = {s.port for s in strangers.values()}

    def daemons() -> list[int]:
        # The liars carry this root's marker in their argv: they are strangers all the same.
        return _daemons_of(sup.root, strangers)

    python = str(spec_kitty_python("3.2.4"))
    sup.kill_all()
    sup.start()
    with SupervisorClient(sup.root, autostart=False, timeout=60) as client:
        daemon = client.ensure(python).daemon
        if daemon.port in taken:
            tally.fail(f"round {round_}: spawned on {daemon.port}, a stranger's port")
        alive = daemons()
        tally.duplicate(max(0, len(alive) - 1), f"round {round_}: daemons of the root {alive}")
        tally.duplicate(
            max(0, len(supervisor_pids(sup.root)) - 1), f"round {round_}: several supervisors"
        )
        recorded = read_state_file(sup.root)
        if recorded is None or (recorded.pid, recorded.port) != (daemon.pid, daemon.port):
            tally.lost(1, f"round {round_}: R/sync-daemon is {recorded}, not {daemon.pid}")

        report = client.doctor()
        by_port = {record.port: record for record in report.listeners}
        for name, stranger in strangers.items():
            record = by_port.get(stranger.port)
            seen = None if record is None else (record.cleanup_class, record.skip_reason)
            expected = EXPECTED[name]
            if (
                seen is None
                or seen[0] != expected.cleanup_class
                or seen[1] not in expected.skip_reasons
            ):
                tally.fail(f"round {round_}: {name} classified {seen}, not {expected}")
            else:
                reasons[f"{name}: {seen[1]}"] = reasons.get(f"{name}: {seen[1]}", 0) + 1

        # An operator confirming every never-touch stranger by pid still cannot have it stopped.
        never_touch = [
            s.process.pid
            for n, s in strangers.items()
            if EXPECTED[n].cleanup_class == "never_touch"
        ]
        result = client.reset(confirmed_pids=never_touch).reset_result
        swept = [] if result is None else [r.pid for r in result.swept]
        if set(swept) & set(never_touch):
            tally.fail(f"round {round_}: reset swept strangers {swept}")

        client.retire(pid=daemon.pid)
    eventually(lambda: not daemons(), what="the retired daemon gone", timeout=60)
    _count_what_was_done_to_them(tally, strangers, round_)


def test_strangers_in_the_range_are_classified_never_signalled_and_gone_around(
    sup: SupervisorUnderTest,
    strangers: dict[str, Stranger],
    tally: Callable[[str], Tally],
) -> None:
    sup.settings = {"SPEC_KITTY_SUPERVISOR_PORT_RANGE": str(RANGE)}
    counted = tally("strangers in the range")
    counted.note(", ".join(strangers))
    reasons: dict[str, int] = {}
    for round_ in range(rounds()):
        with counted.trial(f"round {round_}"):
            _one_round(counted, sup, strangers, round_, reasons)
    sup.kill_all()
    counted.orphans(len(_daemons_of(sup.root, strangers)), "daemons of the root left at the end")
    _count_what_was_done_to_them(counted, strangers, rounds())
    counted.note(f"classified (rounds): {reasons}")

"""Proving that a pid is a sync daemon of this root before we adopt, keep or signal it.

Adoption (after our own crash, or of a daemon an upstream CLI recorded) and the lifecycle use
this one check, built on the same per-health-shape proof as classification (one proof of
"ours" per health shape, used alike by classification, adoption and signalling):
same process (pid and start), our uid, the spawn shape with this root's marker, and a health
answer that provably came from that process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._daemon_shape import CmdlineFacts
from ._health import HealthAnswer
from ._identity import ProcessIdentity
from ._probe import probe_health

__all__ = ["Verdict", "read_process_context", "verify_daemon"]


@dataclass(frozen=True)
class Verdict:
    """``identity`` is set when the pid is provably our root's daemon, ``health`` if it answered."""

    identity: ProcessIdentity | None
    health: HealthAnswer | None
    cmdline: CmdlineFacts | None
    reason: str


async def verify_daemon(
    expected: ProcessIdentity,
    port: int,
    daemon_root: Path,
    health_timeout: float,
    *,
    expected_token: str | None = None,
) -> Verdict:
    """Re-prove a daemon we know by pid, start and port.

    A live, same-process daemon that does not answer health keeps its identity (its pid and
    start prove it is the one we recorded) with ``health=None``: it is wedged, not a stranger.
    """
    # Imported where a recorded daemon is first re-proved: a clean root's start needs neither.
    from ._classification import prove_self_report
    from ._discovery import read_process_facts

    identity, cmdline = read_process_facts(expected.pid)
    if identity is None:
        return Verdict(None, None, None, "it has exited")
    if not expected.same_process(identity):
        return Verdict(None, None, None, "its pid now belongs to another process (PID reuse)")
    if identity.uid != os.getuid():
        return Verdict(None, None, cmdline, f"it runs as uid {identity.uid}, not as us")
    if cmdline is None or not cmdline.spawn_shape:
        return Verdict(None, None, cmdline, "its command line is not a sync daemon's")
    if cmdline.root_marker is None or Path(cmdline.root_marker) != daemon_root:
        return Verdict(None, None, cmdline, f"its root marker is {cmdline.root_marker!r}")
    health = await probe_health(port, health_timeout)
    if health is None:
        return Verdict(identity, None, cmdline, f"it does not answer health on port {port}")
    if expected_token is not None and health.token != expected_token:
        return Verdict(None, None, cmdline, f"port {port} answers with another token")
    proof = prove_self_report(health, pid=identity.pid, port=port, cmdline=cmdline)
    if not proof.matches:
        return Verdict(None, health, cmdline, proof.detail)
    return Verdict(identity, health, cmdline, proof.detail)


def read_process_context(pid: int) -> tuple[dict[str, str], str] | None:
    """The environment and working directory of a daemon we adopt, so a restart repeats them."""
    import psutil  # only here: a supervisor that adopts nothing never imports it

    try:
        process = psutil.Process(pid)
        return dict(process.environ()), process.cwd()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None

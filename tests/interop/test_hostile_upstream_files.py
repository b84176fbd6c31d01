"""A real supervisor and a real 3.2.4 daemon with upstream's files made hostile.

A FIFO at ``R/sync-daemon.log`` used to block the spawn forever (under the root's locks); a
symlink there sent the daemon's output wherever it pointed. Now the request is refused at once
with ``root_file_refused``, ``status`` says why, nothing is written through the entry, and once
the user moves it away the supervisor spawns again by itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sks_harness import (
    SPAWN_PORTS,
    PortRange,
    SupervisorUnderTest,
    daemon_pids,
    eventually,
    spec_kitty_python,
)

pytestmark = [pytest.mark.real_ports, pytest.mark.interop]

ELSEWHERE_TEXT = "a file the daemon's output must never reach\n"


@pytest.fixture
def fleet_ports() -> PortRange:
    return SPAWN_PORTS


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def _symlink_elsewhere(path: Path) -> None:
    target = path.parent.parent / "elsewhere.txt"
    target.write_text(ELSEWHERE_TEXT)
    path.symlink_to(target)


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_fifo, "a FIFO"), (_symlink_elsewhere, "a symbolic link"), (_directory, "a directory")],
    ids=["fifo", "symlink", "directory"],
)
def test_a_bad_daemon_log_refuses_the_spawn_says_why_and_ends_once_moved(
    sup: SupervisorUnderTest, make: Callable[[Path], None], kind: str
) -> None:
    log = sup.root / "sync-daemon.log"
    make(log)
    sup.start()
    python = str(spec_kitty_python("3.2.4"))

    refused = sup.cli("ensure", "--python", python, "--json")
    assert refused.returncode == 1, refused.stdout
    assert "root_file_refused" in refused.stderr
    assert f"{log} is {kind}" in refused.stderr
    assert daemon_pids(sup.root) == []

    # status names it (from the next heartbeat), and still answers.
    def degraded() -> str | None:
        value = sup.cli_json("status").get("degraded")
        return value if isinstance(value, str) else None

    eventually(
        lambda: f"{log} is {kind}" in (degraded() or ""),
        what="status to show the refused log",
        timeout=30,
    )
    if kind == "a symbolic link":
        assert (sup.root.parent / "elsewhere.txt").read_text() == ELSEWHERE_TEXT

    log.rename(log.with_name("sync-daemon.log.moved"))
    eventually(lambda: degraded() is None, what="degraded to end by itself", timeout=30)
    spawned = sup.cli_json("ensure", "--python", python)
    assert spawned["action"] == "spawned"
    assert daemon_pids(sup.root) == [spawned["daemon"]["pid"]]
    assert log.is_file()
    assert not log.is_symlink()


def test_a_supervisor_starts_beside_a_fifo_lock_file_and_refuses_what_needs_the_lock(
    sup: SupervisorUnderTest,
) -> None:
    lock = sup.root / "sync-daemon.lock"
    os.mkfifo(lock, 0o600)
    sup.start()
    refused = sup.cli("ensure", "--python", str(spec_kitty_python("3.2.4")), "--json")
    assert refused.returncode == 1
    assert "root_file_refused" in refused.stderr
    reset = sup.cli("doctor", "--reset", "--force", "--json")
    assert reset.returncode != 0
    assert f"{lock} is a FIFO" in reset.stderr
    status = json.loads(sup.cli("status", "--json").stdout)
    assert status["daemons"] == []
    assert f"{lock} is a FIFO" in status["degraded"]  # known from start-up on
    assert lock.exists()
    assert not lock.is_file()  # left as it was

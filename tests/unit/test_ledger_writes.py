"""The ledger on a file that stops growing: nothing fails its caller, it says why, it catches up.

The file really stops growing: the scenario runs in a child process whose ``RLIMIT_FSIZE`` is
the file's size (``SIGXFSZ`` ignored), so the kernel answers each write with ``EFBIG``, as a
full disk answers ``ENOSPC``. Raising the limit again is the space freed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from spec_kitty_supervisor._ledger import Ledger

SCENARIO = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from structlog.testing import capture_logs
    from spec_kitty_supervisor._ledger import Ledger

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    path, room = Path(sys.argv[1]), int(sys.argv[2])
    seen = {}
    with capture_logs() as logs:
        ledger = Ledger(path)
        ledger.record("spawned", pid=1, port=9400)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + room, hard))
        ledger.record("died", pid=1, port=9400, reason="killed by SIGKILL")
        ledger.record("restarted", pid=2, port=9401)
        seen["behind"] = ledger.behind
        seen["in_memory"] = [event.kind for event in ledger.events()]
        ledger.catch_up()  # a heartbeat while it is still full
        seen["still_behind"] = ledger.behind
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        ledger.catch_up()  # the first heartbeat after the space was freed
        seen["after"] = ledger.behind
        ledger.record("retired", pid=2, port=9401)
    seen["logged"] = [entry["event"] for entry in logs if entry["event"].startswith("ledger_")]
    print(json.dumps(seen))
    """
)


def _run(path: Path, room: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(path), str(room)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def test_a_ledger_whose_file_cannot_grow_keeps_events_says_why_once_and_catches_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    seen = _run(path, room=0)
    assert seen["in_memory"] == ["spawned", "died", "restarted"]
    assert seen["behind"] is not None
    assert "File too large" in seen["behind"]
    assert "2 event(s) kept in memory only" in seen["behind"]
    assert seen["still_behind"] is not None
    assert seen["after"] is None
    # Once when it started failing, once when it recovered: not once per event or tick.
    assert seen["logged"] == ["ledger_not_written", "ledger_written_again"]
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["spawned", "died", "restarted", "retired"]


def test_a_line_torn_by_a_full_disk_is_ended_and_skipped_and_no_event_is_lost(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    seen = _run(path, room=10)  # room for a piece of the next line only
    assert seen["after"] is None
    lines = path.read_text().splitlines()
    assert len(lines) == 5  # the torn piece is a line of its own
    assert [event.kind for event in Ledger(path).events()] == [
        "spawned",
        "died",
        "restarted",
        "retired",
    ]

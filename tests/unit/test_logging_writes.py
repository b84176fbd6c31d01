"""The supervisor's log on a file that stops growing: said once, not a traceback per line.

The file really stops growing: the scenario runs in a child process whose ``RLIMIT_FSIZE`` is
the log's size (``SIGXFSZ`` ignored), so the kernel answers each write with ``EFBIG`` as a full
disk answers ``ENOSPC``; raising the limit again is the space freed. The child's stderr is
what a service manager or ``autostart.stderr`` would get.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

SCENARIO = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    import structlog
    from spec_kitty_supervisor._logging import configure_logging, log_not_written

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    path, records = Path(sys.argv[1]), int(sys.argv[2])
    configure_logging(path)
    log = structlog.get_logger("spec_kitty_supervisor")
    log.info("before_full")
    seen = {"before": log_not_written()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, hard))
    for n in range(records):
        log.info("while_full", n=n, padding="x" * 100)
    seen["while_full"] = log_not_written()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    log.info("after_freeing")
    seen["after"] = log_not_written()
    print(json.dumps(seen))
    """
)


def _run(path: Path, records: int) -> tuple[dict[str, Any], list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(path), str(records)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen, result.stderr.splitlines()


def test_a_log_that_cannot_be_written_is_said_once_then_its_recovery(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.log"
    seen, stderr = _run(path, records=200)

    assert not any("Logging error" in line for line in stderr)
    assert not any("Traceback" in line for line in stderr)
    reports = [json.loads(line) for line in stderr]
    assert [report["event"] for report in reports] == ["log_not_written", "log_written_again"]
    assert reports[0]["reason"] == f"cannot write {path}: File too large"
    assert reports[1]["failed_writes"] == 200

    assert seen["before"] is None
    assert (
        seen["while_full"] == f"cannot write {path}: File too large; 200 log record(s) not written"
    )
    assert seen["after"] is None

    # The file is whole JSON lines: the records before and after, and the recovery noted.
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events[0] == "before_full"
    assert events[-2:] == ["after_freeing", "log_written_again"]


def test_a_log_that_always_works_says_nothing_on_stderr(tmp_path: Path) -> None:
    seen, stderr = _run(tmp_path / "supervisor.log", records=0)
    assert stderr == []
    assert seen == {"before": None, "while_full": None, "after": None}

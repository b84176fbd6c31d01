"""An auto-started supervisor that dies of a signal before it answers is started again.

A broken install exits with an error and says why: that fails at once, with its words. A
supervisor killed before its socket answered (``kill -9``, the OOM killer) refused nothing;
the chaos suite's early-spawn kill hit it when the kill landed before the starter's first look.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spec_kitty_supervisor_client._wire import StartFailed, start_supervisor


def _script(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake-supervisor"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def test_a_supervisor_killed_before_it_answered_is_started_again(tmp_path: Path) -> None:
    root = tmp_path / "root"
    starts = tmp_path / "starts"
    # Killed the first time; an error of its own the second time, which ends the starting.
    command = _script(
        tmp_path,
        f'echo start >> "{starts}"\n'
        f'if [ "$(wc -l < "{starts}")" -eq 1 ]; then kill -9 $$; fi\n'
        'echo "broken install" >&2\nexit 1\n',
    )
    with pytest.raises(StartFailed, match="exited with code 1: broken install"):
        start_supervisor(root, lambda: command, timeout=30)
    assert starts.read_text().splitlines() == ["start", "start"]


def test_a_supervisor_that_exits_with_an_error_is_not_started_again(tmp_path: Path) -> None:
    root = tmp_path / "root"
    starts = tmp_path / "starts"
    command = _script(tmp_path, f'echo start >> "{starts}"\necho "broken install" >&2\nexit 3\n')
    with pytest.raises(StartFailed, match="exited with code 3: broken install"):
        start_supervisor(root, lambda: command, timeout=30)
    assert starts.read_text().splitlines() == ["start"]

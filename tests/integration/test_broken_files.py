"""Broken files no longer stop every later start-up (issue 14, broken files): each is moved
aside with a logged reason and the supervisor starts, or ``run`` stops at once with a clear
error naming the fixing command, never with a traceback.

Permission cases drop the capabilities that let root ignore file modes (``setpriv``), so that
they test the modes as an ordinary user meets them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sks_harness import SUPERVISOR, Sandbox, SupervisorUnderTest, eventually

SETPRIV = shutil.which("setpriv")


@pytest.fixture
def sup(sandbox: Sandbox) -> Iterator[SupervisorUnderTest]:
    with SupervisorUnderTest(sandbox) as harness:
        yield harness


def _as_a_user(command: list[str]) -> list[str]:
    """``command`` subject to file modes: root without its override capabilities."""
    if os.getuid() != 0:
        return command
    if SETPRIV is None:
        pytest.skip("needs setpriv (util-linux) to make root subject to file modes")
    drop = "-dac_override,-dac_read_search"
    return [SETPRIV, f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *command]


def _folder(sup: SupervisorUnderTest) -> Path:
    folder = sup.root / "supervisor"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_mode) for p in root.rglob("*"))


def test_events_jsonl_as_a_directory_is_moved_aside(sup: SupervisorUnderTest) -> None:
    folder = _folder(sup)
    (folder / "events.jsonl").mkdir()
    sup.start()
    assert (folder / "events.jsonl.refused-0").is_dir()
    assert sup.cli_json("status")["supervisor"] is not None
    assert sup.log_events("ledger_refused")


def test_supervisor_lock_as_a_directory_is_moved_aside(sup: SupervisorUnderTest) -> None:
    folder = _folder(sup)
    (folder / "supervisor.lock").mkdir()
    pid = sup.start()
    assert (folder / "supervisor.lock.refused-0").is_dir()
    assert (folder / "supervisor.lock").read_text() == f"{pid}\n"
    assert "supervisor.lock was a directory" in sup.log_events("file_refused")[0]["problem"]


def test_a_deeply_nested_state_json_is_moved_aside(sup: SupervisorUnderTest) -> None:
    folder = _folder(sup)
    (folder / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    sup.start()
    assert (folder / "state.json.corrupt-0").stat().st_size == 200_000
    events = sup.cli_json("events")["events"]
    assert any(e["kind"] == "state_corrupt" for e in events)
    assert json.loads((folder / "state.json").read_text())["daemons"] == []


def test_an_unreadable_state_json_is_moved_aside(sup: SupervisorUnderTest) -> None:
    folder = _folder(sup)
    state = folder / "state.json"
    state.write_text('{"schema_version": 1, "supervisor_pid": 1, "daemons": []}')
    state.chmod(0)
    popen = subprocess.Popen(
        _as_a_user([*SUPERVISOR, "run", "--root", str(sup.root)]),
        env=sup.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        eventually(lambda: sup.log_events("supervisor_ready"), what="the supervisor ready")
        sup.remember()
        assert stat.S_IMODE((folder / "state.json.unreadable-0").stat().st_mode) == 0
        corrupt = sup.log_events("state_corrupt")
        assert "unreadable state file (Permission denied)" in corrupt[0]["reason"]
    finally:
        sup.kill_all()
        _, stderr = popen.communicate(timeout=30)
    assert b"Traceback" not in stderr


@pytest.mark.parametrize("which", ["R/supervisor", "R"])
def test_a_folder_the_supervisor_cannot_write_is_a_clear_error(
    sup: SupervisorUnderTest, which: str
) -> None:
    folder = _folder(sup) if which == "R/supervisor" else sup.root
    _folder(sup)
    folder.chmod(0o500)
    before = _snapshot(sup.root)
    try:
        result = subprocess.run(
            _as_a_user([*SUPERVISOR, "run", "--root", str(sup.root)]),
            env=sup.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        after = _snapshot(sup.root)
    finally:
        folder.chmod(0o700)
    assert result.returncode == 1
    assert f"cannot write in {folder} (Permission denied); run `chmod u+rwx {folder}`" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert after == before


def test_a_file_system_without_room_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    # A private tmpfs with two inodes (itself and the root): R/supervisor cannot be made.
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs")
    mount = tmp_path / "tiny"
    mount.mkdir()
    root = mount / "root"
    script = (
        "mount --make-rprivate / && "
        f"mount -t tmpfs -o size=1m,nr_inodes=2 none {mount} && mkdir {root} && "
        f"exec {' '.join(SUPERVISOR)} run --root {root}"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot prepare {root}" in result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr

"""A deep root's short socket folder taken by someone else does not keep its supervisor from
starting (issue 14, files and paths): the supervisor makes a private folder with a random
name, records it in ``R/supervisor/socket-dir``, and clients, auto-start included, find it.

The predictable folder here is ``$XDG_RUNTIME_DIR/spec-kitty-supervisor`` in a test-private
runtime dir, so that no shared ``/tmp`` name is ever touched."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sks_harness import DaemonFleet, Sandbox, SupervisorUnderTest
from spec_kitty_supervisor_client import SOCKET_PATH_LIMIT
from spec_kitty_supervisor_client._wire import SOCKET_DIR_RECORD, socket_path_for_root


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="skx-", dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o700)
        yield folder


@pytest.fixture
def deep(fleet: DaemonFleet, tmp_path: Path, runtime_dir: Path) -> Iterator[SupervisorUnderTest]:
    root = tmp_path / ("d" * 60) / ("e" * 60) / ".spec-kitty"
    sandbox = fleet.watch(Sandbox.at(tmp_path / "home", root=root))
    assert len(os.fsencode(root / "supervisor" / "supervisor.sock")) > SOCKET_PATH_LIMIT
    with SupervisorUnderTest(sandbox, settings={"XDG_RUNTIME_DIR": str(runtime_dir)}) as sup:
        yield sup


def _taken(runtime_dir: Path, how: str) -> Path:
    folder = runtime_dir / "spec-kitty-supervisor"
    folder.mkdir()
    if how == "another user's":
        if os.getuid() != 0:
            pytest.skip("needs root to hand a folder to another user")
        os.chown(folder, 65534, 65534)
    else:
        folder.chmod(0o777)
    return folder


@pytest.mark.parametrize("how", ["another user's", "writable by all"])
def test_an_auto_started_supervisor_uses_a_fresh_private_folder_and_clients_find_it(
    deep: SupervisorUnderTest, runtime_dir: Path, how: str
) -> None:
    taken = _taken(runtime_dir, how)
    before = taken.lstat()
    script = (
        "import sys\n"
        "from spec_kitty_supervisor_client import SupervisorClient\n"
        "with SupervisorClient(sys.argv[1]) as client:\n"
        "    print(client.start().pid, client.status().supervisor.socket)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(deep.root)],
        env=deep.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    deep.remember()
    assert result.returncode == 0, result.stderr
    pid, socket_path = result.stdout.split()
    record = (deep.root / "supervisor" / SOCKET_DIR_RECORD).read_text().strip()
    fresh = Path(record)
    assert Path(socket_path).parent == fresh
    assert fresh.parent == runtime_dir
    assert fresh.name.startswith("spec-kitty-supervisor.")
    info = fresh.lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.getuid(), 0o700)
    assert stat.S_ISSOCK(Path(socket_path).lstat().st_mode)
    # The taken folder is left as it was, empty.
    after = taken.lstat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert list(taken.iterdir()) == []
    # Every later client finds it, the CLI too.
    assert deep.cli_json("status")["supervisor"]["pid"] == int(pid)


def test_a_recorded_folder_that_is_no_longer_private_is_ignored(
    deep: SupervisorUnderTest, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    elsewhere = runtime_dir / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    record = deep.root / "supervisor" / SOCKET_DIR_RECORD
    record.parent.mkdir(parents=True, mode=0o700)
    record.write_text(f"{elsewhere}\n")
    assert socket_path_for_root(deep.root).parent == elsewhere
    elsewhere.chmod(0o777)  # someone else could now replace the socket: not trusted
    assert socket_path_for_root(deep.root).parent == runtime_dir / "spec-kitty-supervisor"
    record.unlink()
    record.symlink_to(runtime_dir / "nowhere")  # a record must be a file of ours
    assert socket_path_for_root(deep.root).parent == runtime_dir / "spec-kitty-supervisor"

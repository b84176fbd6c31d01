from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from spec_kitty_supervisor_client import (
    SOCKET_PATH_LIMIT,
    UnsafeDirectoryError,
    ensure_private_dir,
    resolve_daemon_root,
    socket_path_for_root,
)
from spec_kitty_supervisor_client._errors import InvalidDaemonRoot


def test_root_is_spec_kitty_home_when_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPEC_KITTY_HOME", str(tmp_path / "a" / ".." / "root"))
    assert resolve_daemon_root() == (tmp_path / "root").resolve()


def test_root_defaults_to_home_dot_spec_kitty(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPEC_KITTY_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_daemon_root() == (tmp_path / ".spec-kitty").resolve()


def test_explicit_root_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPEC_KITTY_HOME", "/somewhere/else")
    assert resolve_daemon_root(tmp_path) == tmp_path.resolve()


def test_socket_lives_in_the_roots_supervisor_folder(tmp_path: Path) -> None:
    assert socket_path_for_root(tmp_path) == tmp_path / "supervisor" / "supervisor.sock"


def test_deep_root_falls_back_to_a_short_per_root_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    deep_a = tmp_path / ("a" * 60) / ("b" * 60)
    deep_b = tmp_path / ("a" * 60) / ("c" * 60)
    path_a, path_b = socket_path_for_root(deep_a), socket_path_for_root(deep_b)
    assert path_a.parent == runtime / "spec-kitty-supervisor"
    assert path_a != path_b
    assert len(os.fsencode(path_a)) <= SOCKET_PATH_LIMIT


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    folder = ensure_private_dir(tmp_path / "x" / "supervisor")
    assert folder.stat().st_mode & 0o777 == 0o700


def test_group_writable_dir_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "supervisor"
    folder.mkdir()
    folder.chmod(0o770)
    with pytest.raises(UnsafeDirectoryError, match="chmod 700"):
        ensure_private_dir(folder)


@pytest.mark.parametrize(
    ("plant", "kind"),
    [
        (lambda path: path.write_text("x"), "a regular file"),
        (os.mkfifo, "a FIFO"),
        (lambda path: path.symlink_to(path.parent), "a symbolic link"),
    ],
    ids=["file", "fifo", "symlink"],
)
def test_something_else_than_a_folder_is_refused_with_a_sentence_and_left_alone(
    tmp_path: Path, plant: Callable[[Path], object], kind: str
) -> None:
    folder = tmp_path / "supervisor"
    plant(folder)
    before = folder.lstat()
    with pytest.raises(UnsafeDirectoryError) as refused:
        ensure_private_dir(folder)
    assert str(refused.value) == (
        f"{folder} is {kind}, not a folder; move it aside (`mv {folder} {folder}.moved`)"
    )
    assert folder.lstat() == before


def test_a_root_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.write_text("x")
    with pytest.raises(UnsafeDirectoryError, match=f"{root} is a regular file, not a folder"):
        ensure_private_dir(root / "supervisor")


def test_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    folder = tmp_path / "supervisor"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(UnsafeDirectoryError, match="belongs to uid 65534"):
        ensure_private_dir(folder)


def test_fallback_skips_a_runtime_dir_that_is_itself_too_long(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runtime = tmp_path / ("r" * 90)
    runtime.mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    path = socket_path_for_root(tmp_path / ("a" * 120))
    assert path.parent == Path("/tmp") / f"spec-kitty-supervisor-{os.getuid()}"


def test_the_root_is_the_realpath_of_what_was_given(tmp_path: Path) -> None:
    # Links followed, ".." and "." folded, as upstream's Path.resolve() gives it.
    (tmp_path / "real" / "root").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    given = f"{tmp_path}/link/./x/../root"
    (tmp_path / "real" / "x").mkdir()
    assert resolve_daemon_root(given) == Path(given).resolve()
    assert str(resolve_daemon_root(given)) == str(tmp_path.resolve() / "real" / "root")


def test_a_root_that_is_a_symbolic_link_loop_is_refused_as_unreadable(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InvalidDaemonRoot, match="cannot be read"):
        resolve_daemon_root(loop)


def _as_upstream(given: str) -> Path:
    """What the root was before the link-free shortcut: the given path, expanded, resolved."""
    return Path(given).expanduser().resolve()


@pytest.mark.parametrize(
    "spelling",
    ["{t}/root", "{t}/root/", "{t}//root", "{t}/./root", "{t}/x/../root", "{t}/link/root"],
)
def test_every_spelling_of_a_root_is_the_realpath_upstream_derives(
    tmp_path: Path, spelling: str
) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    given = spelling.format(t=tmp_path)
    resolved = resolve_daemon_root(given)
    assert resolved == _as_upstream(given)
    assert str(resolved) == str((tmp_path / "root").resolve())


def test_a_relative_root_and_the_home_default_resolve_as_upstream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "home" / ".spec-kitty").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_daemon_root("home/.spec-kitty") == _as_upstream("home/.spec-kitty")
    monkeypatch.delenv("SPEC_KITTY_HOME", raising=False)
    for home in (f"{tmp_path}/home", f"{tmp_path}/home/", f"{tmp_path}/./home"):
        monkeypatch.setenv("HOME", home)
        assert resolve_daemon_root() == _as_upstream("~/.spec-kitty")
        assert resolve_daemon_root("~/.spec-kitty") == _as_upstream("~/.spec-kitty")
    monkeypatch.setenv("SPEC_KITTY_HOME", "~/.spec-kitty")
    assert resolve_daemon_root() == tmp_path / "home" / ".spec-kitty"


def test_a_component_that_becomes_a_link_is_followed_by_the_next_call(tmp_path: Path) -> None:
    # The link-free shortcut remembers how to walk a path, never what it found there: each
    # call looks at every component again.
    (tmp_path / "a" / "root").mkdir(parents=True)
    (tmp_path / "elsewhere" / "root").mkdir(parents=True)
    given = f"{tmp_path}/a/root"
    assert resolve_daemon_root(given) == tmp_path / "a" / "root"
    (tmp_path / "a").rename(tmp_path / "a.moved")
    (tmp_path / "a").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert resolve_daemon_root(given) == (tmp_path / "elsewhere" / "root").resolve()
    (tmp_path / "a").unlink()
    (tmp_path / "a").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidDaemonRoot, match="does not exist"):
        resolve_daemon_root(given)


def test_a_root_that_became_a_file_is_refused_by_the_next_call(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert resolve_daemon_root(root) == root
    root.rmdir()
    root.write_text("")
    with pytest.raises(InvalidDaemonRoot, match="is not a folder"):
        resolve_daemon_root(root)
    root.unlink()
    # A root that does not exist yet is fine: the supervisor creates it.
    assert resolve_daemon_root(root) == root


def test_a_root_of_another_user_is_refused_before_anything_is_made_in_it(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(UnsafeDirectoryError, match="belongs to uid 65534, not to you"):
        resolve_daemon_root(root)
    assert list(root.iterdir()) == []

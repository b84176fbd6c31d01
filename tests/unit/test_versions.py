"""Versions are facts: learnt from the interpreter once, again after an install, never claimed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sks_harness import fake_spec_kitty_venv, install_fake_release, linked_venv
from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._versions import InstalledVersions, ask_interpreter, learn_release
from spec_kitty_supervisor_client._discover import check_spec_kitty_interpreter, release_from_files
from spec_kitty_supervisor_client._errors import InvalidRequest
from spec_kitty_supervisor_client._models import EnsureRequest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _request(python: Path, version: str | None = None) -> EnsureRequest:
    return EnsureRequest(python=str(python), package_version=version, cwd="/", env={})


def _bump_mtime(folder: Path) -> None:
    # An install renames a dist-info folder; the kernel's clock may not tick between two steps
    # of a fast test, so move the folder's time on explicitly, as a real install's later
    # moment would.
    info = os.stat(folder)
    os.utime(folder, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))


class CountingAsk:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, python: str) -> tuple[str, str]:
        self.asked.append(python)
        return ask_interpreter(python)


def test_the_interpreter_says_its_version_and_where_it_is_installed(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.1.10")

    version, site_dir = ask_interpreter(str(python))

    assert version == "3.1.10"
    assert list(Path(site_dir).glob("spec_kitty_cli-3.1.10.dist-info"))


def test_an_interpreter_without_spec_kitty_cli_is_refused_by_name() -> None:
    with pytest.raises(LifecycleError) as refused:
        ask_interpreter(sys.executable)
    assert refused.value.code == "invalid_python"
    assert "spec-kitty-cli is not installed" in str(refused.value)


def test_a_missing_interpreter_is_refused() -> None:
    with pytest.raises(LifecycleError) as refused:
        ask_interpreter("/no/such/python")
    assert refused.value.code == "invalid_python"


async def test_a_version_is_learnt_once_while_nothing_is_installed(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    ask = CountingAsk()
    versions = InstalledVersions(ask)

    answers = [await versions.establish(_request(python), str(python)) for _ in range(5)]

    assert {answer.package_version for answer in answers} == {"3.2.4"}
    assert ask.asked == [str(python)]


async def test_an_upgrade_in_place_is_seen_by_the_next_ensure(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    ask = CountingAsk()
    versions = InstalledVersions(ask)
    assert (await versions.establish(_request(python), str(python))).package_version == "3.2.4"

    install_fake_release(python.parent.parent, "3.2.7")
    _, site_dir = ask_interpreter(str(python))
    _bump_mtime(Path(site_dir))

    assert (await versions.establish(_request(python), str(python))).package_version == "3.2.7"
    assert len(ask.asked) == 2


async def test_a_claim_that_disagrees_is_refused_naming_both_versions(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    versions = InstalledVersions()

    with pytest.raises(LifecycleError) as refused:
        await versions.establish(_request(python, "3.2.7"), str(python))

    assert refused.value.code == "version_mismatch"
    assert "3.2.7" in str(refused.value)
    assert "3.2.4" in str(refused.value)
    assert refused.value.details == {"claimed": "3.2.7", "installed": "3.2.4"}


async def test_a_claim_that_agrees_is_served(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")

    answer = await InstalledVersions().establish(_request(python, "3.2.4"), str(python))

    assert answer.package_version == "3.2.4"
    assert answer.python == str(python)


async def test_another_resolved_interpreter_behind_the_same_path_is_asked_again(
    tmp_path: Path,
) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    ask = CountingAsk()
    versions = InstalledVersions(ask)
    await versions.establish(_request(python), str(python))

    await versions.establish(_request(python), "/another/resolved/python3.11")

    assert len(ask.asked) == 2


async def test_unknown_is_no_claim_at_all(tmp_path: Path) -> None:
    # Every 3.1 CLI reports its own version as "unknown" (a wrong distribution name).
    python = fake_spec_kitty_venv(tmp_path, "3.1.10")

    answer = await InstalledVersions().establish(_request(python, "unknown"), str(python))

    assert answer.package_version == "3.1.10"


# --------------------------------------------------------------------------------------------
# Read from the venv's files (ADR 0009): the same answer as the interpreter's, without it


def _release_pythons() -> list[Path]:
    """Every installed real release's interpreter (none when the release venvs are absent)."""
    folder = Path(os.environ.get("SPEC_KITTY_VENVS", "~/.cache/spec-kitty-supervisor/venvs"))
    return sorted(folder.expanduser().glob("spec-kitty-*/bin/python"))


@pytest.mark.parametrize("version", ["3.1.10", "3.2.4", "4.0.0rc7"])
def test_a_venvs_files_say_what_its_interpreter_says(tmp_path: Path, version: str) -> None:
    python = fake_spec_kitty_venv(tmp_path, version)

    assert release_from_files(str(python)) == ask_interpreter(str(python))


def test_every_installed_release_reads_as_its_interpreter_says() -> None:
    pythons = _release_pythons()
    if not pythons:
        pytest.skip("no real release venvs installed (make spec-kitty-venvs)")
    for python in pythons:
        assert release_from_files(str(python)) == ask_interpreter(str(python)), python


def test_a_linked_venv_reads_through_its_links(tmp_path: Path) -> None:
    release = fake_spec_kitty_venv(tmp_path / "release", "3.2.3")
    python = linked_venv(tmp_path, release)

    assert release_from_files(str(python)) == ask_interpreter(str(python))


def _site(python: Path) -> Path:
    return Path(ask_interpreter(str(python))[1])


def test_two_dist_infos_are_not_guessed_between(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    shutil.copytree(
        _site(python) / "spec_kitty_cli-3.2.4.dist-info",
        _site(python) / "Spec_Kitty.CLI-3.2.7.dist-info",
    )

    assert release_from_files(str(python)) is None


def test_an_egg_info_is_left_to_the_interpreter(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    site = _site(python)
    (site / "spec_kitty_cli-3.2.4.dist-info").rename(site / "spec_kitty_cli-3.2.4.egg-info")

    assert release_from_files(str(python)) is None


def test_metadata_of_another_project_or_without_a_version_is_not_read(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    metadata = _site(python) / "spec_kitty_cli-3.2.4.dist-info" / "METADATA"

    metadata.write_text("Metadata-Version: 2.1\nName: something-else\nVersion: 3.2.4\n")
    assert release_from_files(str(python)) is None
    metadata.write_text("Metadata-Version: 2.1\nName: spec-kitty-cli\n\nVersion: 3.2.4\n")
    assert release_from_files(str(python)) is None
    metadata.unlink()
    assert release_from_files(str(python)) is None


def test_an_interpreter_outside_a_venv_is_left_to_itself(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    (python.parent.parent / "pyvenv.cfg").rename(tmp_path / "pyvenv.cfg.away")

    assert release_from_files(str(python)) is None
    assert release_from_files(os.path.realpath(sys.executable)) is None


def test_a_venv_whose_interpreter_is_another_minor_version_is_left_to_it(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    assert release_from_files(str(python)) is not None
    # The base interpreter upgraded in place: the venv's files still say the old version.
    other = tmp_path / "base" / "python3.99"
    other.parent.mkdir()
    other.write_bytes(b"")
    python.unlink()
    python.symlink_to(other)

    assert release_from_files(str(python)) is None


async def test_a_venv_is_learnt_without_starting_its_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.7")

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"an interpreter was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    answer = await InstalledVersions().establish(_request(python), str(python))

    assert answer.package_version == "3.2.7"


async def test_a_venv_whose_files_cannot_be_read_with_certainty_is_asked(tmp_path: Path) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")
    site = _site(python)
    (site / "spec_kitty_cli-3.2.4.dist-info").rename(site / "spec_kitty_cli-3.2.4.egg-info")
    (site / "spec_kitty_cli-3.2.4.egg-info" / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: spec-kitty-cli\nVersion: 3.2.4\n"
    )

    # learn_release falls back to the interpreter, which reads the egg-info itself.
    assert learn_release(str(python)) == ask_interpreter(str(python))


def test_the_clients_check_before_a_start_reads_a_venv_without_starting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = fake_spec_kitty_venv(tmp_path, "3.2.4")

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"an interpreter was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)

    assert check_spec_kitty_interpreter(str(python), "3.2.4") == "3.2.4"
    with pytest.raises(InvalidRequest) as refused:
        check_spec_kitty_interpreter(str(python), "3.2.7")
    assert refused.value.code == "version_mismatch"

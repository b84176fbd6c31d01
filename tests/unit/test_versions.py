"""Versions are facts: learnt from the interpreter once, again after an install, never claimed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sks_harness import fake_spec_kitty_venv, install_fake_release
from spec_kitty_supervisor._errors import LifecycleError
from spec_kitty_supervisor._versions import InstalledVersions, ask_interpreter
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

"""The release table: every published release falls in the family its wheel describes."""

from __future__ import annotations

import pytest

from spec_kitty_supervisor_client._releases import (
    RELEASE_FAMILIES,
    effective_daemon_version,
    ignores_spec_kitty_home,
    release_family,
    release_numbers,
    without_daemon_reason,
)

# Every release whose wheel was read (docs/versions.md), with the family it was found in.
READ_RELEASES = {
    "0.16.2": "before_3_1",
    "1.0.3": "before_3_1",
    "2.1.3": "before_3_1",
    "3.0.3": "before_3_1",
    **{f"3.1.{n}": "3_1" for n in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)},
    "3.2.0": "3_2_0",
    "3.2.1": "3_2_0",
    "3.2.2": "3_2_0",
    "3.2.3": "3_2_3",
    "3.2.4": "3_2_4",
    "3.2.5": "3_2_4",
    "3.2.6": "3_2_6",
    "3.2.6.1": "3_2_6",
    "3.2.6.2": "3_2_6",
    "3.2.7": "3_2_6",
    "4.0.0rc1": "4_0",
    "4.0.0rc7": "4_0",
}


@pytest.mark.parametrize(("version", "family"), sorted(READ_RELEASES.items()))
def test_every_read_release_is_in_its_family(version: str, family: str) -> None:
    found = release_family(version)
    assert found is not None
    assert found.key == family


def test_families_are_ordered_by_their_first_release() -> None:
    firsts = [family.first for family in RELEASE_FAMILIES]
    assert firsts == sorted(firsts)
    assert len(set(firsts)) == len(firsts)


def test_release_numbers_ignore_pre_release_and_local_tags() -> None:
    assert release_numbers("4.0.0rc7") == (4, 0, 0)
    assert release_numbers("3.2.6.2") == (3, 2, 6, 2)
    assert release_numbers("v3.1.10") == (3, 1, 10)
    assert release_numbers("unknown") is None
    assert release_numbers("") is None


def test_a_version_that_is_no_release_number_has_no_family() -> None:
    assert release_family("unknown") is None
    assert without_daemon_reason("unknown") is None
    assert not ignores_spec_kitty_home("unknown")


@pytest.mark.parametrize("version", ["2.1.0", "3.0.3", "4.0.0rc7", "4.0.0", "5.1"])
def test_releases_without_a_daemon_say_so_by_name(version: str) -> None:
    reason = without_daemon_reason(version)
    assert reason is not None
    assert reason.startswith(f"spec-kitty-cli {version} has no sync daemon")


@pytest.mark.parametrize("version", ["3.1.0", "3.1.10", "3.2.0", "3.2.4", "3.2.7", "3.9"])
def test_releases_with_a_daemon_are_not_refused(version: str) -> None:
    assert without_daemon_reason(version) is None


IGNORING_SPEC_KITTY_HOME = [("3.1.0", True), ("3.1.10", True), ("3.2.0", True), ("3.2.2", True)]
HONOURING_SPEC_KITTY_HOME = [("3.2.3", False), ("3.2.4", False), ("3.2.7", False)]


@pytest.mark.parametrize(
    ("version", "ignores"), IGNORING_SPEC_KITTY_HOME + HONOURING_SPEC_KITTY_HOME
)
def test_which_releases_ignore_spec_kitty_home(version: str, ignores: bool) -> None:
    assert ignores_spec_kitty_home(version) is ignores


def test_only_the_first_daemons_need_the_kernels_word_for_their_root() -> None:
    markerless = {f.key for f in RELEASE_FAMILIES if f.upstream_spawn == "two_line_script"}
    kernel_proven = {f.key for f in RELEASE_FAMILIES if f.proof_of_ours == "kernel_root"}
    assert markerless == kernel_proven == {"3_1"}


def test_a_family_without_a_daemon_has_nothing_to_spawn_prove_or_retire() -> None:
    for family in RELEASE_FAMILIES:
        if not family.has_daemon:
            assert family.upstream_spawn == "none"
            assert family.health_shape == "none"
            assert family.proof_of_ours == "none"
            assert family.retires_itself == "none"
        else:
            assert family.proof_of_ours != "none"


def test_the_proof_of_ours_follows_the_health_shape() -> None:
    # An owner block of the daemon's own is proof (3.2.4+); a shared one never is.
    for family in RELEASE_FAMILIES:
        if family.health_shape == "own_owner":
            assert family.proof_of_ours == "owner_block"
        if family.health_shape == "shared_owner":
            assert family.proof_of_ours == "argv_token"


def test_a_daemon_that_cannot_name_its_version_has_its_interpreters() -> None:
    assert effective_daemon_version("unknown", "3.1.10") == "3.1.10"
    assert effective_daemon_version(None, "3.1.10") == "3.1.10"
    assert effective_daemon_version("3.2.4", "3.2.7") == "3.2.4"

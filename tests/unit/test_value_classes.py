"""The value classes written by hand instead of dataclasses (the early spawn's path imports no
``dataclasses``: ``tests/unit/test_lazy_imports.py``): they compare, hash and print as the
dataclasses they replace did."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spec_kitty_supervisor._early_spawn import EarlyChild, EarlyFacts, EarlyStart, EarlyVerdict
from spec_kitty_supervisor._fd_limit import FdLimits
from spec_kitty_supervisor._identity import ProcessIdentity
from spec_kitty_supervisor._lock import SupervisorLock
from spec_kitty_supervisor._spawn import SpawnedDaemon

# --------------------------------------------------------------------------------------------
# ProcessIdentity: immutable, compared and hashed by pid, start and uid


def test_identities_with_the_same_fields_are_equal_and_hash_alike() -> None:
    one = ProcessIdentity(pid=41, start="boot:9", uid=1000)
    assert one == ProcessIdentity(41, "boot:9", 1000)
    assert hash(one) == hash(ProcessIdentity(41, "boot:9", 1000))
    assert {one: "a"}[ProcessIdentity(41, "boot:9", 1000)] == "a"


@pytest.mark.parametrize(
    "other",
    [
        ProcessIdentity(42, "boot:9", 1000),
        ProcessIdentity(41, "boot:10", 1000),
        ProcessIdentity(41, "boot:9", 0),
    ],
)
def test_identities_that_differ_in_one_field_are_not_equal(other: ProcessIdentity) -> None:
    one = ProcessIdentity(41, "boot:9", 1000)
    assert one != other
    assert not one == other  # noqa: SIM201  (__eq__ itself, not __ne__)
    assert len({one, other}) == 2


def test_an_identity_is_not_equal_to_its_fields_as_a_tuple() -> None:
    assert ProcessIdentity(41, "boot:9", 1000) != (41, "boot:9", 1000)


def test_an_identity_cannot_be_changed() -> None:
    one = ProcessIdentity(41, "boot:9", 1000)
    with pytest.raises(AttributeError):
        one.pid = 42  # type: ignore[misc]
    with pytest.raises(AttributeError):
        one.start = "boot:10"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        one.other = 1  # type: ignore[attr-defined]
    assert one == ProcessIdentity(41, "boot:9", 1000)


def test_an_identity_prints_as_the_dataclass_did() -> None:
    assert repr(ProcessIdentity(41, "boot:9", 1000)) == (
        "ProcessIdentity(pid=41, start='boot:9', uid=1000)"
    )


# --------------------------------------------------------------------------------------------
# EarlyFacts: frozen in spirit, compared and hashed by its five fields


def _facts(**changes: str | None) -> EarlyFacts:
    fields: dict[str, str | None] = {
        "journal": "absent",
        "recorded": "dead",
        "legacy_lock": "taken",
        "installed_version": "3.2.4",
        "claimed_version": None,
    }
    fields.update(changes)
    return EarlyFacts(**fields)  # type: ignore[arg-type]


def test_early_facts_with_the_same_fields_are_equal_and_hash_alike() -> None:
    positional = EarlyFacts("absent", "dead", "taken", "3.2.4", None)
    assert positional == _facts()
    assert hash(positional) == hash(_facts())
    assert len({positional, _facts()}) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"journal": "no_live"},
        {"recorded": "absent"},
        {"legacy_lock": "busy"},
        {"installed_version": "3.2.5"},
        {"installed_version": None},
        {"claimed_version": "3.2.4"},
    ],
)
def test_early_facts_that_differ_in_one_field_are_not_equal(change: dict[str, str | None]) -> None:
    assert _facts(**change) != _facts()
    assert not _facts(**change) == _facts()  # noqa: SIM201  (__eq__ itself, not __ne__)


def test_early_facts_are_not_equal_to_their_fields_as_a_tuple_or_dict() -> None:
    facts = _facts()
    assert facts != ("absent", "dead", "taken", "3.2.4", None)
    assert facts != facts.__dict__
    assert facts.__dict__ == {
        "journal": "absent",
        "recorded": "dead",
        "legacy_lock": "taken",
        "installed_version": "3.2.4",
        "claimed_version": None,
    }


def test_early_facts_cannot_be_changed() -> None:
    facts = _facts()
    with pytest.raises(AttributeError, match="frozen"):
        facts.journal = "live"
    with pytest.raises(AttributeError, match="frozen"):
        del facts.recorded
    assert facts == _facts()


def test_early_facts_print_as_the_dataclass_did() -> None:
    assert repr(_facts()) == (
        "EarlyFacts(journal='absent', recorded='dead', legacy_lock='taken', "
        "installed_version='3.2.4', claimed_version=None)"
    )


# --------------------------------------------------------------------------------------------
# EarlyChild and EarlyStart: mutable, compared by their fields, not hashable


@pytest.fixture
def spawned() -> Iterator[SpawnedDaemon]:
    process = subprocess.Popen(["true"])
    identity = ProcessIdentity(pid=process.pid, start="boot:1", uid=os.getuid())
    yield SpawnedDaemon(process, identity, 9449, "0" * 32, sys.executable, "/usr/bin/py", 17)
    process.wait()


def test_early_children_with_the_same_fields_are_equal_and_unhashable(
    spawned: SpawnedDaemon,
) -> None:
    child = EarlyChild(spawned, "3.2.4", {"A": "1"}, "/w", 7)
    same = EarlyChild(
        spawned=spawned, package_version="3.2.4", env={"A": "1"}, cwd="/w", legacy_lock_fd=7
    )
    assert child == same
    assert child != EarlyChild(spawned, "3.2.4", {"A": "1"}, "/w", 8)
    assert child != EarlyChild(spawned, "3.2.5", {"A": "1"}, "/w", 7)
    assert child != EarlyChild(spawned, "3.2.4", {}, "/w", 7)
    with pytest.raises(TypeError, match="unhashable"):
        hash(child)
    same.cwd = "/elsewhere"  # mutable, as the dataclass was
    assert child != same


def test_an_early_child_prints_its_fields(spawned: SpawnedDaemon) -> None:
    child = EarlyChild(spawned, "3.2.4", {}, "/w", 7)
    assert repr(child) == (
        f"EarlyChild(spawned={spawned!r}, package_version='3.2.4', env={{}}, cwd='/w', "
        "legacy_lock_fd=7)"
    )


def _start(**changes: object) -> EarlyStart:
    fields: dict[str, object] = {
        "user_umask": 0o022,
        "fd_limits": FdLimits(1024, 4096, 4096),
        "prepared": ["supervisor"],
        "lock": LOCK,
        "verdict": EarlyVerdict(False, "no ensure request was handed over"),
    }
    fields.update(changes)
    return EarlyStart(**fields)  # type: ignore[arg-type]


LOCK = SupervisorLock(Path("/nonexistent/supervisor.lock"))


def test_an_early_start_defaults_to_an_empty_request_of_its_own() -> None:
    first, second = _start(), _start()
    assert first.request == {}
    assert first.child is None
    assert first.starting is None
    first.request["python"] = "/p"
    assert second.request == {}  # not one dict shared by every instance


def test_early_starts_compare_by_their_fields_and_are_unhashable(
    tmp_path: Path, spawned: SpawnedDaemon
) -> None:
    assert _start() == _start()
    assert _start() == EarlyStart(
        0o022,
        FdLimits(1024, 4096, 4096),
        ["supervisor"],
        LOCK,
        EarlyVerdict(False, "no ensure request was handed over"),
        {},
        None,
        None,
    )
    assert _start() != _start(user_umask=0o027)
    assert _start() != _start(request={"python": "/p"})
    child = EarlyChild(spawned, "3.2.4", {}, "/w", 7)
    assert _start() != _start(child=child)
    assert _start() != _start(lock=SupervisorLock(tmp_path / "other.lock"))
    with pytest.raises(TypeError, match="unhashable"):
        hash(_start())


def test_an_early_start_prints_its_fields() -> None:
    assert repr(_start()) == (
        "EarlyStart(user_umask=18, fd_limits=FdLimits(inherited_soft=1024, hard=4096, "
        f"soft=4096, error=None), prepared=['supervisor'], lock={LOCK!r}, "
        "verdict=EarlyVerdict(spawn=False, reason='no ensure request was handed over'), "
        "request={}, child=None, starting=None)"
    )


# --------------------------------------------------------------------------------------------
# SpawnedDaemon: mutable, compared by its fields, not hashable


def test_spawned_daemons_compare_by_their_fields_and_are_unhashable(
    spawned: SpawnedDaemon,
) -> None:
    same = SpawnedDaemon(
        process=spawned.process,
        identity=ProcessIdentity(spawned.identity.pid, "boot:1", os.getuid()),
        port=9449,
        token="0" * 32,
        python=sys.executable,
        resolved_python="/usr/bin/py",
        log_offset=17,
    )
    assert same == spawned
    same.log_offset = 18  # mutable, as the dataclass was
    assert same != spawned
    assert spawned != SpawnedDaemon(
        spawned.process, spawned.identity, 9450, "0" * 32, sys.executable, "/usr/bin/py", 17
    )
    with pytest.raises(TypeError, match="unhashable"):
        hash(spawned)


def test_a_spawned_daemon_prints_its_fields(spawned: SpawnedDaemon) -> None:
    assert repr(spawned) == (
        f"SpawnedDaemon(process={spawned.process!r}, identity={spawned.identity!r}, "
        f"port=9449, token='{'0' * 32}', python={sys.executable!r}, "
        "resolved_python='/usr/bin/py', log_offset=17)"
    )

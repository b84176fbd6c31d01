"""The chaos suite's fixture and report: ``tally("fault class")`` per class, JSON at the end.

A test asks for ``tally`` and calls it with the fault class's name; the test fails after its
body when any tally it made has a promise-breaking counter (``_tally.COUNTERS``) above zero,
or ran no trial. At the end of the session every tally is written to ``$CHAOS_REPORT`` (when
set) with the run's context: command, rounds, load average, CPU count.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos._secrets import leaked_tokens, sandboxes_of
from tests.chaos._tally import Tally, rounds, write_report

_TALLIES = pytest.StashKey[list[Tally]]()
_SESSION: list[Tally] = []
_TOKENS_FAULT = "tokens in each chaos test's files"
_STARTED: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    # pytest_configure, not pytest_sessionstart: a conftest below the rootdir that is found
    # only at collection (the whole suite, as CI runs it) never gets the session's start, but
    # pytest calls pytest_configure for every conftest when it is registered.
    _STARTED.update(
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        loadavg_start=os.getloadavg(),
        monotonic=time.monotonic(),
    )


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Callable[[str], Tally]:
    """``tally("supervisor SIGKILL while spawning")``: a new tally for that fault class."""

    def make(fault: str) -> Tally:
        made = Tally(fault=fault, test=request.node.nodeid)
        request.node.stash.setdefault(_TALLIES, []).append(made)
        _SESSION.append(made)
        return made

    return make


def _tokens_tally() -> Tally:
    """The suite-wide token search's tally: one trial per chaos test that had a sandbox."""
    for made in _SESSION:
        if made.fault == _TOKENS_FAULT:
            return made
    made = Tally(fault=_TOKENS_FAULT, test="every test of tests/chaos (conftest.py)")
    _SESSION.append(made)
    return made


def _search_for_tokens(item: pytest.Item) -> list[str]:
    """Search the test's sandboxes while they still exist (see _secrets.py)."""
    sandboxes, fleets = sandboxes_of(getattr(item, "funcargs", {}).values())
    if not sandboxes:
        return []
    made = _tokens_tally()
    leaks: list[str] = []
    with made.trial(item.nodeid):
        leaks = leaked_tokens(sandboxes, fleets)
        for leak in leaks:
            made.fail(f"{item.nodeid}: {leak}")
    return [f"{_TOKENS_FAULT}: {leak}" for leak in leaks]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    # The body passed: now the counters decide (a failing body already failed the test).
    problems = _search_for_tokens(item)
    for made in item.stash.get(_TALLIES, []):
        try:
            made.check()
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        raise AssertionError("\n\n".join(problems))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call" or (call.when == "setup" and report.outcome != "passed"):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        for made in item.stash.get(_TALLIES, []):
            made.outcome = outcome
    return report


def _commit() -> str | None:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return None
    return found.stdout.strip() or None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("CHAOS_REPORT")
    if not target or not _SESSION:
        return
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "chaos_rounds": rounds(),
        "chaos_rounds_env": os.environ.get("CHAOS_ROUNDS"),
        "started": _STARTED.get("started"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - _STARTED.get("monotonic", time.monotonic()), 1),
        "loadavg_start": _STARTED.get("loadavg_start"),
        "loadavg_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _commit(),
        "exitstatus": int(exitstatus),
    }
    write_report(Path(target), _SESSION, meta)

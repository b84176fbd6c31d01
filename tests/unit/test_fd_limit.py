"""The supervisor raises its own descriptor limit and gives its daemons the one it inherited.

Each case runs in a fresh interpreter started with a chosen limit, so the test process's own
limit is never touched.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from spec_kitty_supervisor._fd_limit import FD_LIMIT_TARGET, _target

PROGRAM = """
import json, resource, subprocess, sys
from spec_kitty_supervisor._fd_limit import child_limit_restorer, raise_fd_limit
limits = raise_fd_limit()
child = subprocess.run(
    [sys.executable, "-c", "import resource as r; print(list(r.getrlimit(r.RLIMIT_NOFILE)))"],
    preexec_fn=child_limit_restorer(), capture_output=True, text=True, check=True,
)
print(json.dumps({
    "supervisor": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    "child": json.loads(child.stdout),
    "raised": limits.raised,
}))
"""


def _run_with_limit(soft: int, hard: int) -> dict[str, object]:
    def start_with_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        preexec_fn=start_with_limit,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def _hard_limit_allows(hard: int) -> bool:
    current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return current_hard == resource.RLIM_INFINITY or current_hard >= hard


@pytest.mark.skipif(not _hard_limit_allows(8192), reason="needs a hard fd limit of 8192")
def test_a_low_soft_limit_is_raised_and_the_child_gets_the_inherited_one_back() -> None:
    answer = _run_with_limit(256, 8192)
    assert answer == {"supervisor": [FD_LIMIT_TARGET, 8192], "child": [256, 8192], "raised": True}


def test_the_hard_limit_caps_the_raise() -> None:
    answer = _run_with_limit(256, 256)
    assert answer == {"supervisor": [256, 256], "child": [256, 256], "raised": False}


@pytest.mark.skipif(not _hard_limit_allows(10000), reason="needs a hard fd limit of 10000")
def test_a_soft_limit_above_the_target_is_never_lowered() -> None:
    answer = _run_with_limit(5000, 10000)
    assert answer == {"supervisor": [5000, 10000], "child": [5000, 10000], "raised": False}


def test_an_unlimited_hard_limit_is_capped_at_the_target() -> None:
    assert _target(resource.RLIM_INFINITY, FD_LIMIT_TARGET) == FD_LIMIT_TARGET
    assert _target(1024, FD_LIMIT_TARGET) == 1024

"""The protocol's models are built on first use (``defer_build``), safely under threads (ADR 0012).

Each check runs in a fresh interpreter: a model is built once per process, so only a new
process has models left to build. The threaded check releases its threads together from a
barrier, with the interpreter switching threads as often as it can, so that first uses overlap.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pydantic
import pydantic.main

from spec_kitty_supervisor_client import _models


def _run_fresh(code: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _protocol_models() -> list[str]:
    return sorted(
        name
        for name, value in vars(_models).items()
        if isinstance(value, type)
        and issubclass(value, pydantic.BaseModel)
        and value.__module__ == _models.__name__
    )


def test_importing_the_models_builds_none_of_them() -> None:
    names = _protocol_models()
    assert "EnsureRequest" in names
    assert "Settings" in names
    built = _run_fresh(
        "import json\nfrom spec_kitty_supervisor_client import _models\n"
        f"names = {names!r}\n"
        "print(json.dumps([n for n in names if getattr(_models, n).__pydantic_complete__]))"
    )
    assert built == []


def test_a_model_is_built_by_its_first_use_and_validates_as_before() -> None:
    result = _run_fresh(
        "import json\nfrom pydantic import ValidationError\n"
        "from spec_kitty_supervisor_client._models import EnsureRequest\n"
        "before = EnsureRequest.__pydantic_complete__\n"
        "try:\n"
        "    EnsureRequest.model_validate({'python': '/usr/bin/python3', 'replace': 'yes'})\n"
        "    refused = False\n"
        "except ValidationError:\n"
        "    refused = True\n"
        "print(json.dumps([before, EnsureRequest.__pydantic_complete__, refused]))"
    )
    # Not built at import; built by the first validation, which is strict ("yes" is no bool).
    assert result == [False, True, True]


def test_every_model_builds() -> None:
    # Deferred, a model whose schema cannot be built would fail at its first use in a user's
    # process instead of at import: build each one here.
    names = _protocol_models()
    built = _run_fresh(
        "import json\nfrom spec_kitty_supervisor_client import _models\n"
        f"names = {names!r}\n"
        "print(json.dumps([n for n in names if getattr(_models, n).model_rebuild() is not False\n"
        "                  and getattr(_models, n).__pydantic_complete__]))"
    )
    assert built == names


#: Sixteen threads make their process's first use of the models at once: a strict request
#: refusing a lax value, a settings model refusing an unknown field, a lenient answer ignoring
#: unknown fields (a nested model inside), a dump. Any wrong answer or exception is reported.
_THREADED_FIRST_USES = r"""
import json, sys, threading
sys.setswitchinterval(1e-6)
from pydantic import ValidationError
from spec_kitty_supervisor_client import _models as m

THREADS = 16
barrier = threading.Barrier(THREADS)
problems = []

def first_use(i):
    barrier.wait()
    try:
        kind = i % 4
        if kind == 0:
            try:
                m.EnsureRequest.model_validate({"python": "/usr/bin/python3", "replace": "yes"})
                problems.append("a lax EnsureRequest was accepted")
            except ValidationError:
                pass
        elif kind == 1:
            try:
                m.Settings(heartbeat_seconds=1.0, unknown=1)
                problems.append("Settings accepted an unknown field")
            except ValidationError:
                pass
        elif kind == 2:
            body = m.ErrorBody.model_validate_json(
                '{"error": {"code": "x", "message": "y", "new": 1}, "new": 2}'
            )
            if (body.error.code, body.error.message) != ("x", "y"):
                problems.append(f"ErrorBody read as {body!r}")
        else:
            dumped = json.loads(m.Settings(heartbeat_seconds=2.0).model_dump_json())
            if dumped["heartbeat_seconds"] != 2.0:
                problems.append(f"Settings dumped as {dumped!r}")
    except Exception as exc:
        problems.append(repr(exc))

threads = [threading.Thread(target=first_use, args=(i,)) for i in range(THREADS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(problems))
"""


def test_first_uses_from_many_threads_at_once_all_answer_right() -> None:
    for _ in range(4):
        assert _run_fresh(_THREADED_FIRST_USES) == []


def test_the_installed_pydantic_rebuilds_under_a_lock() -> None:
    # What makes deferred builds safe under threads (pydantic pull request 13438, first
    # released in 2.14.0; pyproject requires it): a model's build on first use holds a lock,
    # so a second thread waits for the first's build instead of racing it.
    assert isinstance(pydantic.main._rebuild_lock, type(pydantic.main.threading.RLock()))
    assert "with _rebuild_lock:" in inspect.getsource(pydantic.BaseModel.model_rebuild)

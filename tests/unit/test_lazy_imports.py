"""Each command imports only what it runs: the heavy modules stay out of the others' start.

Checked in a fresh interpreter (a subprocess reading ``sys.modules``), not by timing: a
top-level import that pulls a listed module back into a path fails here on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

SUPERVISOR = "spec_kitty_supervisor"


def _loaded_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


#: What building the command line (every command's first step) must not import: the
#: modules of commands that are not the one being run.
NOT_FOR_THE_PARSER = {
    f"{SUPERVISOR}._doctor",
    f"{SUPERVISOR}._doctor_cli",
    f"{SUPERVISOR}._integrate",
    f"{SUPERVISOR}._integrate_cli",
    f"{SUPERVISOR}._service",
    f"{SUPERVISOR}._service_cli",
    f"{SUPERVISOR}._runner",
    f"{SUPERVISOR}._api",
    "psutil",
}

#: What the ``doctor`` command must not import: the serving side of the supervisor.
NOT_FOR_DOCTOR = {
    f"{SUPERVISOR}._api",
    f"{SUPERVISOR}._app",
    f"{SUPERVISOR}._core",
    f"{SUPERVISOR}._doctor_routes",
    f"{SUPERVISOR}._http",
    f"{SUPERVISOR}._runner",
    f"{SUPERVISOR}._serving",
    f"{SUPERVISOR}._service_cli",
    f"{SUPERVISOR}._integrate_cli",
}


def test_the_checker_sees_a_module_that_is_imported() -> None:
    loaded = _loaded_after(f"import {SUPERVISOR}._doctor")
    assert f"{SUPERVISOR}._doctor" in loaded


def test_psutil_is_imported_when_a_process_is_first_read() -> None:
    loaded = _loaded_after(
        f"import os\nfrom {SUPERVISOR}._discovery import read_process_facts\n"
        "assert read_process_facts(os.getpid())[1] is not None"
    )
    assert "psutil" in loaded


def test_the_serving_modules_do_not_import_psutil() -> None:
    # A supervisor of a clean root (nothing to re-adopt, no listener in the family range)
    # never reads another process through psutil: its import is not a cost of every start.
    loaded = _loaded_after(f"import {SUPERVISOR}._runner")
    assert f"{SUPERVISOR}._discovery" in loaded
    assert "psutil" not in loaded


def test_building_the_command_line_imports_no_command_of_its_own_module() -> None:
    loaded = _loaded_after(f"from {SUPERVISOR}._cli import _build_parser\n_build_parser()")
    assert loaded & NOT_FOR_THE_PARSER == set()


def test_the_doctor_command_does_not_import_the_serving_side() -> None:
    loaded = _loaded_after(f"from {SUPERVISOR}._doctor_cli import cmd_doctor")
    assert f"{SUPERVISOR}._doctor" in loaded
    assert loaded & NOT_FOR_DOCTOR == set()

"""Each command imports only what it runs: the heavy modules stay out of the others' start.

Checked in a fresh interpreter (a subprocess reading ``sys.modules``), not by timing: a
top-level import that pulls a listed module back into a path fails here on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux reads /proc itself")
def test_on_linux_reading_processes_and_listeners_imports_no_psutil() -> None:
    loaded = _loaded_after(
        f"import os\nfrom {SUPERVISOR}._discovery import find_family_listeners\n"
        f"from {SUPERVISOR}._discovery import read_process_facts\n"
        "assert read_process_facts(os.getpid())[1] is not None\n"
        "find_family_listeners()"
    )
    assert f"{SUPERVISOR}._discovery" in loaded
    assert "psutil" not in loaded


@pytest.mark.skipif(sys.platform.startswith("linux"), reason="elsewhere psutil reads processes")
def test_psutil_is_imported_when_a_process_is_first_read() -> None:
    loaded = _loaded_after(
        f"import os\nfrom {SUPERVISOR}._discovery import read_process_facts\n"
        "assert read_process_facts(os.getpid())[1] is not None"
    )
    assert "psutil" in loaded


#: What the supervisor's start (``run`` up to serving) must not import: the doctor's modules
#: (imported by the first orphan sweep or doctor request, beside serving), psutil (imported
#: when another process is first read), h11 (the probes' client side, imported by the first
#: probe) and tomllib (imported only when there is a config file).
NOT_FOR_THE_START = {
    f"{SUPERVISOR}._doctor",
    f"{SUPERVISOR}._classification",
    f"{SUPERVISOR}._discovery",
    f"{SUPERVISOR}._sweep",
    f"{SUPERVISOR}._units",
    "psutil",
    "h11",
    "tomllib",
}


def test_the_serving_modules_do_not_import_psutil() -> None:
    # A supervisor of a clean root (nothing to re-adopt, no listener in the family range)
    # never reads another process through psutil: its import is not a cost of every start.
    loaded = _loaded_after(f"import {SUPERVISOR}._runner")
    assert f"{SUPERVISOR}._runner" in loaded
    assert "psutil" not in loaded


def test_the_start_imports_only_what_serving_needs() -> None:
    loaded = _loaded_after(
        f"import {SUPERVISOR}._cli, {SUPERVISOR}._runner\n"
        f"from {SUPERVISOR}._settings import load_settings\n"
        "load_settings(None)"
    )
    assert f"{SUPERVISOR}._runner" in loaded
    assert loaded & NOT_FOR_THE_START == set()


def _first_sweep_loads(listening: bool) -> set[str]:
    """What the first sweep's look imports, its scan range one port of the family range on
    which we hold a listener, or on which nothing listens."""
    return _loaded_after(
        "import anyio, pathlib, socket, tempfile\n"
        f"from {SUPERVISOR}._layout import RootLayout\n"
        f"from {SUPERVISOR}._ledger import Ledger\n"
        f"from {SUPERVISOR}._lifecycle import RealEffects\n"
        f"from {SUPERVISOR}._table import Table\n"
        "from spec_kitty_supervisor_client._models import Settings\n"
        "def bound():\n"
        "    for port in range(9400, 9450):\n"
        "        sock = socket.socket()\n"
        "        try:\n"
        "            sock.bind(('127.0.0.1', port))\n"
        "            return sock, port\n"
        "        except OSError:\n"
        "            sock.close()\n"
        "    raise SystemExit('no free port in the family range')\n"
        "sock, port = bound()\n"
        f"if {listening}:\n"
        "    sock.listen()\n"
        "home = pathlib.Path(tempfile.mkdtemp())\n"
        "layout = RootLayout(home / '.spec-kitty'); layout.prepare()\n"
        "settings = Settings(scan_range=(port, port + 1))\n"
        "effects = RealEffects(layout, settings, Ledger(None))\n"
        "anyio.run(effects.orphans_to_sweep, Table())\n"
        "sock.close()"
    )


def test_the_first_sweep_of_a_range_with_a_listener_imports_the_doctor() -> None:
    loaded = _first_sweep_loads(listening=True)
    assert f"{SUPERVISOR}._doctor" in loaded
    assert f"{SUPERVISOR}._classification" in loaded


def test_the_first_sweep_of_a_range_where_nothing_listens_imports_nothing_of_it() -> None:
    # Most starts: the kernel's table has no listener in the range, and says so alone.
    loaded = _first_sweep_loads(listening=False)
    assert f"{SUPERVISOR}._listen_table" in loaded
    assert loaded & NOT_FOR_THE_START == set()


def test_a_config_file_is_read_with_tomllib(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("heartbeat_seconds = 7.5\n")
    loaded = _loaded_after(
        f"from pathlib import Path\nfrom {SUPERVISOR}._settings import load_settings\n"
        f"assert load_settings(Path({str(config)!r})).heartbeat_seconds == 7.5"
    )
    assert "tomllib" in loaded


def test_a_probe_imports_h11() -> None:
    loaded = _loaded_after(
        f"import anyio\nfrom {SUPERVISOR}._probe import probe_health\n"
        "assert anyio.run(probe_health, 1, 0.5) is None"
    )
    assert "h11" in loaded


def test_building_the_command_line_imports_no_command_of_its_own_module() -> None:
    loaded = _loaded_after(f"from {SUPERVISOR}._cli import _build_parser\n_build_parser()")
    assert loaded & NOT_FOR_THE_PARSER == set()


#: What ``doctor`` must not import until it knows no supervisor answers: asking one is the
#: standard-library wire; observing (and the models, logging, psutil) is for doing it here.
ONLY_TO_OBSERVE_HERE = {
    f"{SUPERVISOR}._doctor",
    f"{SUPERVISOR}._classification",
    f"{SUPERVISOR}._discovery",
    f"{SUPERVISOR}._logging",
    "spec_kitty_supervisor_client._models",
    "pydantic",
    "structlog",
    "psutil",
    "anyio",
}


def test_the_doctor_command_does_not_import_the_serving_side() -> None:
    loaded = _loaded_after(
        f"from {SUPERVISOR}._cli import _build_parser\n_build_parser()\n"
        f"from {SUPERVISOR}._doctor_cli import cmd_doctor"
    )
    assert f"{SUPERVISOR}._doctor_cli" in loaded
    assert loaded & NOT_FOR_DOCTOR == set()
    assert loaded & ONLY_TO_OBSERVE_HERE == set()


def test_doctor_observing_here_imports_its_machinery_then() -> None:
    loaded = _loaded_after(
        "import tempfile\n"
        f"from {SUPERVISOR}._cli import main\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        "    main(['doctor', '--json', '--root', folder + '/root'])\n"  # no supervisor there
    )
    assert {f"{SUPERVISOR}._doctor", "pydantic"} <= loaded
    assert loaded & NOT_FOR_DOCTOR == set()
    # Nothing was logged, so structlog was not needed; the table and ledger are the
    # running supervisor's; nothing was stopped, so the sweep was not needed either.
    only_elsewhere = {"structlog", f"{SUPERVISOR}._table", f"{SUPERVISOR}._ledger"}
    assert (only_elsewhere | {f"{SUPERVISOR}._sweep", f"{SUPERVISOR}._signals"}) & loaded == set()
    # Logging to stderr needs no file handler; no service unit is installed, so neither a
    # plist nor the user's name is read.
    assert {"logging.handlers", f"{SUPERVISOR}._log_file", "plistlib", "getpass"} & loaded == set()
    if sys.platform.startswith("linux"):
        assert "psutil" not in loaded


def test_doctor_observing_here_creates_no_dataclass_but_the_supervisors_facts() -> None:
    # Creating a dataclass generates and compiles its methods (about 5 M instructions a frozen
    # one); the doctor's value types are named tuples. SupervisorFacts stays a dataclass: its
    # __post_init__ holds the family boundary.
    script = (
        "import dataclasses, json, sys, tempfile\n"
        f"from {SUPERVISOR}._cli import main\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        "    main(['doctor', '--json', '--root', folder + '/root'])\n"
        "ours = [m for name, m in list(sys.modules.items())\n"
        f"        if name.startswith(('{SUPERVISOR}.', 'spec_kitty_supervisor_client.'))]\n"
        "print(json.dumps(sorted(\n"
        "    f'{m.__name__}.{v.__name__}' for m in ours for v in vars(m).values()\n"
        "    if isinstance(v, type) and v.__module__ == m.__name__\n"
        "    and dataclasses.is_dataclass(v)\n"
        ")))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    created = json.loads(done.stdout.strip().splitlines()[-1])
    assert created == [f"{SUPERVISOR}._classification.SupervisorFacts"]


def test_doctor_that_logs_configures_structlog_before_the_first_line(tmp_path: Path) -> None:
    # R/sync-daemon is a folder: reading it refuses it, moves it aside and logs why. The log
    # line goes to stderr as JSON; stdout stays the report alone.
    root = tmp_path / "root"
    (root / "sync-daemon").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", SUPERVISOR, "doctor", "--json", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["supervisor"] is None
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [entry["event"] for entry in logged] == ["legacy_state_refused"]
    assert logged[0]["level"] == "warning"
    assert (root / "sync-daemon.refused-0").is_dir()


#: What ``run``'s first stage (``_early_spawn``, ADRs 0013 and 0015) must not import: it serves
#: the socket and spawns the starter's daemon while these are imported, after it.
NOT_FOR_THE_FIRST_STAGE = {
    "hashlib",  # through secrets: OpenSSL's start, for a token os.urandom gives
    "pydantic",
    "structlog",
    "anyio",
    "asyncio",
    "h11",
    "psutil",
    f"{SUPERVISOR}._cli",
    f"{SUPERVISOR}._runner",
    f"{SUPERVISOR}._models",
    "spec_kitty_supervisor_client._models",
}


def test_the_first_stage_of_run_imports_nothing_heavy() -> None:
    loaded = _loaded_after(f"import {SUPERVISOR}._early_spawn")
    assert f"{SUPERVISOR}._early_spawn" in loaded
    assert loaded & NOT_FOR_THE_FIRST_STAGE == set()


#: What the early spawn's modules (imported after the first stage serves the socket, before
#: the spawn) must not import either: ``dataclasses`` imports ``inspect``, and with it ``ast``,
#: ``dis``, ``tokenize`` and ``linecache``, about a third of those modules' own import time on
#: the auto-started supervisor's path to its early spawn (issue 16's fully cold row). Their
#: value classes are named tuples or written by hand (tests/unit/test_value_classes.py).
NOT_FOR_THE_EARLY_SPAWN = NOT_FOR_THE_FIRST_STAGE | {
    "dataclasses",
    "inspect",
    "ast",
    "dis",
    "tokenize",
    "linecache",
}


def test_the_early_spawn_after_the_first_stage_imports_no_dataclasses() -> None:
    loaded = _loaded_after(f"import {SUPERVISOR}._first_stage, {SUPERVISOR}._early_spawn")
    assert {f"{SUPERVISOR}._early_spawn", f"{SUPERVISOR}._spawn", "subprocess"} <= loaded
    assert loaded & NOT_FOR_THE_EARLY_SPAWN == set()


def test_the_checker_sees_dataclasses_where_they_are_imported() -> None:
    # The serving stack still uses dataclasses: the set above names modules that do get
    # imported, only later.
    loaded = _loaded_after(f"import {SUPERVISOR}._early_spawn, {SUPERVISOR}._table")
    assert {"dataclasses", "inspect"} <= loaded


def test_only_run_imports_the_early_spawn_stage() -> None:
    loaded = _loaded_after(
        "sys.argv = ['spec-kitty-supervisor', '--version']\n"
        f"from {SUPERVISOR}.__main__ import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert f"{SUPERVISOR}._cli" in loaded
    assert f"{SUPERVISOR}._early_spawn" not in loaded


#: What the first stage must not have imported when it serves the socket: the early spawn's
#: modules come after (they are imported while the socket is served already).
NOT_FOR_SERVING_FIRST = NOT_FOR_THE_FIRST_STAGE | {
    f"{SUPERVISOR}._early_spawn",
    f"{SUPERVISOR}._spawn",
    "subprocess",
    "dataclasses",  # with inspect, a tenth of the first stage's start (ADR 0015)
    "tempfile",  # with random and shutil (bz2, lzma): _files.create_unique_file instead
}


def test_the_first_stage_serves_health_with_nothing_heavy_imported(tmp_path: Path) -> None:
    """The first stage's server (``_starting``, ADR 0015) answers before the heavy imports,
    and before the early spawn's own modules."""
    root = tmp_path / "root"
    loaded = _loaded_after(
        "import socket\n"
        f"from {SUPERVISOR}._first_stage import take_root\n"
        f"start = take_root(['run', '--root', {str(root)!r}], {{}})\n"
        "client = socket.socket(socket.AF_UNIX)\n"
        f"client.connect({str(root / 'supervisor' / 'supervisor.sock')!r})\n"
        "client.sendall(b'GET /v1/health HTTP/1.1\\r\\nhost: s\\r\\n'\n"
        "               b'connection: close\\r\\n\\r\\n')\n"
        "answer = b''\n"
        "while chunk := client.recv(65536):\n"
        "    answer += chunk\n"
        "start.starting.close()\n"
        "start.lock.release()\n"
        "assert answer.startswith(b'HTTP/1.1 200 '), answer\n"
        'assert b\'"state":"starting"\' in answer, answer\n'
    )
    assert f"{SUPERVISOR}._starting" in loaded
    assert loaded & NOT_FOR_SERVING_FIRST == set()

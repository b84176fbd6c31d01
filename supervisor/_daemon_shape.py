"""The production spawn shape of a spec-kitty sync daemon: building it and recognising it.

Every upstream tool recognises a sync daemon by this argv (contract document, "How a daemon is
started"), so the supervisor spawns exactly this shape and reads other processes' argv with
the same rules.

Pure: standard library and other pure modules only, no I/O (a wall: tests/unit/test_walls.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "DAEMON_EXEC_MARKER",
    "DAEMON_ROOT_MARKER",
    "CmdlineFacts",
    "build_daemon_argv",
    "daemon_script",
    "parse_cmdline",
]

DAEMON_ROOT_MARKER = "--spec-kitty-daemon-root="
DAEMON_EXEC_MARKER = "--spec-kitty-daemon-exec="

_PORT_IN_SCRIPT = re.compile(r"run_sync_daemon\(\s*(\d+)")
_TOKEN_IN_SCRIPT = re.compile(r"run_sync_daemon\(\s*\d+\s*,\s*['\"]([0-9a-f]{32})['\"]")


def daemon_script(port: int, token: str) -> str:
    """The four-line ``-c`` script upstream spawners pass to the interpreter."""
    return (
        "import os\n"
        'os.environ["SPEC_KITTY_SYNC_MINIMAL_IMPORT"] = "1"\n'
        "from specify_cli.sync.daemon import run_sync_daemon\n"
        f"run_sync_daemon({port}, '{token}')\n"
    )


def build_daemon_argv(
    python: str, resolved_python: str, daemon_root: str, port: int, token: str
) -> list[str]:
    """``[PYTHON, "-c", SCRIPT, root marker, exec marker]``, byte for byte as upstream."""
    return [
        python,
        "-c",
        daemon_script(port, token),
        f"{DAEMON_ROOT_MARKER}{daemon_root}",
        f"{DAEMON_EXEC_MARKER}{resolved_python}",
    ]


class CmdlineFacts(NamedTuple):
    """What a process's argv says about it, read the way upstream tools read it.

    A named tuple, not a dataclass: the spawn imports this module on the early spawn's path,
    and ``dataclasses`` imports ``inspect`` (tests/unit/test_lazy_imports.py)."""

    spawn_shape: bool
    root_marker: str | None
    exec_marker: str | None
    argv_port: int | None
    argv_token: str | None
    executable: str | None


def parse_cmdline(argv: Sequence[str]) -> CmdlineFacts:
    """Recognise the spawn shape: ``-c`` followed by a script that calls ``run_sync_daemon``."""
    script: str | None = None
    for index, element in enumerate(argv[:-1]):
        if element == "-c" and "run_sync_daemon" in argv[index + 1]:
            script = argv[index + 1]
            break
    root_marker = _marker_value(argv, DAEMON_ROOT_MARKER)
    exec_marker = _marker_value(argv, DAEMON_EXEC_MARKER)
    argv_port: int | None = None
    argv_token: str | None = None
    if script is not None:
        port_match = _PORT_IN_SCRIPT.search(script)
        argv_port = int(port_match.group(1)) if port_match else None
        token_match = _TOKEN_IN_SCRIPT.search(script)
        argv_token = token_match.group(1) if token_match else None
    return CmdlineFacts(
        spawn_shape=script is not None,
        root_marker=root_marker,
        exec_marker=exec_marker,
        argv_port=argv_port,
        argv_token=argv_token,
        executable=argv[0] if argv else None,
    )


def _marker_value(argv: Sequence[str], prefix: str) -> str | None:
    for element in argv:
        if element.startswith(prefix):
            return element[len(prefix) :]
    return None

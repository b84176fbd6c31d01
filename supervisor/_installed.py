"""Which spec-kitty-cli releases the ``spec-kitty`` commands on PATH use, read from files.

``doctor`` asks this to tell a root's daemon that no installed CLI uses any more (a release the
user upgraded away from) from one still in use. It reads, never runs: each ``spec-kitty`` on
PATH names its interpreter in its shebang line (read as a client reads the ``spec-kitty`` it
runs, :func:`spec_kitty_supervisor_client._discover.script_interpreter`), and that
interpreter's environment holds a ``spec_kitty_cli-<version>.dist-info`` folder. Reading files
keeps doctor fast and imports nothing of spec-kitty. Project venvs and one-off runs (``uvx``,
``pipx run``) are invisible here, which is why such a daemon is reported, never stopped, by
doctor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from spec_kitty_supervisor_client._discover import SpecKittyNotFound, script_interpreter

__all__ = ["cli_versions_on_path", "interpreter_release"]

_DIST_INFO_PREFIX = "spec_kitty_cli-"
_DIST_INFO_SUFFIX = ".dist-info"


def interpreter_release(python: str) -> str | None:
    """The spec-kitty-cli version installed in ``python``'s environment, from its dist-info."""
    environment = Path(python).parent.parent  # <env>/bin/python
    for site in environment.glob("lib/python3*/site-packages"):
        try:
            names = os.listdir(site)
        except OSError:
            continue
        for name in names:
            if name.startswith(_DIST_INFO_PREFIX) and name.endswith(_DIST_INFO_SUFFIX):
                return name[len(_DIST_INFO_PREFIX) : -len(_DIST_INFO_SUFFIX)]
    return None


def _shebang_interpreter(script: Path) -> str | None:
    try:
        return script_interpreter(script)
    except SpecKittyNotFound:
        return None


def cli_versions_on_path(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every ``spec-kitty`` command on PATH (in PATH order) → the release it runs."""
    path = (os.environ if environ is None else environ).get("PATH", "")
    found: dict[str, str] = {}
    for folder in path.split(os.pathsep):
        script = Path(folder or ".") / "spec-kitty"
        if str(script) in found or not os.access(script, os.X_OK):
            continue
        interpreter = _shebang_interpreter(script)
        version = interpreter_release(interpreter) if interpreter else None
        if version is not None:
            found[str(script)] = version
    return found

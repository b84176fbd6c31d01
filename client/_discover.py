"""Which spec-kitty a client means when it does not say: the ``spec-kitty`` command on PATH."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import InvalidRequest, SupervisorError

__all__ = [
    "SpecKittyNotFound",
    "check_spec_kitty_interpreter",
    "installed_spec_kitty_version",
    "spec_kitty_python",
]

_VERSION_SCRIPT = "from importlib.metadata import version; print(version('spec-kitty-cli'))"


class SpecKittyNotFound(SupervisorError, LookupError):
    """Raised when no spec-kitty interpreter or installed spec-kitty-cli version can be found."""


def spec_kitty_python(path: str | None = None) -> str:
    """The interpreter of the ``spec-kitty`` console script, read from its shebang line.

    Unresolved on purpose: a venv's ``bin/python`` is the daemon's key even when it is a link
    to a shared base interpreter.
    """
    import shutil  # not at the top: the one call imports this module, and seldom needs it

    script = shutil.which("spec-kitty", path=path)
    if script is None:
        raise SpecKittyNotFound("no `spec-kitty` command on PATH; pass python= explicitly")
    try:
        with open(script, "rb") as handle:
            first_line = handle.readline(4096)
    except OSError as exc:
        raise SpecKittyNotFound(f"cannot read {script}: {exc}") from None
    if not first_line.startswith(b"#!"):
        raise SpecKittyNotFound(f"{script} has no shebang line; pass python= explicitly")
    interpreter = first_line[2:].strip().split()[0].decode()
    if not os.path.isabs(interpreter):
        raise SpecKittyNotFound(f"{script} names a relative interpreter {interpreter!r}")
    return interpreter


def installed_spec_kitty_version(python: str) -> str:
    """The spec-kitty-cli version installed for ``python`` (asks that interpreter)."""
    if not Path(python).exists():
        raise SpecKittyNotFound(f"python {python} does not exist")
    if not Path(python).is_file() or not os.access(python, os.X_OK):
        raise SpecKittyNotFound(f"python {python} is not an executable file")
    import subprocess

    try:
        result = subprocess.run(
            [python, "-c", _VERSION_SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpecKittyNotFound(f"could not ask {python} for its spec-kitty-cli: {exc}") from None
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [""])[-1]
        raise SpecKittyNotFound(f"spec-kitty-cli is not installed for {python}: {last_line}")
    return result.stdout.strip()


def check_spec_kitty_interpreter(python: str, claimed_version: str | None = None) -> str:
    """Before a supervisor is started for ``python``: what it would refuse, refused here.

    The interpreter must exist, run, have spec-kitty-cli installed (``claimed_version``, when
    given, must be that version), and that release must have a sync daemon. Otherwise a
    supervisor would start only to refuse the request. Returns the installed version.
    """
    # Imported here: only the cold path (no supervisor answers) checks, and the release table
    # (dataclasses, re) is not worth importing on the one-call path's warm side.
    from ._releases import UNKNOWN_VERSION, without_daemon_reason

    installed = installed_spec_kitty_version(python)
    # "unknown" is what every 3.1 CLI says of itself: no claim at all.
    if claimed_version not in (None, UNKNOWN_VERSION, installed):
        raise InvalidRequest(
            "version_mismatch",
            f"the request says spec-kitty-cli {claimed_version}, but {python} has "
            f"spec-kitty-cli {installed} installed; ask without a version or with that one",
            400,
            {"claimed": claimed_version, "installed": installed},
        )
    no_daemon = without_daemon_reason(installed)
    if no_daemon is not None:
        raise InvalidRequest("no_sync_daemon", f"{no_daemon}; no supervisor was started", 400)
    return installed

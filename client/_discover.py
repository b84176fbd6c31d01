"""Which spec-kitty a client means when it does not say: the ``spec-kitty`` command on PATH."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import InvalidRequest, SupervisorError

__all__ = [
    "SpecKittyNotFound",
    "check_spec_kitty_interpreter",
    "installed_spec_kitty_version",
    "release_from_files",
    "script_interpreter",
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
    return script_interpreter(script)


def script_interpreter(script: str | os.PathLike[str]) -> str:
    """The absolute interpreter a console script's shebang line names (unresolved)."""
    try:
        with open(script, "rb") as handle:
            first_line = handle.readline(4096)
    except OSError as exc:
        raise SpecKittyNotFound(f"cannot read {script}: {exc}") from None
    if not first_line.startswith(b"#!"):
        raise SpecKittyNotFound(f"{script} has no shebang line; pass python= explicitly")
    words = first_line[2:].strip().split()
    if not words:
        raise SpecKittyNotFound(f"{script} has an empty shebang line; pass python= explicitly")
    interpreter = os.fsdecode(words[0])
    if not os.path.isabs(interpreter):
        raise SpecKittyNotFound(f"{script} names a relative interpreter {interpreter!r}")
    return interpreter


def _venv_site_packages(python: str) -> str | None:
    """The site-packages folder of the venv whose ``bin/`` holds ``python``; else None.

    Python finds its venv from the path it was started by (not the resolved one): a
    ``pyvenv.cfg`` beside ``bin/``. Anything else (a base interpreter, a ``pyvenv.cfg`` in
    ``bin/`` itself, no recorded version) is not read here.
    """
    bin_dir = os.path.dirname(python)
    if os.path.basename(bin_dir) != "bin" or os.path.exists(os.path.join(bin_dir, "pyvenv.cfg")):
        return None
    env = os.path.dirname(bin_dir)
    try:
        with open(os.path.join(env, "pyvenv.cfg"), encoding="utf-8") as handle:
            config = handle.read(65536)
    except (OSError, UnicodeDecodeError):
        return None
    version = ""
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() in ("version", "version_info"):
            version = value.strip()
    major_minor = version.split(".")[:2]
    if len(major_minor) != 2 or not all(part.isdigit() for part in major_minor):
        return None
    name = f"python{'.'.join(major_minor)}"
    # A venv whose base interpreter was replaced by another minor version in place still
    # says the old one; the interpreter it really runs names its version in its file name.
    resolved = os.path.basename(os.path.realpath(python))
    if resolved.startswith("python3.") and resolved != name:
        return None
    return os.path.join(env, "lib", name, "site-packages")


def _metadata_version(dist_info: str) -> str | None:
    """The ``Version:`` header of a dist-info's METADATA (what importlib.metadata reads)."""
    try:
        with open(os.path.join(dist_info, "METADATA"), encoding="utf-8") as handle:
            head = handle.read(65536)
    except (OSError, UnicodeDecodeError):
        return None
    name = version = None
    for line in head.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, sep, value = line.partition(":")
        if sep and key.lower() == "name":
            name = value.strip()
        elif sep and key.lower() == "version":
            version = value.strip()
    if name is None or _normalized(name) != _PROJECT or not version:
        return None
    return version


def _normalized(project: str) -> str:
    # importlib.metadata's matching: case-insensitive, runs of "-", "_" and "." alike.
    out: list[str] = []
    for char in project.lower():
        if char in "-_.":
            if not out or out[-1] != "_":
                out.append("_")
        else:
            out.append(char)
    return "".join(out)


_PROJECT = "spec_kitty_cli"


def release_from_files(python: str) -> tuple[str, str] | None:
    """``(version, site-packages)`` of spec-kitty-cli for a venv's ``python``, read from files.

    What ``python -I`` would say, without starting it (ADR 0009): in a venv, isolated mode's
    first place for distributions is the venv's site-packages, so one ``spec_kitty_cli``
    dist-info there is the installed release. None whenever that cannot be read with
    certainty (not a venv, none or several matching entries, an egg-info, no METADATA):
    the caller then asks the interpreter.
    """
    site = _venv_site_packages(python)
    if site is None:
        return None
    try:
        names = os.listdir(site)
    except OSError:
        return None
    found: list[str] = []
    for name in names:
        low = name.lower()
        if (
            low.endswith((".dist-info", ".egg-info"))
            and _normalized(low.rpartition(".")[0].partition("-")[0]) == _PROJECT
        ):
            found.append(name)
    if len(found) != 1 or not found[0].lower().endswith(".dist-info"):
        return None
    version = _metadata_version(os.path.join(site, found[0]))
    return (version, site) if version is not None else None


def installed_spec_kitty_version(python: str) -> str:
    """The spec-kitty-cli version installed for ``python``: its venv's files, else asks it."""
    if not Path(python).exists():
        raise SpecKittyNotFound(f"python {python} does not exist")
    if not Path(python).is_file() or not os.access(python, os.X_OK):
        raise SpecKittyNotFound(f"python {python} is not an executable file")
    found = release_from_files(python)
    if found is not None:
        return found[0]
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

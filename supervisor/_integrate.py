"""``spec-kitty-supervisor integrate``: bring the supervisor into a released spec-kitty's path.

Two files go into the site-packages of spec-kitty's own interpreter, and nothing else changes:

- ``spec_kitty_supervisor_hook.py``: ``client/_wire.py`` verbatim, then the body of
  ``client/_hook.py``, then the command that starts this supervisor installation;
- ``spec_kitty_supervisor_hook.pth``: one line that registers a finder which imports that module
  only when one of the modules it patches (``PATCHED_MODULES``) is imported. It never raises
  and prints nothing, even when the module has been deleted.

The facts about the target interpreter are asked of that interpreter (one subprocess); the
decision what to write or refuse is :func:`plan`, pure; writing and removing are
:func:`apply` and :func:`remove`.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import spec_kitty_supervisor_client
from spec_kitty_supervisor_client._hook import HOOK_MARKER, PATCHED_MODULES

__all__ = [
    "HOOK_FILE",
    "HOOK_MODULE",
    "PTH_FILE",
    "SUPPORTED_RELEASES",
    "IntegrationRefused",
    "Interpreter",
    "Plan",
    "apply",
    "hook_source",
    "hook_state",
    "inspect_interpreter",
    "installed_command",
    "pth_line",
    "plan",
    "recorded_command",
    "remove",
    "supervisor_command_of_this_installation",
]

HOOK_MODULE = "spec_kitty_supervisor_hook"
HOOK_FILE = f"{HOOK_MODULE}.py"
PTH_FILE = f"{HOOK_MODULE}.pth"
#: 3.1.x has no hook points worth wrapping; 4.0 has no daemon.
SUPPORTED_RELEASES = ((3, 2, 0), (3, 2, 7))

_BODY_MARKER = "# ---- HOOK BODY"
_COMMAND_LINE = re.compile(r"^SUPERVISOR_COMMAND = (\(.*\))$", re.MULTILINE)

_INSPECT = """
import json, site, sys, sysconfig
try:
    from importlib.metadata import distribution
    found = distribution("spec-kitty-cli")
    version, location = found.version, str(found.locate_file(""))
except Exception:
    version = location = None
user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
print(json.dumps({
    "version": version, "location": location,
    "purelib": sysconfig.get_paths()["purelib"],
    "in_venv": sys.prefix != sys.base_prefix,
    "user_site": user_site,
}))
"""


class IntegrationRefused(Exception):
    """Raised when an interpreter must not be integrated; nothing was written."""


@dataclass(frozen=True)
class Interpreter:
    """What spec-kitty's interpreter says about itself."""

    python: str
    spec_kitty_version: str | None
    spec_kitty_location: Path | None
    purelib: Path
    in_venv: bool
    user_site: Path | None


@dataclass(frozen=True)
class Plan:
    """What ``integrate`` writes for one interpreter (``files``) and what is there now."""

    interpreter: Interpreter
    site_packages: Path
    files: dict[Path, str]
    current: dict[Path, str | None] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return any(self.current.get(path) != text for path, text in self.files.items())


def supervisor_command_of_this_installation() -> list[str]:
    """The absolute command that starts this supervisor installation.

    The console script next to this interpreter when there is one (what pipx and ``uv tool``
    install), else this interpreter with ``-m``.
    """
    script = Path(sys.executable).parent / "spec-kitty-supervisor"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "spec_kitty_supervisor"]


def hook_source(command: Sequence[str]) -> str:
    """The hook module: the wire verbatim, the hook's body, the recorded command."""
    client = Path(spec_kitty_supervisor_client.__file__).parent
    wire = (client / "_wire.py").read_text()
    hook = (client / "_hook.py").read_text()
    body = hook[hook.index("\n", hook.index(_BODY_MARKER)) + 1 :]
    return (
        f"{wire}\n\n"
        "# ---- the hook (spec_kitty_supervisor_client/_hook.py); above: _wire.py verbatim ----\n"
        f"{body}\n\n"
        "# ---- recorded by `spec-kitty-supervisor integrate` ----\n"
        f"SUPERVISOR_COMMAND = {tuple(command)!r}\n"
    )


def pth_line() -> str:
    """The ``.pth`` line: a finder that imports the hook only for the modules it patches.

    ``site`` executes a ``.pth`` line that starts with ``import``. Everything it does is inside
    a ``try``, and the finder swallows every failure (a deleted hook module included), so the
    line can neither raise nor print; it imports nothing at interpreter start.
    """
    program = (
        "try:\n"
        " class SpecKittySupervisorTrampoline:\n"
        "  spec_kitty_supervisor_trampoline = True\n"
        "  @staticmethod\n"
        "  def find_spec(name, path=None, target=None):\n"
        f"   if name not in {tuple(sorted(PATCHED_MODULES))!r}:\n"
        "    return None\n"
        "   try:\n"
        f"    import {HOOK_MODULE}\n"
        f"    return {HOOK_MODULE}.HookFinder.find_spec(name, path, target)\n"
        "   except Exception:\n"
        "    return None\n"
        " sys.meta_path.insert(0, SpecKittySupervisorTrampoline)\n"
        "except Exception:\n"
        " pass\n"
    )
    return f"import sys; exec({program!r})\n"


def inspect_interpreter(python: str) -> Interpreter:
    """Ask ``python`` where it installs packages and which spec-kitty-cli it has."""
    if not os.path.isabs(python):
        raise IntegrationRefused(f"{python}: give the interpreter as an absolute path")
    if not Path(python).is_file():
        raise IntegrationRefused(f"{python} does not exist")
    try:
        result = subprocess.run(
            [python, "-E", "-c", _INSPECT],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "SPEC_KITTY_SUPERVISOR_DISABLE": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IntegrationRefused(f"could not run {python}: {exc}") from None
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [""])[-1]
        raise IntegrationRefused(f"{python} is not a working Python interpreter: {last_line}")
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    return Interpreter(
        python=python,
        spec_kitty_version=facts["version"],
        spec_kitty_location=None if facts["location"] is None else Path(facts["location"]),
        purelib=Path(facts["purelib"]),
        in_venv=bool(facts["in_venv"]),
        user_site=None if facts["user_site"] is None else Path(facts["user_site"]),
    )


def _release(version: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)((?:\.\d+)*)", version)
    if match is None:
        return None  # a pre-release or local version: not one of the published 3.2.x
    return tuple(int(part) for part in version.split("."))


def recorded_command(hook_text: str) -> tuple[str, ...] | None:
    """The supervisor command an installed hook records, or None if it is not our hook."""
    match = _COMMAND_LINE.search(hook_text)
    if match is None:
        return None
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, tuple) or not all(isinstance(part, str) for part in value):
        return None
    return value


def installed_command(site_packages: Path) -> tuple[str, ...] | None:
    """The command recorded by the hook installed in ``site_packages``, if any."""
    try:
        return recorded_command((site_packages / HOOK_FILE).read_text())
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def plan(interpreter: Interpreter, command: Sequence[str], *, force: bool = False) -> Plan:
    """What to write into ``interpreter``'s site-packages, or :class:`IntegrationRefused`."""
    python = interpreter.python
    if interpreter.spec_kitty_version is None or interpreter.spec_kitty_location is None:
        raise IntegrationRefused(f"{python} has no spec-kitty-cli installed")
    release = _release(interpreter.spec_kitty_version)
    low, high = SUPPORTED_RELEASES
    if release is None or not low <= release[:3] <= high:
        raise IntegrationRefused(
            f"{python} has spec-kitty-cli {interpreter.spec_kitty_version}; only 3.2.0 to 3.2.7 "
            "can be integrated (3.1.x has no lifecycle worth wrapping, 4.0 has no sync daemon)"
        )
    site_packages = interpreter.spec_kitty_location
    if not force:
        if interpreter.user_site is not None and site_packages == interpreter.user_site:
            raise IntegrationRefused(
                f"spec-kitty-cli of {python} is in the user site-packages {site_packages}: every "
                "Python program of this user would load the hook's .pth line; install spec-kitty "
                "with pipx or `uv tool`, or pass --force"
            )
        if not interpreter.in_venv:
            raise IntegrationRefused(
                f"{python} is a system interpreter ({site_packages} is shared by every program "
                "that uses it); install spec-kitty with pipx or `uv tool`, or pass --force"
            )
    info = site_packages.stat()
    if info.st_uid != os.getuid():
        raise IntegrationRefused(
            f"{site_packages} belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
        )
    if info.st_mode & 0o022:
        raise IntegrationRefused(
            f"{site_packages} is writable by group or others (mode {info.st_mode & 0o777:04o})"
        )
    existing = installed_command(site_packages)
    hook_exists = (site_packages / HOOK_FILE).exists()
    if hook_exists and existing != tuple(command) and not force:
        recorded = "an unreadable command" if existing is None else " ".join(existing)
        raise IntegrationRefused(
            f"{site_packages} already holds the integration of another supervisor installation "
            f"({recorded}); remove it with that installation's `integrate --remove`, or pass "
            "--force to replace it"
        )
    files = {
        site_packages / HOOK_FILE: hook_source(command),
        site_packages / PTH_FILE: pth_line(),
    }
    return Plan(
        interpreter=interpreter,
        site_packages=site_packages,
        files=files,
        current={path: _read(path) for path in files},
    )


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def apply(integration: Plan) -> list[Path]:
    """Write the files that differ (each atomically); the paths written."""
    written = []
    for path, text in integration.files.items():
        if integration.current.get(path) != text:
            _write_atomically(path, text)
            written.append(path)
    return written


def remove(site_packages: Path) -> list[Path]:
    """Delete exactly the two files and their ``__pycache__`` entries; the paths deleted."""
    candidates = [site_packages / HOOK_FILE, site_packages / PTH_FILE]
    cache = site_packages / "__pycache__"
    if cache.is_dir():
        candidates += sorted(cache.glob(f"{HOOK_MODULE}.*.pyc"))
    removed = []
    for path in candidates:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if any(path.parent == cache for path in removed):
        # Python made the folder to cache our module: leave the tree as it was before.
        with contextlib.suppress(OSError):
            cache.rmdir()  # only when empty
    return removed


# Imports each module the hook patches (the daemon module first) and merges their markers:
# None when the daemon module has none (no hook ran).
_PROBE = (
    "import importlib, json\n"
    "patched, unpatched, seen = [], [], None\n"
    f"for name in {tuple(PATCHED_MODULES)!r}:\n"
    f"    state = getattr(importlib.import_module(name), {HOOK_MARKER!r}, None)\n"
    "    if seen is None and state is None:\n"
    "        break\n"
    "    seen = True\n"
    "    if isinstance(state, dict):\n"
    "        patched += state.get('patched') or []\n"
    "        if state.get('unpatched'):\n"
    "            unpatched.append(name + ': ' + str(state['unpatched']))\n"
    "print(json.dumps(seen and {'patched': patched, 'unpatched': '; '.join(unpatched) or None}))\n"
)


def hook_state(python: str) -> dict[str, object] | None:
    """What the hook did when ``python`` imported the modules it patches (the daemon's first).

    ``{"patched": [...every wrapped name], "unpatched": None}`` when active; ``"unpatched"``
    names each module whose functions lacked the expected shape; None when no hook ran.
    The import runs spec-kitty's own module code (as every spec-kitty command does) and calls
    nothing.
    """
    try:
        result = subprocess.run(
            [python, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"patched": [], "unpatched": f"could not run {python}: {exc}"}
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [""])[-1]
        return {
            "patched": [],
            "unpatched": f"importing the modules the hook patches failed: {last_line}",
        }
    state = json.loads(result.stdout.strip().splitlines()[-1])
    return state if isinstance(state, dict) else None

"""Installing the supervisor as a user service, and checking what is installed.

The CLI's ``install-service`` / ``uninstall-service`` and ``doctor`` call these; the unit texts
come from :mod:`._units`, the runtime side (sd_notify, socket activation) from
:mod:`._sd_notify`. Planning is pure (:func:`plan_install`, :func:`enable_commands`); the only
writes are :func:`write_planned` and :func:`remove_installed`, and both touch nothing that lacks
our marker: a unit someone wrote by hand is theirs.

Nothing here runs ``systemctl`` or ``launchctl``: the commands are printed for the user, who
may be on a machine without a user bus (ssh, containers) or want to read them first.

```
ForeignUnitFileError (FileExistsError)    a file we would write exists and was not written by us
UnsupportedPlatformError (RuntimeError)   no user service manager we know (neither Linux nor macOS)
```
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from spec_kitty_supervisor_client import DoctorFinding

from ._files import atomic_write
from ._units import (
    ServiceNames,
    carries_marker,
    is_default_root,
    render_launchd_plist,
    render_systemd_service,
    render_systemd_socket,
    service_command,
    service_names,
)

__all__ = [
    "ForeignUnitFileError",
    "PlannedFile",
    "RemovalResult",
    "ServicePlatform",
    "UnsupportedPlatformError",
    "check_installed_units",
    "current_platform",
    "default_exec_path",
    "disable_commands",
    "enable_commands",
    "linger_enabled",
    "plan_install",
    "remove_installed",
    "unit_directory",
    "write_planned",
]

ServicePlatform = Literal["linux", "darwin"]

_CONSOLE_SCRIPT = "spec-kitty-supervisor"
_LINGER_DIR = Path("/var/lib/systemd/linger")


class ForeignUnitFileError(FileExistsError):
    """Raised when a unit file we would write exists and was not written by install-service."""


class UnsupportedPlatformError(RuntimeError):
    """Raised on a system with neither systemd user units nor launchd agents."""


class PlannedFile(NamedTuple):
    """One file install-service writes: where, what, and with which permission bits."""

    path: Path
    content: bytes
    mode: int = 0o644


class RemovalResult(NamedTuple):
    """What :func:`remove_installed` did: files it removed, files it left because not ours."""

    removed: list[Path]
    foreign: list[Path]


def current_platform(system: str = sys.platform) -> ServicePlatform:
    """``"linux"`` (systemd user units) or ``"darwin"`` (launchd agents) for ``sys.platform``."""
    if system.startswith("linux"):
        return "linux"
    if system == "darwin":
        return "darwin"
    raise UnsupportedPlatformError(
        f"no user service manager is supported on {system}; "
        "the CLI starts the supervisor on demand instead"
    )


def default_exec_path() -> str:
    """The ``spec-kitty-supervisor`` console script of the running installation.

    The one next to the running interpreter first (the same venv, even when another
    installation comes first on ``PATH``), else the one on ``PATH``.
    """
    sibling = Path(sys.executable).parent / _CONSOLE_SCRIPT
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(_CONSOLE_SCRIPT)
    if found is not None:
        return str(Path(found).absolute())
    raise FileNotFoundError(
        f"cannot find the {_CONSOLE_SCRIPT} executable next to {sys.executable} or on PATH"
    )


def unit_directory(
    platform: ServicePlatform, home: Path, environ: Mapping[str, str] | None = None
) -> Path:
    """Where the units go: ``$XDG_CONFIG_HOME/systemd/user`` or ``~/Library/LaunchAgents``."""
    if platform == "darwin":
        return home / "Library" / "LaunchAgents"
    env = os.environ if environ is None else environ
    config_home = env.get("XDG_CONFIG_HOME", "")
    # The XDG base directory spec ignores a relative value, and so does systemd.
    base = Path(config_home) if config_home.startswith("/") else home / ".config"
    return base / "systemd" / "user"


def plan_install(
    platform: ServicePlatform,
    exec_path: str,
    root: Path,
    home: Path,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[PlannedFile]:
    """The files that make ``root``'s supervisor a user service running ``exec_path``."""
    names = service_names(root, home)
    directory = unit_directory(platform, home, environ)
    if platform == "darwin":
        logs = home / "Library" / "Logs"
        plist = render_launchd_plist(
            service_command(exec_path, root),
            root,
            stdout_path=logs / f"{names.launchd_label}.out.log",
            stderr_path=logs / f"{names.launchd_label}.err.log",
            home=home,
        )
        return [PlannedFile(directory / names.launchd_plist, plist)]
    return [
        PlannedFile(
            directory / names.systemd_service,
            render_systemd_service(exec_path, root, home=home).encode(),
        ),
        PlannedFile(
            directory / names.systemd_socket, render_systemd_socket(root, home=home).encode()
        ),
    ]


def enable_commands(
    platform: ServicePlatform,
    root: Path,
    home: Path,
    *,
    user: str | None = None,
    uid: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The commands that start the installed service now and at every login, to print.

    On Linux the last one, ``loginctl enable-linger``, keeps it (and the daemons) running
    while the user is logged out; it is a suggestion, not a requirement.
    """
    names = service_names(root, home)
    if platform == "darwin":
        plist = unit_directory(platform, home, environ) / names.launchd_plist
        return [shlex.join(["launchctl", "bootstrap", _gui_domain(uid), str(plist)])]
    return [
        "systemctl --user daemon-reload",
        shlex.join(["systemctl", "--user", "enable", "--now", names.systemd_socket]),
        shlex.join(["loginctl", "enable-linger", user or _user_name()]),
    ]


def disable_commands(
    platform: ServicePlatform, root: Path, home: Path, *, uid: int | None = None
) -> list[str]:
    """The commands that stop the service and forget it, to run before the files are removed.

    Stopping the supervisor leaves its sync daemons running; the CLI's next supervisor adopts them.
    """
    names = service_names(root, home)
    if platform == "darwin":
        return [shlex.join(["launchctl", "bootout", f"{_gui_domain(uid)}/{names.launchd_label}"])]
    return [
        shlex.join(
            ["systemctl", "--user", "disable", "--now", names.systemd_socket, names.systemd_service]
        ),
        "systemctl --user daemon-reload",
    ]


def write_planned(files: Sequence[PlannedFile], *, force: bool = False) -> list[Path]:
    """Write the planned files atomically; return the ones whose content changed.

    Raises :class:`ForeignUnitFileError` before writing anything when a target exists without
    our marker, unless ``force``.
    """
    if not force:
        for planned in files:
            if planned.path.exists() and not carries_marker(planned.path.read_bytes()):
                raise ForeignUnitFileError(
                    f"{planned.path} exists and was not written by spec-kitty-supervisor; "
                    "move it away, or use --force to replace it"
                )
    written = []
    for planned in files:
        if _already_written(planned):
            continue
        planned.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(planned.path, planned.content, planned.mode)
        written.append(planned.path)
    return written


def remove_installed(
    platform: ServicePlatform,
    root: Path,
    home: Path,
    *,
    environ: Mapping[str, str] | None = None,
) -> RemovalResult:
    """Remove ``root``'s unit files that carry our marker; leave any other file where it is."""
    removed: list[Path] = []
    foreign: list[Path] = []
    for path in _unit_paths(platform, root, home, environ):
        try:
            ours = carries_marker(path.read_bytes())
        except FileNotFoundError:
            continue
        if ours:
            path.unlink(missing_ok=True)
            removed.append(path)
        else:
            foreign.append(path)
    return RemovalResult(removed=removed, foreign=foreign)


def linger_enabled(user: str, *, linger_dir: Path = _LINGER_DIR) -> bool | None:
    """Whether systemd keeps ``user``'s services running while they are logged out.

    logind records lingering as a file named after the user; when there is none, ask
    ``loginctl``. ``None`` when neither can tell (no logind, e.g. in a container).
    """
    if (linger_dir / user).exists():
        return True
    try:
        answer = subprocess.run(
            ["loginctl", "show-user", user, "--property=Linger", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        answer = None
    if answer is not None and answer.returncode == 0:
        return answer.stdout.strip() == "yes"
    # loginctl knows no such user when it is neither logged in nor lingering.
    return False if linger_dir.is_dir() else None


def check_installed_units(
    platform: ServicePlatform,
    exec_path: str,
    root: Path,
    home: Path,
    *,
    user: str | None = None,
    uid: int | None = None,
    environ: Mapping[str, str] | None = None,
    linger: Callable[[str], bool | None] = linger_enabled,
) -> list[DoctorFinding]:
    """What ``doctor`` reports about ``root``'s service units, each finding with its fix.

    ``exec_path`` is the supervisor running now (:func:`default_exec_path`): an installed unit
    that runs another one keeps starting an old (or vanished) installation.
    """
    planned = plan_install(platform, exec_path, root, home, environ=environ)
    names = service_names(root, home)
    install = _cli_command(root, home, "install-service")
    if not any(p.path.exists() for p in planned):
        return [
            DoctorFinding(
                severity="info",
                code="service_not_installed",
                message=f"no user service is installed for {root}; "
                "the CLI starts the supervisor on demand",
                remediation=f"`{install}` to run it as a service (optional)",
            )
        ]
    reload_hint = _reload_hint(platform, names, planned[0].path, uid)
    findings = []
    for file in planned:
        if not file.path.exists():
            findings.append(
                DoctorFinding(
                    severity="warning",
                    code="service_partially_installed",
                    message=f"{file.path} is missing: the service is only partly installed",
                    remediation=f"`{install}`, then {reload_hint}",
                )
            )
            continue
        installed = file.path.read_bytes()
        if not carries_marker(installed):
            findings.append(
                DoctorFinding(
                    severity="warning",
                    code="service_unit_foreign",
                    message=f"{file.path} was not written by spec-kitty-supervisor; "
                    "it is left as it is",
                    remediation=f"check it by hand, or replace it with `{install} --force`",
                )
            )
            continue
        if installed == file.content:
            continue
        installed_exec = _installed_program(file.path, installed)
        if installed_exec is not None and installed_exec != exec_path:
            missing = not os.access(installed_exec, os.X_OK)
            findings.append(
                DoctorFinding(
                    severity="error" if missing else "warning",
                    code="service_exec_missing" if missing else "service_exec_mismatch",
                    message=(
                        f"{file.path} runs {installed_exec}, "
                        + ("which no longer exists" if missing else "not this supervisor")
                        + f" ({exec_path})"
                    ),
                    remediation=f"`{install}`, then {reload_hint}",
                )
            )
        else:
            findings.append(
                DoctorFinding(
                    severity="info",
                    code="service_unit_outdated",
                    message=f"{file.path} differs from what this version would write",
                    remediation=f"`{install}`, then {reload_hint}",
                )
            )
    if platform == "linux":
        user = user or _user_name()
        lingering = linger(user)
        if lingering is False:
            findings.append(
                DoctorFinding(
                    severity="warning",
                    code="linger_disabled",
                    message=f"lingering is off for {user}: systemd stops the supervisor when "
                    "your last session ends",
                    remediation=shlex.join(["loginctl", "enable-linger", user]),
                )
            )
        elif lingering is None:
            findings.append(
                DoctorFinding(
                    severity="info",
                    code="linger_unknown",
                    message="cannot tell whether lingering is enabled (no logind answered)",
                    remediation=shlex.join(["loginctl", "show-user", user, "--property=Linger"]),
                )
            )
    return findings


def _unit_paths(
    platform: ServicePlatform, root: Path, home: Path, environ: Mapping[str, str] | None
) -> list[Path]:
    names = service_names(root, home)
    directory = unit_directory(platform, home, environ)
    if platform == "darwin":
        return [directory / names.launchd_plist]
    return [directory / names.systemd_service, directory / names.systemd_socket]


def _already_written(planned: PlannedFile) -> bool:
    try:
        return (
            planned.path.read_bytes() == planned.content
            and planned.path.stat().st_mode & 0o7777 == planned.mode
        )
    except FileNotFoundError:
        return False


def _installed_program(path: Path, content: bytes) -> str | None:
    """The program an installed unit runs, or ``None`` for a unit that runs nothing."""
    if path.suffix == ".plist":
        import plistlib  # only for an installed LaunchAgent: doctor's usual look needs none

        try:
            arguments = plistlib.loads(content).get("ProgramArguments") or [None]
        except Exception:  # a damaged plist names no program; the caller reports "outdated"
            return None
        return arguments[0] if isinstance(arguments[0], str) else None
    for line in content.decode(errors="replace").splitlines():
        if line.startswith("ExecStart="):
            try:
                words = shlex.split(line.removeprefix("ExecStart="))
            except ValueError:
                return None
            # Undo the unit-file escapes _units writes: %% for %, $$ for $.
            return words[0].replace("%%", "%").replace("$$", "$") if words else None
    return None


def _user_name() -> str:
    import getpass  # with termios and pwd: only once a unit is installed

    return getpass.getuser()


def _gui_domain(uid: int | None) -> str:
    return f"gui/{os.getuid() if uid is None else uid}"


def _cli_command(root: Path, home: Path, command: str) -> str:
    words = [_CONSOLE_SCRIPT, command]
    if not is_default_root(root, home):
        words += ["--root", str(root)]
    return shlex.join(words)


def _reload_hint(
    platform: ServicePlatform, names: ServiceNames, path: Path, uid: int | None
) -> str:
    if platform == "darwin":
        domain = _gui_domain(uid)
        return (
            f"`launchctl bootout {domain}/{names.launchd_label}; "
            f"{shlex.join(['launchctl', 'bootstrap', domain, str(path)])}`"
        )
    return (
        "`systemctl --user daemon-reload && "
        f"{shlex.join(['systemctl', '--user', 'restart', names.systemd_service])}`"
    )

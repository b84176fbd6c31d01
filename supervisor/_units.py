"""The supervisor's service units, rendered as text: systemd user units and a launchd agent.

Rendering is pure: no unit file is read or written here (except by :func:`write_examples`, which
refreshes the committed examples).

One daemon root gets one service. The default root (``~/.spec-kitty``) gets the plain names
``spec-kitty-supervisor.service`` / ``.socket`` and the label ``dev.spec-kitty.supervisor``; any
other root gets the same names with a suffix of 12 hex digits of the SHA-256 of the root's
resolved path (``spec-kitty-supervisor-<digest>``), so two roots never share a unit and a root
maps to the same one however it is spelled. Pass roots as ``resolve_daemon_root`` returns them.

Every rendered file carries :data:`UNIT_MARKER` near its top (line 1 of a unit, line 2 of the
plist: XML allows nothing before its declaration); install and removal touch only files with it.

```
InvalidPlistError (ValueError)   a LaunchAgent plist does not parse or lacks a key launchd needs
```
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from spec_kitty_supervisor_client import socket_path_for_root

from ._sd_notify import CONTROL_FD_NAME

__all__ = [
    "EXAMPLE_EXEC_PATH",
    "UNIT_MARKER",
    "InvalidPlistError",
    "ServiceNames",
    "carries_marker",
    "example_units",
    "is_default_root",
    "render_launchd_plist",
    "render_systemd_service",
    "render_systemd_socket",
    "service_command",
    "service_names",
    "validate_plist",
    "write_examples",
]

#: The first words of every file we write; its absence means "not ours, do not overwrite".
UNIT_MARKER: Final = "Written by spec-kitty-supervisor install-service"

_UNIT_MARKER_LINE: Final = f"# {UNIT_MARKER}; `spec-kitty-supervisor uninstall-service` removes it."
_UNIT_STEM: Final = "spec-kitty-supervisor"
_LAUNCHD_LABEL: Final = "dev.spec-kitty.supervisor"

#: systemd's defaults are 5 starts in 10 s; a supervisor that fails 5 times in 5 minutes is
#: broken, and restarting it forever would only hide that.
_START_LIMIT_INTERVAL_SEC: Final = 300
_START_LIMIT_BURST: Final = 5
_RESTART_SEC: Final = 2
#: The supervisor pings every half of this (:meth:`Notifier.watchdog_interval`).
_WATCHDOG_SEC: Final = 60
#: launchd waits at least this long between two starts of the job.
_THROTTLE_INTERVAL: Final = 10

# Words systemd takes literally outside quotes: no specifier (%), variable ($), quote,
# backslash, whitespace or command separator (;).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_UNRUNNABLE_PROGRAM = re.compile(r"[\"'\\]")


class ServiceNames(NamedTuple):
    """What a root's service is called by systemd and by launchd."""

    unit_stem: str
    launchd_label: str

    @property
    def systemd_service(self) -> str:
        return f"{self.unit_stem}.service"

    @property
    def systemd_socket(self) -> str:
        return f"{self.unit_stem}.socket"

    @property
    def launchd_plist(self) -> str:
        return f"{self.launchd_label}.plist"


def is_default_root(root: Path, home: Path) -> bool:
    """Whether ``root`` is ``home/.spec-kitty``, the root every spec-kitty version serves."""
    return root.resolve() == (home / ".spec-kitty").resolve()


def service_names(root: Path, home: Path) -> ServiceNames:
    """The unit names and launchd label of ``root``'s service (see the module docstring)."""
    if is_default_root(root, home):
        return ServiceNames(_UNIT_STEM, _LAUNCHD_LABEL)
    # Stable forever: an installed unit is found again by this name.
    digest = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:12]
    return ServiceNames(f"{_UNIT_STEM}-{digest}", f"{_LAUNCHD_LABEL}.{digest}")


def service_command(exec_path: str, root: Path) -> list[str]:
    """The command a service manager runs: ``<exec_path> run --root <root> --service``.

    ``exec_path`` is the ``spec-kitty-supervisor`` console script. The supervisor's own argv
    never contains ``run_sync_daemon``: upstream tools would take it for a sync daemon.
    """
    _require_absolute(exec_path, "the supervisor executable")
    _require_absolute(str(root), "the daemon root")
    return [exec_path, "run", "--root", str(root), "--service"]


def render_systemd_service(exec_path: str, root: Path, *, home: Path | None = None) -> str:
    """The ``.service`` unit that runs the supervisor of ``root`` (``Type=notify``, watchdog)."""
    home = Path.home() if home is None else home
    _reject_control_characters(str(root))
    names = service_names(root, home)
    program, *arguments = service_command(exec_path, root)
    if _UNRUNNABLE_PROGRAM.search(program):
        # systemd refuses such an ExecStart ("Executable name contains special characters").
        raise ValueError(
            f"systemd cannot run an executable whose path contains quotes or backslashes: "
            f"{program!r}; install spec-kitty-supervisor at another path"
        )
    command = " ".join(
        [_systemd_exec_word(program, program=True)]
        + [_systemd_exec_word(argument) for argument in arguments]
    )
    environment = (
        []
        if is_default_root(root, home)
        else [f"Environment={_systemd_quoted(f'SPEC_KITTY_HOME={root}')}"]
    )
    lines = [
        _UNIT_MARKER_LINE,
        "[Unit]",
        f"Description=spec-kitty sync daemon supervisor for {_specifier_escaped(str(root))}",
        f"Requires={names.systemd_socket}",
        f"After={names.systemd_socket}",
        f"# Failing {_START_LIMIT_BURST} times in {_START_LIMIT_INTERVAL_SEC} s means broken;"
        " restarting forever would hide it.",
        f"StartLimitIntervalSec={_START_LIMIT_INTERVAL_SEC}",
        f"StartLimitBurst={_START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        *environment,
        f"# The supervisor sends WATCHDOG=1 every {_WATCHDOG_SEC // 2} s; a hung one is restarted.",
        f"WatchdogSec={_WATCHDOG_SEC}",
        "Restart=on-failure",
        f"RestartSec={_RESTART_SEC}",
        "# Stop and restart only the supervisor itself. The sync daemons it spawned live in",
        "# this unit's cgroup but must outlive a supervisor restart: the next supervisor",
        "# re-adopts them after proving who they are, and their queued events go on uploading.",
        "KillMode=process",
        "",
        "[Install]",
        f"Also={names.systemd_socket}",
    ]
    return "\n".join(lines) + "\n"


def render_systemd_socket(root: Path, *, home: Path | None = None) -> str:
    """The ``.socket`` unit: holds ``root``'s control socket, starts the supervisor on use."""
    home = Path.home() if home is None else home
    _reject_control_characters(str(root))
    names = service_names(root, home)
    lines = [
        _UNIT_MARKER_LINE,
        "[Unit]",
        f"Description=spec-kitty supervisor control socket for {_specifier_escaped(str(root))}",
        "",
        "[Socket]",
        f"ListenStream={_specifier_escaped(str(socket_path_for_root(root)))}",
        "# The control API trusts its peers only because no one else can connect.",
        "SocketMode=0600",
        "DirectoryMode=0700",
        f"FileDescriptorName={CONTROL_FD_NAME}",
        f"Service={names.systemd_service}",
        "",
        "[Install]",
        "WantedBy=sockets.target",
    ]
    return "\n".join(lines) + "\n"


def render_launchd_plist(
    program_arguments: Sequence[str],
    root: Path,
    *,
    stdout_path: Path,
    stderr_path: Path,
    home: Path | None = None,
) -> bytes:
    """The LaunchAgent that keeps ``root``'s supervisor running (``program_arguments`` from
    :func:`service_command`).

    launchd restarts it after a failure but not after a clean exit (a hand-over to a newer
    supervisor exits 0). ``AbandonProcessGroup`` is belt and braces: sync daemons already run in
    their own session, so launchd's clean-up of the job's process group never reaches them.
    """
    home = Path.home() if home is None else home
    for value in (str(root), *program_arguments):
        _reject_control_characters(value)
    names = service_names(root, home)
    job: dict[str, Any] = {
        "Label": names.launchd_label,
        "ProgramArguments": list(program_arguments),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": _THROTTLE_INTERVAL,
        "ProcessType": "Background",
        "AbandonProcessGroup": True,
        "StandardOutPath": str(stdout_path),
        "StandardErrorPath": str(stderr_path),
    }
    if not is_default_root(root, home):
        job["EnvironmentVariables"] = {"SPEC_KITTY_HOME": str(root)}
    import plistlib  # launchd's alone: on Linux, doctor's look at the units never needs it

    declaration, rest = plistlib.dumps(job, sort_keys=False).split(b"\n", 1)
    # "--" may not appear inside an XML comment; the marker has none.
    return declaration + f"\n<!-- {UNIT_MARKER} -->\n".encode() + rest


class InvalidPlistError(ValueError):
    """Raised when a LaunchAgent plist does not parse or lacks a key launchd needs."""


_PLIST_KEY_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "Label": str,
    "ProgramArguments": list,
    "RunAtLoad": bool,
    "KeepAlive": (bool, dict),
    "ThrottleInterval": int,
    "ProcessType": str,
    "StandardOutPath": str,
    "StandardErrorPath": str,
}
_PLIST_OPTIONAL_KEY_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "EnvironmentVariables": dict,
    "AbandonProcessGroup": bool,
}


def validate_plist(data: bytes) -> dict[str, Any]:
    """Parse a LaunchAgent plist, check it survives a round trip and has launchd's keys.

    Returns the parsed job. Raises :class:`InvalidPlistError` naming the first problem found.
    """
    import plistlib

    try:
        job = plistlib.loads(data, fmt=plistlib.FMT_XML)
    except Exception as exc:  # plistlib raises ExpatError, ValueError, ... depending on the flaw
        raise InvalidPlistError(f"not an XML property list: {exc}") from exc
    if not isinstance(job, dict):
        raise InvalidPlistError(f"the top level is a {type(job).__name__}, not a dict")
    if plistlib.loads(plistlib.dumps(job)) != job:
        raise InvalidPlistError("the property list does not survive a round trip")
    for key, expected in _PLIST_KEY_TYPES.items():
        if key not in job:
            raise InvalidPlistError(f"missing key {key}")
        _check_type(key, job[key], expected)
    for key, expected in _PLIST_OPTIONAL_KEY_TYPES.items():
        if key in job:
            _check_type(key, job[key], expected)
    arguments = job["ProgramArguments"]
    if not arguments or not all(isinstance(arg, str) for arg in arguments):
        raise InvalidPlistError("ProgramArguments must be a non-empty list of strings")
    if not arguments[0].startswith("/"):
        raise InvalidPlistError("ProgramArguments[0] must be an absolute path")
    environment = job.get("EnvironmentVariables", {})
    if not all(isinstance(v, str) for v in environment.values()):
        raise InvalidPlistError("EnvironmentVariables values must be strings")
    return job


def carries_marker(data: bytes) -> bool:
    """Whether a file's head carries :data:`UNIT_MARKER`, i.e. install-service wrote it."""
    return UNIT_MARKER.encode() in data[:512]


#: The placeholders the committed examples in ``systemd/`` and ``launchd/`` are rendered with.
EXAMPLE_EXEC_PATH: Final = "/usr/local/bin/spec-kitty-supervisor"
_EXAMPLE_LINUX_HOME: Final = Path("/home/USER")
_EXAMPLE_MACOS_HOME: Final = Path("/Users/USER")


def example_units() -> dict[str, bytes]:
    """The committed example files: path relative to the repository top -> content."""
    linux_root = _EXAMPLE_LINUX_HOME / ".spec-kitty"
    macos_root = _EXAMPLE_MACOS_HOME / ".spec-kitty"
    label = service_names(macos_root, _EXAMPLE_MACOS_HOME).launchd_label
    logs = _EXAMPLE_MACOS_HOME / "Library" / "Logs"
    return {
        "systemd/spec-kitty-supervisor.service": render_systemd_service(
            EXAMPLE_EXEC_PATH, linux_root, home=_EXAMPLE_LINUX_HOME
        ).encode(),
        "systemd/spec-kitty-supervisor.socket": render_systemd_socket(
            linux_root, home=_EXAMPLE_LINUX_HOME
        ).encode(),
        f"launchd/{label}.plist": render_launchd_plist(
            service_command(EXAMPLE_EXEC_PATH, macos_root),
            macos_root,
            stdout_path=logs / f"{label}.out.log",
            stderr_path=logs / f"{label}.err.log",
            home=_EXAMPLE_MACOS_HOME,
        ),
    }


def write_examples(top: str | os.PathLike[str]) -> None:
    """Rewrite the committed examples under ``top`` after a deliberate change to the renderers::

    .venv/bin/python -c "from spec_kitty_supervisor._units import write_examples as w; w('.')"
    """
    for relative, content in example_units().items():
        (Path(top) / relative).write_bytes(content)


def _check_type(key: str, value: object, expected: type | tuple[type, ...]) -> None:
    # bool is an int in Python, but not in a plist: <true/> is no <integer>.
    if isinstance(value, bool) and expected is int:
        raise InvalidPlistError(f"{key} must be an integer, not a boolean")
    if not isinstance(value, expected):
        raise InvalidPlistError(f"{key} has type {type(value).__name__}")


def _require_absolute(path: str, what: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {path!r}")


def _reject_control_characters(value: str) -> None:
    # A newline would end a unit line and let the rest be read as a directive of its own;
    # XML 1.0 cannot carry most control characters at all.
    if _CONTROL_CHARACTER.search(value):
        raise ValueError(f"{value!r} contains a control character; a unit file cannot hold it")


def _specifier_escaped(value: str) -> str:
    _reject_control_characters(value)
    return value.replace("%", "%%")


def _systemd_quoted(value: str) -> str:
    # systemd.syntax(7) quoting: C-style escapes inside double quotes.
    escaped = _specifier_escaped(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _systemd_exec_word(word: str, *, program: bool = False) -> str:
    if _PLAIN_WORD.fullmatch(word):
        return word
    quoted = _systemd_quoted(word)
    # Arguments also expand $VAR, "$$" being a literal dollar; the program path does not
    # (systemd-analyze verify then looks for a file named with "$$").
    return quoted if program else quoted.replace("$", "$$")

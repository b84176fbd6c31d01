"""The first moments of ``run``: take the root, bind its socket, serve it; nothing heavy yet.

A plain ``run --root R`` (what a client's auto-start runs) takes the root's lock, binds the
control socket and answers it from the standard library (:mod:`._starting`) before anything
else is imported, not even the early spawn's modules (:mod:`._early_spawn`, which follows):
the sooner the socket is served, the sooner a client knows a supervisor is there, and the
imports of the serving stack (pydantic, structlog, anyio and asyncio) are most of a start
(docs/adr/0015). This module imports only the standard library and the lightest of ours;
``tests/unit/test_lazy_imports.py`` pins what it must not import.

:func:`first_stage_invocation` is the pure decision (which command lines and environments);
:func:`take_root` does it. Anything unusual means no first stage and the runner's own start,
unchanged: flags, ``--service``, ``--takeover``, a service manager, a ``config.toml``, a
setting this stage cannot judge without pydantic, the root's lock held by another supervisor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from spec_kitty_supervisor_client._errors import SupervisorError
from spec_kitty_supervisor_client._paths import resolve_daemon_root
from spec_kitty_supervisor_client._terms import family_sub_range_error

from . import __version__
from ._control_socket import SocketTaken, bind_control_socket
from ._fd_limit import FdLimits, raise_fd_limit
from ._layout import RootLayout
from ._lock import SupervisorLock
from ._starting import StartingServer, health_body

__all__ = [
    "ENV_PREFIX",
    "SERVICE_VARIABLES",
    "SETTING_FIELDS",
    "FirstStage",
    "TakenRoot",
    "first_stage_invocation",
    "setting_refused",
    "take_root",
]

#: What the service managers set (``_runner._under_service_manager``, ``_sd_notify``).
SERVICE_VARIABLES = ("NOTIFY_SOCKET", "INVOCATION_ID", "LISTEN_FDS", "LISTEN_PID")
ENV_PREFIX = "SPEC_KITTY_SUPERVISOR_"
#: Each setting's field, and what the first stage accepts of it without pydantic: only values
#: that ``Settings`` certainly accepts (``tests/unit/test_early_spawn.py`` checks both
#: directions on generated values, and that every field of ``Settings`` is here).
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
_POSITIVE_SECONDS = frozenset(
    {
        "heartbeat_seconds",
        "health_timeout_seconds",
        "idle_retirement_seconds",
        "watchdog_seconds",
        "idle_exit_seconds",
        "sweep_seconds",
        "spawn_timeout_seconds",
        "stop_grace_seconds",
        "quarantine_window_seconds",
        "restart_backoff_seconds",
        "restart_backoff_max_seconds",
    }
)
_RANGES = frozenset({"port_range", "scan_range"})
_POLICIES = frozenset({"keep_newer", "latest_wins"})
SETTING_FIELDS = _POSITIVE_SECONDS | _RANGES | {"version_policy", "quarantine_deaths"}


def setting_refused(name: str, raw: str) -> bool:
    """Whether the first stage leaves ``SPEC_KITTY_SUPERVISOR_<NAME>=raw`` to the loader."""
    if name in _POSITIVE_SECONDS:
        return _DECIMAL.fullmatch(raw) is None or float(raw) <= 0
    if name in _RANGES:
        low, sep, high = raw.partition("-")
        if not (sep and _ascii_digits(low) and _ascii_digits(high)):
            return True
        if len(low) >= 6 or len(high) >= 6:
            return True
        return family_sub_range_error(int(low), int(high)) is not None
    if name == "version_policy":
        return raw not in _POLICIES
    if name == "quarantine_deaths":
        return not (_ascii_digits(raw) and len(raw) < 10 and int(raw) >= 1)
    return False


def _ascii_digits(text: str) -> bool:
    """Only 0-9: ``str.isdigit`` is true of "²" too, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


class FirstStage:
    """A ``run`` whose first stage may take the root ``root`` and serve its socket."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FirstStage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"FirstStage({self.root!r})"


def first_stage_invocation(argv: Sequence[str], environ: Mapping[str, str]) -> FirstStage | str:
    """Whether the first stage may take the root and serve its socket, or why not. Pure.

    Only a plain ``run --root R`` (an auto-start's, or the same by hand) outside any service
    manager, with settings in the environment that the settings model certainly accepts: a
    supervisor that answers health while it starts must not be one that then refuses its
    settings. Everything else (flags, ``--service``, ``--takeover``, systemd's socket
    activation, launchd) starts as before: the runner binds the socket after the imports.
    """
    if len(argv) not in (3, 4) or tuple(argv[:2]) != ("run", "--root"):
        return "not a plain `run --root R` command line"
    if len(argv) == 4 and argv[3] != "--auto-started":
        return "not a plain `run --root R` command line"
    if argv[2].startswith("-"):
        return "not a plain `run --root R` command line"
    for name in SERVICE_VARIABLES:
        if name in environ:
            return f"under a service manager ({name} is set)"
    if environ.get("XPC_SERVICE_NAME", "0") != "0":
        return "under a service manager (XPC_SERVICE_NAME is set)"
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or raw == "":
            continue
        setting = name[len(ENV_PREFIX) :].lower()
        if setting in SETTING_FIELDS and setting_refused(setting, raw):
            return f"{name}={raw!r} is left to the settings loader"
    return FirstStage(argv[2])


class TakenRoot:
    """What :func:`take_root` holds: the root's lock, and the socket it serves (None when the
    bind was refused: the runner meets the same refusal and says it)."""

    __slots__ = ("fd_limits", "layout", "lock", "prepared", "starting", "user_umask")

    def __init__(
        self,
        layout: RootLayout,
        *,
        user_umask: int,
        fd_limits: FdLimits,
        prepared: list[str],
        lock: SupervisorLock,
        starting: StartingServer | None,
    ) -> None:
        self.layout = layout
        self.user_umask = user_umask
        self.fd_limits = fd_limits
        self.prepared = prepared
        self.lock = lock
        self.starting = starting


def take_root(argv: Sequence[str], environ: Mapping[str, str]) -> TakenRoot | str:
    """Take the root and serve its socket; or why not, having changed nothing (the umask
    included)."""
    stage = first_stage_invocation(argv, environ)
    if isinstance(stage, str):
        return stage
    try:
        # As `run` derives it: a root that is a file, goes through a dangling link or is
        # another user's is refused before anything is created (the runner says why).
        layout = RootLayout(resolve_daemon_root(stage.root))
    except (SupervisorError, OSError):
        return "the root is refused (the normal start says why)"
    if os.path.lexists(layout.config):
        return "R/supervisor/config.toml is read by the settings loader only"
    user_umask = os.umask(0o077)  # as run_supervisor does first
    lock = SupervisorLock(layout.lock)
    try:
        prepared = layout.prepare()
        taken = lock.try_acquire()
    except OSError:
        taken = False  # the normal start says what is wrong, with the fix
    if not taken:
        os.umask(user_umask)
        return "the root's lock is held by another supervisor, or could not be taken"
    fd_limits = raise_fd_limit()  # before anything is held open, and before any spawn
    try:
        listener = bind_control_socket(layout.socket)
    except (OSError, SocketTaken):
        starting = None
    else:
        health = health_body(os.getpid(), __version__, str(layout.daemon_root))
        starting = StartingServer(listener, layout.socket, health)
        starting.start()
    return TakenRoot(
        layout,
        user_umask=user_umask,
        fd_limits=fd_limits,
        prepared=prepared,
        lock=lock,
        starting=starting,
    )

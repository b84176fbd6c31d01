"""The ``spec-kitty-supervisor`` command line.

Exit codes: 0 ok; 1 the operation failed; 2 bad usage (or ``doctor`` itself failed); 3 no
supervisor runs where one is needed. ``--json`` prints exactly one JSON document, the API's own
model, so scripts read the same shape the socket serves.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from spec_kitty_supervisor_client._errors import (
    ProtocolMismatch,
    RequestFailed,
    SpawnFailed,
    SupervisorError,
    SupervisorUnavailable,
)

from . import __version__
from ._parsers import add_doctor_parser, add_integrate_parser, add_service_parsers

if TYPE_CHECKING:
    from pydantic import BaseModel

    from spec_kitty_supervisor_client import SupervisorClient

    from ._early_spawn import EarlyStart

# The commands that talk to a supervisor import the client (and through it pydantic and the
# protocol's models) when they run: ``doctor`` asks over the standard-library wire and must
# not pay for them, nor for structlog, before it knows whether it observes itself.

__all__ = ["EXIT_FAILED", "EXIT_NO_SUPERVISOR", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_SUPERVISOR = 3


def _print_json(model: BaseModel) -> None:
    print(model.model_dump_json(indent=2))


def _add_common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument(
        "--root", help="daemon root (default: $SPEC_KITTY_HOME, else ~/.spec-kitty)"
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document")


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; given a ``command`` name, only that command's parser below the top.

    Parsing a command's arguments needs no other command's parser, and each costs its
    building (argparse's help formatters and gettext lookups): building them all was about
    8 M instructions of a one-shot ``doctor``. Help and errors before a command, where the
    whole list shows, come from the whole parser (:func:`_named_command` gives None then).
    """
    parser = argparse.ArgumentParser(
        prog="spec-kitty-supervisor",
        description="Owns every spec-kitty sync daemon of a daemon root.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for names, add in _COMMAND_PARSERS:
        if command is None or command in names:
            add(commands)
    return parser


def _named_command(argv: Sequence[str] | None) -> str | None:
    """The command ``argv`` names first, when it is one (argparse matches names exactly)."""
    first = (sys.argv[1:] if argv is None else argv)[:1]
    if first and any(first[0] in names for names, _ in _COMMAND_PARSERS):
        return first[0]
    return None


def _add_run(commands: Any) -> None:
    run = commands.add_parser("run", help="run the supervisor in the foreground")
    _add_common(run, json_flag=False)
    run.add_argument("--auto-started", action="store_true", help=argparse.SUPPRESS)
    run.add_argument(
        "--service",
        action="store_true",
        help="run under a service manager: log to stderr, take over from a running supervisor",
    )
    run.add_argument(
        "--takeover",
        action="store_true",
        help="ask a running supervisor of this root to hand over (its daemons are kept)",
    )
    run.add_argument("--port-range", type=parse_port_range, metavar="LO-HI")
    run.add_argument("--heartbeat-seconds", type=float)
    run.add_argument("--idle-retirement-seconds", type=float)
    run.add_argument("--watchdog-seconds", type=float)
    run.add_argument("--idle-exit-seconds", type=float)
    run.add_argument("--sweep-seconds", type=float)
    run.add_argument("--version-policy", choices=["keep_newer", "latest_wins"])


def _add_ensure(commands: Any) -> None:
    ensure = commands.add_parser(
        "ensure", help="get the root's sync daemon (starts what is needed)"
    )
    _add_common(ensure)
    ensure.add_argument("--python", help="interpreter with spec-kitty-cli (default: spec-kitty's)")
    ensure.add_argument(
        "--package-version",
        help="the spec-kitty-cli version you expect; refused unless --python has it installed "
        "(default: the supervisor reads it from --python)",
    )
    ensure.add_argument("--show-token", action="store_true", help="include the daemon's token")


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="the supervisor and its daemons")
    _add_common(status)


def _add_stop(commands: Any) -> None:
    stop = commands.add_parser("stop", help="stop the supervisor (daemons stay for re-adoption)")
    _add_common(stop)
    stop.add_argument("--children", action="store_true", help="first stop its daemons gracefully")


def _add_events(commands: Any) -> None:
    events = commands.add_parser("events", help="the supervisor's event ledger")
    _add_common(events)
    events.add_argument("--since", type=int, default=0, help="only events after this sequence")
    events.add_argument("--limit", type=int, default=200)


def _add_retire(commands: Any) -> None:
    retire = commands.add_parser("retire", help="retire one supervised daemon gracefully")
    _add_common(retire)
    retire.add_argument("--pid", type=int)
    retire.add_argument("--port", type=int)


def _add_restart(commands: Any) -> None:
    restart = commands.add_parser("restart", help="lift a quarantine so the next ensure spawns")
    _add_common(restart)


#: Each command's names and what adds its parser, in the order ``--help`` lists them.
_COMMAND_PARSERS: tuple[tuple[tuple[str, ...], Callable[[Any], None]], ...] = (
    (("run",), _add_run),
    (("ensure",), _add_ensure),
    (("status",), _add_status),
    (("stop",), _add_stop),
    (("events",), _add_events),
    (("retire",), _add_retire),
    (("restart",), _add_restart),
    (("doctor",), add_doctor_parser),
    (("install-service", "uninstall-service"), add_service_parsers),
    (("integrate",), add_integrate_parser),
)


def parse_port_range(text: str) -> tuple[int, int]:
    """``--port-range``'s type (argparse names it in its error): :mod:`._settings`' parser."""
    from ._settings import parse_port_range as parse

    return parse(text)


def _client(args: argparse.Namespace, autostart: bool = False) -> SupervisorClient:
    from spec_kitty_supervisor_client import SupervisorClient

    return SupervisorClient(args.root, autostart=autostart)


def _cmd_run(args: argparse.Namespace, early: EarlyStart | str | None = None) -> int:
    from spec_kitty_supervisor_client import resolve_daemon_root

    from ._early_spawn import take_handed_request
    from ._layout import RootLayout
    from ._runner import RunOptions, run_supervisor

    if early is None:
        # A handed request the first stage did not see (this entry point skipped it): its
        # descriptor and variable must not reach the daemons.
        take_handed_request(os.environ)

    flags: dict[str, Any] = {
        "port_range": args.port_range,
        "heartbeat_seconds": args.heartbeat_seconds,
        "idle_retirement_seconds": args.idle_retirement_seconds,
        "watchdog_seconds": args.watchdog_seconds,
        "idle_exit_seconds": args.idle_exit_seconds,
        "sweep_seconds": args.sweep_seconds,
        "version_policy": args.version_policy,
    }
    layout = RootLayout(resolve_daemon_root(args.root))
    options = RunOptions(
        auto_started=args.auto_started, service=args.service, takeover=args.takeover, flags=flags
    )
    if isinstance(early, str):
        return run_supervisor(layout, options, early_skipped=early)
    return run_supervisor(layout, options, early)


def _cmd_ensure(args: argparse.Namespace) -> int:
    from spec_kitty_supervisor_client._discover import SpecKittyNotFound, spec_kitty_python

    with _client(args, autostart=True) as client:  # the root is checked first
        try:
            python = args.python or spec_kitty_python()
        except SpecKittyNotFound as exc:
            print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
            return EXIT_FAILED
        answer = client.ensure(python, args.package_version)
    if not args.show_token:
        answer = answer.model_copy(
            update={"daemon": answer.daemon.model_copy(update={"token": None})}
        )
    if args.json:
        print(answer.model_dump_json(indent=2, exclude_none=not args.show_token))
    else:
        daemon = answer.daemon
        print(
            f"{answer.action}: pid {daemon.pid} at {daemon.url} "
            f"(spec-kitty-cli {daemon.package_version}, {daemon.origin})"
        )
        if args.show_token:
            print(f"token: {daemon.token}")
    return EXIT_OK


def _no_supervisor(args: argparse.Namespace) -> int:
    from spec_kitty_supervisor_client import StatusResponse, resolve_daemon_root

    if args.json:
        _print_json(StatusResponse(supervisor=None))
    else:
        root = resolve_daemon_root(args.root)
        print(f"no supervisor runs for {root}", file=sys.stderr)
    return EXIT_NO_SUPERVISOR


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            status = client.status()
        except SupervisorUnavailable:
            return _no_supervisor(args)
    if args.json:
        _print_json(status)
        return EXIT_OK
    assert status.supervisor is not None
    sup = status.supervisor
    print(f"supervisor pid {sup.pid} (v{sup.version}) for {sup.root}")
    print(f"  socket      {sup.socket}")
    print(f"  started     {sup.started_at}{' (auto-started)' if sup.auto_started else ''}")
    print(
        f"  root state  {status.root_state}"
        + (f": {status.root_state_reason}" if status.root_state_reason else "")
    )
    if status.degraded:
        print(f"  degraded    {status.degraded}")
        print("              (nothing that needs a write is done until writes work again)")
    if not status.daemons:
        print("  no sync daemon (the next `ensure` starts one)")
    for daemon in status.daemons:
        print(
            f"  {daemon.role:<8} pid {daemon.pid:<7} port {daemon.port}  "
            f"{daemon.package_version:<8} {daemon.state:<12} {daemon.origin:<8} {daemon.python}"
        )
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace) -> int:
    from ._identity import read_identity

    with _client(args) as client:
        try:
            pid = client.health().pid
            identity = read_identity(pid)
            answer = client.shutdown(stop_children=args.children)
        except SupervisorUnavailable:
            return _no_supervisor(args)
    # Done means the process is gone, not merely its socket closed.
    deadline = time.monotonic() + 15
    while identity is not None and identity.same_process(read_identity(pid)):
        if time.monotonic() > deadline:
            print(f"spec-kitty-supervisor: pid {pid} is still exiting", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.02)
    if args.json:
        _print_json(answer)
    else:
        stopped = ", ".join(str(p) for p in answer.children_stopped) or "none"
        print(f"stopped supervisor pid {pid}; daemons stopped: {stopped}")
    return EXIT_OK


def _cmd_events(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            events = client.events(since=args.since, limit=args.limit)
        except SupervisorUnavailable:
            return _no_supervisor(args)
    if args.json:
        _print_json(events)
        return EXIT_OK
    for event in events.events:
        where = " ".join(
            part
            for part in (
                f"pid={event.pid}" if event.pid is not None else "",
                f"port={event.port}" if event.port is not None else "",
                f"version={event.package_version}" if event.package_version else "",
            )
            if part
        )
        print(f"{event.seq:>5} {event.time} {event.kind:<16} {where} {event.reason}")
    return EXIT_OK


def _cmd_retire(args: argparse.Namespace) -> int:
    if args.pid is None and args.port is None:
        print("spec-kitty-supervisor: retire needs --pid or --port", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        try:
            answer = client.retire(pid=args.pid, port=args.port, reason="retire command")
        except SupervisorUnavailable:
            return _no_supervisor(args)
    if args.json:
        _print_json(answer)
    else:
        print(
            f"retired pid {answer.retired.pid} (port {answer.retired.port}) by {answer.stop_path}"
        )
    return EXIT_OK


def _cmd_restart(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            status = client.restart()
        except SupervisorUnavailable:
            return _no_supervisor(args)
    if args.json:
        _print_json(status)
    else:
        print(f"root state: {status.root_state}")
    return EXIT_OK


# The commands of their own modules are imported when they run, not to build the parser: a
# command loads only what it needs (``run`` neither the doctor nor the service installer).


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ._doctor_cli import cmd_doctor

    return cmd_doctor(args)


def _cmd_install_service(args: argparse.Namespace) -> int:
    from ._service_cli import cmd_install_service

    return cmd_install_service(args)


def _cmd_uninstall_service(args: argparse.Namespace) -> int:
    from ._service_cli import cmd_uninstall_service

    return cmd_uninstall_service(args)


def _cmd_integrate(args: argparse.Namespace) -> int:
    from ._integrate_cli import cmd_integrate

    return cmd_integrate(args)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "ensure": _cmd_ensure,
    "status": _cmd_status,
    "stop": _cmd_stop,
    "events": _cmd_events,
    "retire": _cmd_retire,
    "restart": _cmd_restart,
    "doctor": _cmd_doctor,
    "install-service": _cmd_install_service,
    "uninstall-service": _cmd_uninstall_service,
    "integrate": _cmd_integrate,
}


def main(argv: Sequence[str] | None = None, early: EarlyStart | str | None = None) -> int:
    """The command line. ``early`` is what ``run``'s light first stage did (``__main__``):
    what it holds, or why it did nothing with the request it was handed."""
    try:
        args = _build_parser(_named_command(argv)).parse_args(argv)
    except SystemExit:
        if early is not None and not isinstance(early, str):
            early.let_go()
        raise
    if args.command not in ("run", "doctor"):
        # Anything logged by a one-shot command goes to stderr: stdout is its JSON document.
        # (``doctor`` sets this up itself when it observes without a supervisor: asking one
        # logs nothing.)
        from ._logging import configure_logging

        configure_logging(None, level=logging.WARNING)
    try:
        if args.command == "run":
            return _cmd_run(args, early)
        return _COMMANDS[args.command](args)
    except SpawnFailed as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        if exc.log_tail:
            print("--- daemon log (tail) ---", file=sys.stderr)
            print(exc.log_tail.rstrip(), file=sys.stderr)
        return EXIT_FAILED
    except (RequestFailed, ProtocolMismatch) as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SupervisorError as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130

"""``install-service`` and ``uninstall-service``: the command-line face of :mod:`._service`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spec_kitty_supervisor_client import (
    SupervisorClient,
    SupervisorUnavailable,
    resolve_daemon_root,
)

from ._service import (
    ForeignUnitFileError,
    ServicePlatform,
    UnsupportedPlatformError,
    current_platform,
    default_exec_path,
    disable_commands,
    enable_commands,
    plan_install,
    remove_installed,
    write_planned,
)

__all__ = ["cmd_install_service", "cmd_uninstall_service"]


def _platform(args: argparse.Namespace) -> ServicePlatform:
    if args.platform is not None:
        chosen: ServicePlatform = args.platform
        return chosen
    return current_platform()


def cmd_install_service(args: argparse.Namespace) -> int:
    try:
        platform = _platform(args)
        exec_path = default_exec_path()
        root = resolve_daemon_root(args.root)
        home = Path.home()
        files = plan_install(platform, exec_path, root, home)
        commands = enable_commands(platform, root, home)
    except (UnsupportedPlatformError, FileNotFoundError, ValueError) as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        for planned in files:
            print(f"# {planned.path}")
            print(planned.content.decode())
            if args.output is not None:
                args.output.mkdir(parents=True, exist_ok=True)
                (args.output / planned.path.name).write_bytes(planned.content)
        print("# then run:")
        for command in commands:
            print(command)
        return 0
    try:
        written = write_planned(files, force=args.force)
    except ForeignUnitFileError as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return 1
    for planned in files:
        state = "written" if planned.path in written else "unchanged"
        print(f"{state}: {planned.path}")
    print("to enable it now and at every login, run:")
    for command in commands:
        print(f"  {command}")
    return 0


def cmd_uninstall_service(args: argparse.Namespace) -> int:
    try:
        platform = _platform(args)
    except UnsupportedPlatformError as exc:
        print(f"spec-kitty-supervisor: {exc}", file=sys.stderr)
        return 1
    root = resolve_daemon_root(args.root)
    home = Path.home()
    with SupervisorClient(root, autostart=False) as client:
        try:
            answer = client.shutdown(stop_children=not args.keep_daemons)
            stopped = ", ".join(str(pid) for pid in answer.children_stopped) or "none"
            print(f"stopped the supervisor; daemons stopped: {stopped}")
        except SupervisorUnavailable:
            print("no supervisor was running")
    print("disable the service so it is not started again:")
    for command in disable_commands(platform, root, home):
        print(f"  {command}")
    result = remove_installed(platform, root, home)
    for path in result.removed:
        print(f"removed: {path}")
    for path in result.foreign:
        print(f"left alone (not written by install-service): {path}")
    if not result.removed and not result.foreign:
        print("no service files were installed")
    return 0

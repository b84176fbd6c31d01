"""The arguments of ``doctor``, ``integrate``, ``install-service`` and ``uninstall-service``.

Apart from the modules that run those commands (``_doctor_cli``, ``_integrate_cli``,
``_service_cli``) so that building the command line imports none of them: each command imports
only what it runs (``run`` does not load the doctor's or the service installer's modules).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_doctor_parser", "add_integrate_parser", "add_service_parsers"]


def add_doctor_parser(commands: Any) -> None:
    """Add ``doctor`` to the CLI's sub-commands (``commands`` is argparse's subparsers)."""
    doctor: argparse.ArgumentParser = commands.add_parser(
        "doctor",
        help="every listener in the sync range, what needs doing, and (--reset) doing it",
    )
    doctor.add_argument(
        "--root", help="daemon root (default: $SPEC_KITTY_HOME, else ~/.spec-kitty)"
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    doctor.add_argument("--reset", action="store_true", help="stop this root's orphan daemons")
    doctor.add_argument(
        "--force",
        action="store_true",
        help="with --reset: also stop operator_required daemons, without asking",
    )
    doctor.add_argument(
        "--dry-run", action="store_true", help="with --reset: show what would be stopped"
    )


def add_integrate_parser(commands: Any) -> None:
    integrate = commands.add_parser(
        "integrate",
        help="make a released spec-kitty (3.2.0-3.2.7) use this supervisor, or --remove that",
    )
    integrate.add_argument(
        "--python",
        action="append",
        metavar="PY",
        help="spec-kitty's interpreter (repeatable; default: the one of `spec-kitty` on PATH)",
    )
    integrate.add_argument("--remove", action="store_true", help="remove the integration")
    integrate.add_argument(
        "--dry-run", action="store_true", help="show the paths and contents; write nothing"
    )
    integrate.add_argument("--json", action="store_true", help="print one JSON document")
    integrate.add_argument(
        "--force",
        action="store_true",
        help="also integrate into user or system site-packages, or replace the integration of "
        "another supervisor installation",
    )


def add_service_parsers(commands: Any) -> None:
    install = commands.add_parser(
        "install-service", help="install the supervisor as a systemd user service or launchd agent"
    )
    install.add_argument("--root", help="daemon root (default: $SPEC_KITTY_HOME or ~/.spec-kitty)")
    install.add_argument(
        "--dry-run", action="store_true", help="print the files and commands; write nothing"
    )
    install.add_argument(
        "--output",
        type=Path,
        help="with --dry-run: also write the rendered files into this folder",
    )
    install.add_argument(
        "--force", action="store_true", help="replace unit files that install-service did not write"
    )
    install.add_argument("--platform", choices=["linux", "darwin"], help=argparse.SUPPRESS)

    uninstall = commands.add_parser(
        "uninstall-service", help="stop the supervisor (and its daemons) and remove the service"
    )
    uninstall.add_argument(
        "--root", help="daemon root (default: $SPEC_KITTY_HOME or ~/.spec-kitty)"
    )
    uninstall.add_argument(
        "--keep-daemons", action="store_true", help="leave the sync daemons running"
    )
    uninstall.add_argument("--platform", choices=["linux", "darwin"], help=argparse.SUPPRESS)

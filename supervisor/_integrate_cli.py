"""``integrate``: the command-line face of :mod:`._integrate`.

Every interpreter is inspected and planned before anything is written: when one is refused,
nothing is written for any of them (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from spec_kitty_supervisor_client._discover import SpecKittyNotFound, spec_kitty_python

from ._integrate import (
    IntegrationRefused,
    Plan,
    apply,
    hook_state,
    inspect_interpreter,
    plan,
    remove,
    supervisor_command_of_this_installation,
)

__all__ = ["cmd_integrate"]


def _interpreters(args: argparse.Namespace) -> list[str]:
    if args.python:
        return list(args.python)
    return [spec_kitty_python()]


def _remove(pythons: list[str], args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    results: list[dict[str, Any]] = []
    for python in pythons:
        interpreter = inspect_interpreter(python)
        site_packages = interpreter.spec_kitty_location or interpreter.purelib
        if args.dry_run:
            present = [
                str(site_packages / name)
                for name in ("spec_kitty_supervisor_hook.py", "spec_kitty_supervisor_hook.pth")
                if (site_packages / name).exists()
            ]
            results.append({"python": python, "action": "would_remove", "files": present})
            continue
        removed = remove(site_packages)
        results.append(
            {
                "python": python,
                "site_packages": str(site_packages),
                "action": "removed" if removed else "not_integrated",
                "files": [str(path) for path in removed],
            }
        )
    return results, True


def _install(pythons: list[str], args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    command = supervisor_command_of_this_installation()
    plans: list[Plan] = []
    refusals: list[dict[str, Any]] = []
    for python in pythons:
        try:
            plans.append(plan(inspect_interpreter(python), command, force=args.force))
        except IntegrationRefused as exc:
            refusals.append({"python": python, "action": "refused", "reason": str(exc)})
    if refusals:
        return refusals, False
    results: list[dict[str, Any]] = []
    for integration in plans:
        entry: dict[str, Any] = {
            "python": integration.interpreter.python,
            "spec_kitty_version": integration.interpreter.spec_kitty_version,
            "site_packages": str(integration.site_packages),
            "command": command,
        }
        if args.dry_run:
            entry["action"] = "would_write" if integration.changes else "unchanged"
            entry["files"] = {str(path): text for path, text in integration.files.items()}
        else:
            written = apply(integration)
            entry["action"] = "installed" if written else "unchanged"
            entry["files"] = [str(path) for path in integration.files]
            entry["hook"] = hook_state(integration.interpreter.python)
        results.append(entry)
    return results, True


def _print_text(results: list[dict[str, Any]], dry_run: bool) -> None:
    for entry in results:
        python, action = entry["python"], entry["action"]
        if action == "refused":
            print(f"{python}: refused: {entry['reason']}", file=sys.stderr)
            continue
        print(f"{python}: {action.replace('_', ' ')}")
        files = entry.get("files", [])
        if dry_run and isinstance(files, dict):
            for path, text in files.items():
                print(f"--- {path}")
                print(text, end="")
        else:
            for path in files:
                print(f"  {path}")
        hook = entry.get("hook")
        if isinstance(hook, dict):
            if hook.get("unpatched"):
                print(f"  hook loaded but left spec-kitty unpatched: {hook['unpatched']}")
            else:
                print(f"  active: wraps {', '.join(hook.get('patched', []))}")


def cmd_integrate(args: argparse.Namespace) -> int:
    try:
        pythons = _interpreters(args)
        run = _remove if args.remove else _install
        results, ok = run(pythons, args)
    except (SpecKittyNotFound, IntegrationRefused) as exc:
        results, ok = [{"python": None, "action": "refused", "reason": str(exc)}], False
    if args.json:
        print(json.dumps({"ok": ok, "interpreters": results}, indent=2))
    else:
        if not ok:
            print("nothing was written.", file=sys.stderr)
        _print_text(results, args.dry_run)
    return 0 if ok else 1

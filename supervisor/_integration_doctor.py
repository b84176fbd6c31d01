"""What ``doctor`` says about the integration: each spec-kitty installation, and the hook's record.

``doctor`` (the command, run by the user) looks for the spec-kitty installations a user runs:
the ``spec-kitty`` on PATH, pipx's and ``uv tool``'s. For each one of a supported release it
says whether the integration is active and current, stale (written by another version of this
project, or for another installation's command) or absent, with the command that fixes it. It
also shows what the hooks recorded in ``R/supervisor/integration.json``: how often an integrated
spec-kitty could not use the supervisor, and releases left unpatched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

from spec_kitty_supervisor_client._discover import SpecKittyNotFound, spec_kitty_python
from spec_kitty_supervisor_client._hook import INTEGRATION_FILE, INTEGRATION_RECORD_LIMIT

from ._files import RefusedFile, read_regular_file

__all__ = [
    "IntegrationFinding",
    "IntegrationState",
    "Installation",
    "integration_findings",
    "integration_state",
    "spec_kitty_installations",
]

IntegrationState = Literal["active", "stale", "foreign", "absent"]


class IntegrationFinding(NamedTuple):
    """One of doctor's findings (the API's ``DoctorFinding``), in plain data.

    ``doctor`` adds these to a report it may have read from the supervisor as JSON without
    the protocol's models (pydantic is most of a one-shot command's start), so they are
    plain and turn into the report's JSON themselves.
    """

    severity: Literal["info", "warning", "error"]
    code: str
    message: str
    remediation: str | None = None

    def as_json(self) -> dict[str, str | None]:
        """The finding as ``DoctorFinding.model_dump(mode="json")`` gives it, key for key."""
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "remediation": self.remediation,
        }


class Installation(NamedTuple):
    """A spec-kitty installation: where it was found and its interpreter."""

    where: str
    python: str


def spec_kitty_installations(
    env: Mapping[str, str] | None = None, home: Path | None = None
) -> list[Installation]:
    """The ``spec-kitty`` on PATH, pipx's and ``uv tool``'s, each interpreter once."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    data_home = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    candidates: list[Installation] = []
    with contextlib.suppress(SpecKittyNotFound):
        candidates.append(Installation("PATH", spec_kitty_python(env.get("PATH", os.defpath))))
    pipx_homes = [Path(env["PIPX_HOME"])] if env.get("PIPX_HOME") else []
    pipx_homes += [data_home / "pipx", home / ".local" / "pipx"]
    for pipx_home in pipx_homes:
        candidates.append(
            Installation("pipx", str(pipx_home / "venvs" / "spec-kitty-cli" / "bin" / "python"))
        )
    uv_tools = Path(env["UV_TOOL_DIR"]) if env.get("UV_TOOL_DIR") else data_home / "uv" / "tools"
    candidates.append(Installation("uv tool", str(uv_tools / "spec-kitty-cli" / "bin" / "python")))
    found: list[Installation] = []
    seen: set[Path] = set()
    for candidate in candidates:
        python = Path(candidate.python)
        if not python.exists() or shutil.which(str(python)) is None:
            continue
        venv = python.parent.parent.resolve()
        if venv in seen:
            continue
        seen.add(venv)
        found.append(candidate)
    return found


def integration_state(
    hook_text: str | None, pth_text: str | None, command: list[str]
) -> IntegrationState:
    """Active (this installation's current hook), stale, foreign (another's) or absent."""
    from ._integrate import hook_source, pth_line, recorded_command

    if hook_text is None and pth_text is None:
        return "absent"
    if hook_text is not None and recorded_command(hook_text) not in (None, tuple(command)):
        return "foreign"
    if hook_text == hook_source(command) and pth_text == pth_line():
        return "active"
    return "stale"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _installation_finding(
    installation: Installation, command: list[str]
) -> IntegrationFinding | None:
    from ._integrate import HOOK_FILE, PTH_FILE, IntegrationRefused, inspect_interpreter, plan

    python = installation.python
    fix = f"`spec-kitty-supervisor integrate --python {python}`"
    try:
        interpreter = inspect_interpreter(python)
        site_packages = plan(interpreter, command, force=True).site_packages
    except (IntegrationRefused, OSError, ValueError, KeyError):
        return None  # not a release the integration serves, or no spec-kitty-cli at all
    state = integration_state(
        _read(site_packages / HOOK_FILE), _read(site_packages / PTH_FILE), command
    )
    release = f"spec-kitty-cli {interpreter.spec_kitty_version} ({installation.where}: {python})"
    if state == "active":
        return IntegrationFinding(
            severity="info",
            code="integration_active",
            message=f"{release} uses this supervisor; the integration is current",
            remediation=None,
        )
    if state == "absent":
        return IntegrationFinding(
            severity="info",
            code="integration_absent",
            message=f"{release} decides about its sync daemon on its own",
            remediation=f"{fix} to make it use the supervisor",
        )
    if state == "foreign":
        return IntegrationFinding(
            severity="warning",
            code="integration_foreign",
            message=f"{release} is integrated with another supervisor installation",
            remediation=f"{fix[:-1]} --force` to use this one instead",
        )
    return IntegrationFinding(
        severity="warning",
        code="integration_stale",
        message=f"{release} carries an integration written by another version of this project",
        remediation=f"{fix} to bring it up to date",
    )


#: The hook's record is two small entries; far more is not its record (the hook's own bound).
MAX_INTEGRATION_RECORD_BYTES = INTEGRATION_RECORD_LIMIT


def _record_findings(root: Path) -> list[IntegrationFinding]:
    path = root / "supervisor" / INTEGRATION_FILE
    try:
        # As the supervisor reads its own files: a FIFO would hang doctor, a link could
        # show any file as the hooks' record.
        raw = read_regular_file(path, MAX_INTEGRATION_RECORD_BYTES)
    except RefusedFile as refused:
        return [
            IntegrationFinding(
                severity="warning",
                code="integration_record_refused",
                message=f"{refused}; doctor does not read it, so it cannot show what the "
                "integrated spec-kitty releases recorded",
                remediation=f"move it away (`mv {path} {path}.moved`); the hooks write a new one",
            )
        ]
    except OSError:
        return []
    if raw is None:
        return []
    try:
        record = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(record, dict):
        return []
    findings = []
    failure = record.get("failure")
    if isinstance(failure, dict):
        findings.append(
            IntegrationFinding(
                severity="warning",
                code="integration_failures",
                message=f"an integrated spec-kitty ({failure.get('python')}) could not use the "
                f"supervisor {failure.get('count')} time(s) and ran its own lifecycle; last, at "
                f"{failure.get('time')}: {failure.get('last_error')}",
                remediation="run `spec-kitty-supervisor integrate` again from the installation "
                f"you use; delete {root / 'supervisor' / INTEGRATION_FILE} once it is fixed",
            )
        )
    unpatched = record.get("unpatched")
    if isinstance(unpatched, dict):
        findings.append(
            IntegrationFinding(
                severity="warning",
                code="integration_unpatched",
                message=f"the hook left spec-kitty ({unpatched.get('python')}) unpatched: "
                f"{unpatched.get('last_error')}",
                remediation="`spec-kitty-supervisor integrate --remove --python "
                f"{unpatched.get('python')}`",
            )
        )
    return findings


def integration_findings(
    root: Path, env: Mapping[str, str] | None = None
) -> list[IntegrationFinding]:
    """Every finding about the integration, for ``doctor``.

    ``integrate``'s own module (what it writes, how it asks an interpreter) is imported only
    when a spec-kitty installation is found: a machine without one pays nothing for it.
    """
    findings: list[IntegrationFinding] = []
    installations = spec_kitty_installations(env)
    if installations:
        from ._integrate import supervisor_command_of_this_installation

        command = supervisor_command_of_this_installation()
        findings = [
            finding
            for installation in installations
            if (finding := _installation_finding(installation, command)) is not None
        ]
    return findings + _record_findings(root)

"""The per-release facts of ``docs/integration.md``, checked against the installed releases.

Each release's own ``specify_cli.sync.daemon`` is imported in its own venv (read-only; the hook
is loaded from a temporary folder, nothing is installed) and the hook's shape check runs on it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sks_harness import MissingVenvError, spec_kitty_python
from spec_kitty_supervisor._integrate import HOOK_FILE, hook_source

pytestmark = pytest.mark.interop

RELEASES = ["3.2.0", "3.2.1", "3.2.2", "3.2.3", "3.2.4", "3.2.5", "3.2.6", "3.2.7"]

FACTS = """\
import dataclasses, inspect, json, sys
sys.path.insert(0, sys.argv[1])
import spec_kitty_supervisor_hook as hook
import specify_cli.sync.daemon as daemon
ensure = inspect.signature(daemon.ensure_sync_daemon_running)
skip = inspect.signature(daemon._daemon_start_skip_reason)
import specify_cli.sync.restart as restart
import specify_cli.sync.orphan_sweep as orphan_sweep
schema_2 = hasattr(orphan_sweep, "enumerate_identity_records")
import specify_cli.cli.commands._auth_doctor as auth_doctor
assemble = inspect.getsource(auth_doctor.assemble_report)
print(json.dumps({
    "shape_problem": hook.shape_problem(daemon),
    "restart_shape_problem": hook.restart_shape_problem(restart),
    "orphan_schema": 2 if schema_2 else 1,
    "orphan_shape_problem": (
        hook.orphan_shape_problem if schema_2 else hook.legacy_orphan_shape_problem
    )(orphan_sweep),
    "auth_doctor_shape_problem": hook.auth_doctor_shape_problem(auth_doctor),
    "auth_doctor_schema_1": hook._is_schema_1(auth_doctor),
    # The daemon summary is read right before the orphans are enumerated (one shared report).
    "summary_then_orphans": assemble.index("_read_daemon_summary()")
        < assemble.index("enumerate_identity_records()" if schema_2 else "enumerate_orphans()")
        < assemble.index("_compute_findings("),
    "ensure": [(p.name, p.kind.name, repr(p.default)) for p in ensure.parameters.values()],
    "skip": [(p.name, p.kind.name) for p in skip.parameters.values()],
    "stop": str(inspect.signature(daemon.stop_sync_daemon)),
    "outcome": [f.name for f in dataclasses.fields(daemon.DaemonStartOutcome)],
    "outcome_frozen": daemon.DaemonStartOutcome.__dataclass_params__.frozen,
    "health_wait": "[0.1] * 10 + [0.25] * 40 + [0.5] * 20"
        in inspect.getsource(daemon._ensure_sync_daemon_running_locked),
}))
"""


def _python(version: str) -> Path:
    try:
        return spec_kitty_python(version)
    except MissingVenvError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("version", RELEASES)
def test_every_release_has_the_shape_the_hook_wraps(tmp_path: Path, version: str) -> None:
    python = _python(version)
    (tmp_path / HOOK_FILE).write_text(hook_source(["/x"]))
    result = subprocess.run(
        [str(python), "-c", FACTS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "SPEC_KITTY_SUPERVISOR_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["shape_problem"] is None
    assert facts["restart_shape_problem"] is None
    assert facts["orphan_shape_problem"] is None
    # auth doctor: schema 1 (enumerate_orphans/sweep_orphans) up to 3.2.3, schema 2 from 3.2.4.
    schema_2 = tuple(int(p) for p in version.split(".")[:3]) >= (3, 2, 4)
    assert facts["orphan_schema"] == (2 if schema_2 else 1)
    # auth doctor's own module: the daemon summary everywhere, the findings in schema 1.
    assert facts["auth_doctor_shape_problem"] is None
    assert facts["auth_doctor_schema_1"] is not schema_2
    assert facts["summary_then_orphans"] is True
    since_3_2_6 = tuple(int(p) for p in version.split(".")) >= (3, 2, 6)
    keywords = [["intent", "KEYWORD_ONLY", "<class 'inspect._empty'>"]]
    keywords += [
        ["config", "KEYWORD_ONLY", "None"],
        ["health_wait_seconds", "KEYWORD_ONLY", "None"],
    ]
    if since_3_2_6:
        keywords.append(["force_explicit", "KEYWORD_ONLY", "False"])
    assert facts["ensure"] == keywords
    skip = [["intent", "POSITIONAL_OR_KEYWORD"], ["policy", "POSITIONAL_OR_KEYWORD"]]
    if since_3_2_6:
        skip.append(["force_explicit", "KEYWORD_ONLY"])
    assert facts["skip"] == skip
    assert facts["stop"] == "(timeout: 'float' = 5.0) -> 'tuple[bool, str]'"
    assert facts["outcome"] == ["started", "skipped_reason", "pid"]
    assert facts["outcome_frozen"] is True
    assert facts["health_wait"] is True

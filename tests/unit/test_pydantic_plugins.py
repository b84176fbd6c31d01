"""The supervisor's process loads no pydantic plugins (``_pydantic_plugins``, ADR 0019).

A real plugin is installed for the child interpreter (a distribution folder on its path whose
entry point of the ``pydantic`` group records every validator pydantic builds with it), so
these tests fail if pydantic ever finds its plugins elsewhere than the module replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spec_kitty_supervisor._pydantic_plugins import LOADER_MODULE

_PLUGIN = """
import os

class Recorder:
    def new_schema_validator(self, schema, schema_type, schema_type_path, schema_kind,
                             config, plugin_settings):
        with open(os.environ["PLUGIN_RECORD"], "a") as record:
            record.write(schema_type_path.name + "\\n")
        return None, None, None

plugin = Recorder()
"""


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    """A folder holding a module and a distribution that declares it a pydantic plugin."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "recording_plugin.py").write_text(_PLUGIN)
    dist = site / "recording_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: recording-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nrecorder = recording_plugin:plugin\n")
    return site


def _run(code: str, site: Path, record: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(site), "PLUGIN_RECORD": str(record)}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report: dict[str, object] = json.loads(completed.stdout.splitlines()[-1])
    report["recorded"] = record.read_text().split() if record.exists() else []
    return report


_BUILD_AND_REPORT = """
import json, sys
from spec_kitty_supervisor_client._models import EnsureRequest
from spec_kitty_supervisor import _runner  # the supervisor's own models, built at import
request = EnsureRequest.model_validate({"python": "/usr/bin/python3"})
print(json.dumps({
    "python": request.python,
    "metadata_imported": "importlib.metadata" in sys.modules,
}))
"""


def test_without_the_switch_the_plugin_sees_every_model(plugin_site: Path, tmp_path: Path) -> None:
    """The control: the plugin is found, so the test below can fail."""
    report = _run(_BUILD_AND_REPORT, plugin_site, tmp_path / "record")
    assert "EnsureRequest" in report["recorded"]  # type: ignore[operator]
    assert report["metadata_imported"] is True


def test_the_supervisors_entry_point_runs_no_plugin_and_reads_no_metadata(
    plugin_site: Path, tmp_path: Path
) -> None:
    report = _run(
        textwrap.dedent(
            """
            import sys
            from spec_kitty_supervisor.__main__ import main
            sys.argv = ["spec-kitty-supervisor", "--version"]
            try:
                main()
            except SystemExit:
                pass
            """
        )
        + _BUILD_AND_REPORT,
        plugin_site,
        tmp_path / "record",
    )
    assert report["python"] == "/usr/bin/python3"  # validation itself is unchanged
    assert report["recorded"] == []
    assert report["metadata_imported"] is False


def test_a_loader_already_imported_is_never_replaced(plugin_site: Path, tmp_path: Path) -> None:
    report = _run(
        f"""
        import json, sys
        import {LOADER_MODULE} as loader
        from spec_kitty_supervisor._pydantic_plugins import disable_pydantic_plugins
        replaced = disable_pydantic_plugins()
        same = sys.modules["{LOADER_MODULE}"] is loader
        print(json.dumps({{"replaced": replaced, "same": same}}))
        """,
        plugin_site,
        tmp_path / "record",
    )
    assert report["replaced"] is False
    assert report["same"] is True

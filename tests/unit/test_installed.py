"""doctor's ``legacy_daemon_unused``: the root's daemon runs a release no CLI on PATH uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from sks_harness import fake_spec_kitty_venv
from spec_kitty_supervisor._doctor import legacy_daemon_findings
from spec_kitty_supervisor._installed import cli_versions_on_path, interpreter_release
from spec_kitty_supervisor._layout import RootLayout
from spec_kitty_supervisor_client._discover import SpecKittyNotFound, spec_kitty_python
from spec_kitty_supervisor_client._models import ListenerRecord


def _command_for(folder: Path, python: Path) -> Path:
    """A ``spec-kitty`` console script in ``folder`` whose shebang names ``python``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "spec-kitty"
    script.write_text(f"#!{python}\nimport sys\n")
    script.chmod(0o755)
    return script


def _recorded(pid: int, version: str, python: str) -> ListenerRecord:
    return ListenerRecord(
        pid=pid,
        port=9401,
        package_version=version,
        executable_summary=python,
        is_recorded_singleton=True,
        cleanup_class="never_touch",
        skip_reason="is_recorded_singleton",
    )


def test_the_release_of_each_spec_kitty_on_path_is_read_from_files(tmp_path: Path) -> None:
    new = _command_for(tmp_path / "a", fake_spec_kitty_venv(tmp_path, "3.2.7"))
    old = _command_for(tmp_path / "b", fake_spec_kitty_venv(tmp_path, "3.1.10"))

    found = cli_versions_on_path({"PATH": f"{new.parent}:{tmp_path / 'none'}:{old.parent}"})

    assert found == {str(new): "3.2.7", str(old): "3.1.10"}


@pytest.mark.parametrize(
    "first_line",
    [b"#!\n", b"import sys\n", b"#!python3\n", b"#!\xff\xfe/python\n"],
    ids=["empty-shebang", "no-shebang", "relative", "undecodable"],
)
def test_a_spec_kitty_whose_interpreter_cannot_be_read_is_skipped_as_a_client_would(
    tmp_path: Path, first_line: bytes
) -> None:
    broken = tmp_path / "broken" / "spec-kitty"
    broken.parent.mkdir()
    broken.write_bytes(first_line)
    broken.chmod(0o755)
    good = _command_for(tmp_path / "good", fake_spec_kitty_venv(tmp_path, "3.2.7"))
    path = f"{broken.parent}:{good.parent}"

    assert cli_versions_on_path({"PATH": path}) == {str(good): "3.2.7"}
    # The same reading, where a client looks for the spec-kitty it runs: a clear refusal.
    with pytest.raises(SpecKittyNotFound):
        spec_kitty_python(str(broken.parent))


def test_an_interpreter_without_spec_kitty_has_no_release(tmp_path: Path) -> None:
    assert interpreter_release(str(tmp_path / "venv" / "bin" / "python")) is None


def test_a_recorded_daemon_of_a_release_no_cli_uses_is_reported_with_its_retiring_command(
    tmp_path: Path,
) -> None:
    old_python = fake_spec_kitty_venv(tmp_path, "3.1.10")
    layout = RootLayout(tmp_path / "root")
    # A 3.1 daemon says "unknown": its interpreter's files say which release it runs.
    recorded = _recorded(4242, "unknown", str(old_python))

    (finding,) = legacy_daemon_findings(
        layout, [recorded], [], {"/usr/local/bin/spec-kitty": "3.2.7"}
    )

    assert finding.code == "legacy_daemon_unused"
    assert finding.severity == "warning"
    assert "spec-kitty-cli 3.1.10" in finding.message
    assert "/usr/local/bin/spec-kitty (3.2.7)" in finding.message
    assert "--reset leaves it" in finding.message
    assert finding.remediation is not None
    assert "kill -TERM 4242" in finding.remediation


def test_a_recorded_daemon_whose_release_a_cli_still_uses_is_not_reported(
    tmp_path: Path,
) -> None:
    layout = RootLayout(tmp_path / "root")
    recorded = _recorded(4242, "3.2.7", "/venv/bin/python")

    assert legacy_daemon_findings(layout, [recorded], [], {"/bin/spec-kitty": "3.2.7"}) == []


def test_without_any_cli_on_path_nothing_is_claimed_unused(tmp_path: Path) -> None:
    layout = RootLayout(tmp_path / "root")
    recorded = _recorded(4242, "3.2.4", "/venv/bin/python")

    assert legacy_daemon_findings(layout, [recorded], [], {}) == []

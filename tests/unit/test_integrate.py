"""What ``integrate`` writes, and every refusal (nothing written), decided by ``plan()``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import spec_kitty_supervisor_client
from spec_kitty_supervisor._integrate import (
    HOOK_FILE,
    PTH_FILE,
    IntegrationRefused,
    Interpreter,
    apply,
    hook_source,
    plan,
    pth_line,
    recorded_command,
    remove,
)

COMMAND = ["/opt/sks/bin/spec-kitty-supervisor"]
WIRE = Path(spec_kitty_supervisor_client.__file__).parent / "_wire.py"


def _interpreter(site: Path, version: str | None = "3.2.7", **changes: object) -> Interpreter:
    site.mkdir(parents=True, exist_ok=True)
    site.chmod(0o755)
    facts: dict[str, object] = {
        "python": "/v/bin/python",
        "spec_kitty_version": version,
        "spec_kitty_location": site if version is not None else None,
        "purelib": site,
        "in_venv": True,
        "user_site": Path("/home/u/.local/lib/python3.11/site-packages"),
    }
    facts.update(changes)
    return Interpreter(**facts)  # type: ignore[arg-type]


def test_the_hook_carries_the_wire_byte_for_byte() -> None:
    source = hook_source(COMMAND)
    assert source.encode().startswith(WIRE.read_bytes())
    assert recorded_command(source) == tuple(COMMAND)
    compile(source, HOOK_FILE, "exec")  # one module, valid on its own


def test_the_pth_file_is_one_line_that_site_executes() -> None:
    line = pth_line()
    assert line.count("\n") == 1
    assert line.startswith("import ")  # site exec()s only lines starting with "import"


def test_the_pth_line_neither_raises_nor_prints_when_the_hook_module_is_gone(
    tmp_path: Path,
) -> None:
    (tmp_path / PTH_FILE).write_text(pth_line())
    package = tmp_path / "specify_cli" / "sync"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "daemon.py").write_text("RAN = True\n")
    script = (
        "import site, sys; site.addsitedir(sys.argv[1]); "
        "import specify_cli.sync.daemon as d; print(d.RAN, sys.meta_path[0].__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    expected = "True SpecKittySupervisorTrampoline\n"
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


def test_a_supported_release_in_a_venv_gets_exactly_two_files(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    integration = plan(_interpreter(site), COMMAND)
    assert set(integration.files) == {site / HOOK_FILE, site / PTH_FILE}
    assert integration.changes
    assert sorted(path.name for path in apply(integration)) == [PTH_FILE, HOOK_FILE]
    again = plan(_interpreter(site), COMMAND)
    assert not again.changes
    assert apply(again) == []


def test_remove_deletes_exactly_the_two_files_and_their_cache(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    (site / "__pycache__").mkdir(parents=True)
    (site / "__pycache__" / "six.cpython-311.pyc").write_bytes(b"x")
    before = sorted(site.rglob("*"))
    apply(plan(_interpreter(site), COMMAND))
    (site / "__pycache__" / "spec_kitty_supervisor_hook.cpython-311.pyc").write_bytes(b"x")
    removed = remove(site)
    assert len(removed) == 3
    assert sorted(site.rglob("*")) == before
    assert remove(site) == []


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        (None, "has no spec-kitty-cli installed"),
        ("3.1.10", "only 3.2.0 to 3.2.7"),
        ("4.0.0rc7", "only 3.2.0 to 3.2.7"),
        ("3.2.8", "only 3.2.0 to 3.2.7"),
    ],
)
def test_releases_outside_3_2_0_to_3_2_7_are_refused(
    tmp_path: Path, version: str | None, reason: str
) -> None:
    with pytest.raises(IntegrationRefused, match=reason):
        plan(_interpreter(tmp_path / "site", version), COMMAND)


@pytest.mark.parametrize("version", ["3.2.0", "3.2.6.2", "3.2.7"])
def test_every_release_from_3_2_0_to_3_2_7_is_accepted(tmp_path: Path, version: str) -> None:
    assert plan(_interpreter(tmp_path / "site", version), COMMAND).changes


def test_user_and_system_site_packages_need_force(tmp_path: Path) -> None:
    site = tmp_path / "site"
    with pytest.raises(IntegrationRefused, match="user site-packages"):
        plan(_interpreter(site, user_site=site), COMMAND)
    with pytest.raises(IntegrationRefused, match="system interpreter"):
        plan(_interpreter(site, in_venv=False), COMMAND)
    assert plan(_interpreter(site, in_venv=False), COMMAND, force=True).changes


def test_a_site_packages_others_can_write_is_refused_even_with_force(tmp_path: Path) -> None:
    interpreter = _interpreter(tmp_path / "site")
    (tmp_path / "site").chmod(0o777)
    with pytest.raises(IntegrationRefused, match="writable by group or others"):
        plan(interpreter, COMMAND, force=True)


@pytest.mark.skipif(os.getuid() != 0, reason="needs a folder owned by another uid")
def test_a_site_packages_of_another_user_is_refused(tmp_path: Path) -> None:
    interpreter = _interpreter(tmp_path / "site")
    os.chown(tmp_path / "site", 12345, 12345)
    with pytest.raises(IntegrationRefused, match="belongs to uid 12345"):
        plan(interpreter, COMMAND, force=True)


def test_the_integration_of_another_installation_needs_force(tmp_path: Path) -> None:
    site = tmp_path / "site"
    apply(plan(_interpreter(site), ["/other/bin/spec-kitty-supervisor"]))
    with pytest.raises(IntegrationRefused, match="another supervisor installation"):
        plan(_interpreter(site), COMMAND)
    replaced = plan(_interpreter(site), COMMAND, force=True)
    apply(replaced)
    assert recorded_command((site / HOOK_FILE).read_text()) == tuple(COMMAND)

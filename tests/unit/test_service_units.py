"""Service units as text: what systemd and launchd are told to run, and how a root is named."""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

import pytest

from spec_kitty_supervisor._units import (
    UNIT_MARKER,
    InvalidPlistError,
    carries_marker,
    example_units,
    render_launchd_plist,
    render_systemd_service,
    render_systemd_socket,
    service_command,
    service_names,
    validate_plist,
)
from spec_kitty_supervisor_client import socket_path_for_root

HOME = Path("/home/ada")
ROOT = HOME / ".spec-kitty"
OTHER_ROOT = Path("/srv/work/sk-root")
EXEC = "/home/ada/.local/bin/spec-kitty-supervisor"
REPO = Path(__file__).resolve().parents[2]


def directives(unit: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order, ignoring comments."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(f"{section}.{key}", []).append(value)
    return found


def plist_for(root: Path, home: Path = HOME) -> bytes:
    return render_launchd_plist(
        service_command(EXEC, root),
        root,
        stdout_path=home / "Library/Logs/out.log",
        stderr_path=home / "Library/Logs/err.log",
        home=home,
    )


# Names ---------------------------------------------------------------------------------------


def test_default_root_gets_the_instance_less_names() -> None:
    names = service_names(ROOT, HOME)

    assert names.systemd_service == "spec-kitty-supervisor.service"
    assert names.systemd_socket == "spec-kitty-supervisor.socket"
    assert names.launchd_label == "dev.spec-kitty.supervisor"
    assert names.launchd_plist == "dev.spec-kitty.supervisor.plist"


def test_other_roots_get_a_stable_digest_suffix_of_their_own() -> None:
    first = service_names(OTHER_ROOT, HOME)
    again = service_names(OTHER_ROOT, HOME)
    second = service_names(Path("/srv/work/another-root"), HOME)

    assert first == again
    assert first != second
    assert re.fullmatch(r"spec-kitty-supervisor-[0-9a-f]{12}\.service", first.systemd_service)
    assert first.systemd_socket == first.systemd_service.replace(".service", ".socket")
    assert re.fullmatch(r"dev\.spec-kitty\.supervisor\.[0-9a-f]{12}", first.launchd_label)


def test_a_root_spelled_through_a_symlink_is_still_the_default_root(tmp_path: Path) -> None:
    real_home = tmp_path / "real-home"
    (real_home / ".spec-kitty").mkdir(parents=True)
    linked_home = tmp_path / "home"
    linked_home.symlink_to(real_home)

    names = service_names((real_home / ".spec-kitty"), linked_home)

    assert names.systemd_service == "spec-kitty-supervisor.service"


# The command line ------------------------------------------------------------------------------


def test_service_command_runs_the_console_script_in_service_mode() -> None:
    assert service_command(EXEC, ROOT) == [EXEC, "run", "--root", str(ROOT), "--service"]


@pytest.mark.parametrize(
    ("exec_path", "root"), [("spec-kitty-supervisor", ROOT), (EXEC, Path("r"))]
)
def test_service_command_refuses_relative_paths(exec_path: str, root: Path) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        service_command(exec_path, root)


def test_no_rendered_unit_mentions_run_sync_daemon() -> None:
    rendered = [
        render_systemd_service(EXEC, ROOT, home=HOME),
        render_systemd_socket(ROOT, home=HOME),
        plist_for(ROOT).decode(),
    ]

    assert not any("run_sync_daemon" in text for text in rendered)


# systemd service ----------------------------------------------------------------------------------


def test_service_unit_is_a_notify_service_with_a_watchdog_that_restarts_on_failure() -> None:
    unit = directives(render_systemd_service(EXEC, ROOT, home=HOME))

    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]
    assert unit["Service.ExecStart"] == [f"{EXEC} run --root {ROOT} --service"]
    assert unit["Service.WatchdogSec"] == ["60"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert int(unit["Service.RestartSec"][0]) > 0
    assert int(unit["Unit.StartLimitIntervalSec"][0]) > 0
    assert int(unit["Unit.StartLimitBurst"][0]) > 0


def test_service_unit_kills_only_the_supervisor_and_says_why() -> None:
    text = render_systemd_service(EXEC, ROOT, home=HOME)
    lines = text.splitlines()
    kill_mode = lines.index("KillMode=process")
    comment = " ".join(line for line in lines[kill_mode - 3 : kill_mode] if line.startswith("#"))

    assert "outlive a supervisor restart" in comment
    assert "re-adopts" in comment


def test_service_unit_requires_and_follows_its_socket() -> None:
    names = service_names(OTHER_ROOT, HOME)
    unit = directives(render_systemd_service(EXEC, OTHER_ROOT, home=HOME))

    assert unit["Unit.Requires"] == [names.systemd_socket]
    assert unit["Unit.After"] == [names.systemd_socket]
    assert unit["Install.Also"] == [names.systemd_socket]


def test_service_unit_sets_spec_kitty_home_only_for_a_non_default_root() -> None:
    default = directives(render_systemd_service(EXEC, ROOT, home=HOME))
    other = directives(render_systemd_service(EXEC, OTHER_ROOT, home=HOME))

    assert "Service.Environment" not in default
    assert other["Service.Environment"] == [f'"SPEC_KITTY_HOME={OTHER_ROOT}"']


def test_exec_start_quotes_spaces_and_escapes_specifiers_and_variables() -> None:
    exec_path = "/opt/my tools/100%/spec-kitty-supervisor"
    root = Path('/data/a "quoted" $HOME/root')

    unit = directives(render_systemd_service(exec_path, root, home=HOME))

    # The program path takes no $ expansion; arguments do, so their dollars are doubled.
    assert unit["Service.ExecStart"] == [
        '"/opt/my tools/100%%/spec-kitty-supervisor" run --root '
        '"/data/a \\"quoted\\" $$HOME/root" --service'
    ]


@pytest.mark.parametrize("program", ['/opt/"q"/sks', "/opt/it's/sks", "/opt/back\\slash/sks"])
def test_an_executable_path_systemd_refuses_to_run_is_refused_up_front(program: str) -> None:
    with pytest.raises(ValueError, match="quotes or backslashes"):
        render_systemd_service(program, ROOT, home=HOME)


@pytest.mark.parametrize("bad", ["/root\nExecStartPre=/bin/evil", "/root\x00x", "/root\rx"])
def test_control_characters_in_a_root_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        render_systemd_service(EXEC, Path(bad), home=HOME)
    with pytest.raises(ValueError, match="control character"):
        render_systemd_socket(Path(bad), home=HOME)


# systemd socket --------------------------------------------------------------------------------


def test_socket_unit_listens_on_the_roots_control_socket_privately() -> None:
    unit = directives(render_systemd_socket(ROOT, home=HOME))

    assert unit["Socket.ListenStream"] == [str(socket_path_for_root(ROOT))]
    assert unit["Socket.SocketMode"] == ["0600"]
    assert unit["Socket.DirectoryMode"] == ["0700"]
    assert unit["Socket.Service"] == ["spec-kitty-supervisor.service"]
    assert unit["Socket.FileDescriptorName"] == ["control"]
    assert unit["Install.WantedBy"] == ["sockets.target"]


def test_socket_unit_of_a_deep_root_uses_the_same_fallback_path_as_the_client() -> None:
    deep_root = Path("/srv/" + "d" * 120 + "/root")

    unit = directives(render_systemd_socket(deep_root, home=HOME))

    assert unit["Socket.ListenStream"] == [str(socket_path_for_root(deep_root))]
    assert not unit["Socket.ListenStream"][0].startswith(str(deep_root))


# Markers ---------------------------------------------------------------------------------------


def test_every_rendered_unit_starts_with_the_marker() -> None:
    for text in (
        render_systemd_service(EXEC, ROOT, home=HOME),
        render_systemd_socket(ROOT, home=HOME),
    ):
        assert text.splitlines()[0].startswith(f"# {UNIT_MARKER}")
        assert carries_marker(text.encode())


def test_plist_marker_is_an_xml_comment_right_after_the_declaration() -> None:
    lines = plist_for(ROOT).decode().splitlines()

    assert lines[0].startswith("<?xml")
    assert lines[1] == f"<!-- {UNIT_MARKER} -->"


def test_a_file_without_the_marker_is_not_ours() -> None:
    assert not carries_marker(b"[Service]\nExecStart=/usr/bin/true\n")
    assert not carries_marker(b"\n" * 600 + f"# {UNIT_MARKER}".encode())


# launchd ---------------------------------------------------------------------------------------


def test_plist_keeps_the_supervisor_alive_unless_it_exits_cleanly() -> None:
    job = validate_plist(plist_for(ROOT))

    assert job["Label"] == "dev.spec-kitty.supervisor"
    assert job["ProgramArguments"] == [EXEC, "run", "--root", str(ROOT), "--service"]
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ThrottleInterval"] > 0
    assert job["ProcessType"] == "Background"
    assert job["StandardOutPath"] == str(HOME / "Library/Logs/out.log")
    assert job["StandardErrorPath"] == str(HOME / "Library/Logs/err.log")
    assert "EnvironmentVariables" not in job


def test_plist_of_a_non_default_root_names_it_in_spec_kitty_home() -> None:
    job = validate_plist(plist_for(OTHER_ROOT))

    assert job["EnvironmentVariables"] == {"SPEC_KITTY_HOME": str(OTHER_ROOT)}
    assert job["Label"] == service_names(OTHER_ROOT, HOME).launchd_label


def test_plist_refuses_control_characters_xml_cannot_carry() -> None:
    with pytest.raises(ValueError, match="control character"):
        plist_for(Path("/srv/root\x01"))


def test_validate_plist_rejects_what_launchd_could_not_load() -> None:
    good = plistlib.loads(plist_for(ROOT))

    with pytest.raises(InvalidPlistError, match="not an XML property list"):
        validate_plist(b"<plist><dict><key>Label</key>")
    with pytest.raises(InvalidPlistError, match="missing key ProgramArguments"):
        validate_plist(plistlib.dumps({k: v for k, v in good.items() if k != "ProgramArguments"}))
    with pytest.raises(InvalidPlistError, match="ThrottleInterval must be an integer"):
        validate_plist(plistlib.dumps({**good, "ThrottleInterval": True}))
    with pytest.raises(InvalidPlistError, match="RunAtLoad has type str"):
        validate_plist(plistlib.dumps({**good, "RunAtLoad": "yes"}))
    with pytest.raises(InvalidPlistError, match="absolute path"):
        validate_plist(plistlib.dumps({**good, "ProgramArguments": ["spec-kitty-supervisor"]}))
    with pytest.raises(InvalidPlistError, match="top level is a list"):
        validate_plist(plistlib.dumps([1]))


# Committed examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(example_units()))
def test_committed_example_equals_the_renderers_output(relative: str) -> None:
    committed = REPO / relative

    assert committed.read_bytes() == example_units()[relative], (
        f"{relative} drifted from the renderer; if the change is deliberate, run "
        '`.venv/bin/python -c "from spec_kitty_supervisor._units import write_examples as w; '
        "w('.')\"`"
    )


def test_examples_cover_both_systemd_units_and_the_launch_agent() -> None:
    assert sorted(example_units()) == [
        "launchd/dev.spec-kitty.supervisor.plist",
        "systemd/spec-kitty-supervisor.service",
        "systemd/spec-kitty-supervisor.socket",
    ]

"""The spawn shape: what we build is what upstream tools (and our own parser) recognise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spec_kitty_supervisor._daemon_shape import (
    DAEMON_EXEC_MARKER,
    DAEMON_ROOT_MARKER,
    build_daemon_argv,
    daemon_script,
    parse_cmdline,
)

TOKEN = "0123456789abcdef0123456789abcdef"
ROOT = "/home/ada/.spec-kitty"
PYTHON = "/home/ada/.venvs/sk/bin/python"
RESOLVED_PYTHON = "/usr/lib/python3.11/bin/python3.11"

tokens = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
ports = st.integers(min_value=1, max_value=65535)
paths = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1).map(
    lambda tail: "/" + tail
)


def test_built_argv_is_byte_for_byte_the_upstream_shape() -> None:
    argv = build_daemon_argv(PYTHON, RESOLVED_PYTHON, ROOT, 9401, TOKEN)

    # Upstream (3.2.4 specify_cli/sync/daemon.py) dedents a triple-quoted f-string, so the
    # script ends with a newline and the token is repr()'d.
    assert argv == [
        PYTHON,
        "-c",
        "import os\n"
        'os.environ["SPEC_KITTY_SYNC_MINIMAL_IMPORT"] = "1"\n'
        "from specify_cli.sync.daemon import run_sync_daemon\n"
        f"run_sync_daemon(9401, {TOKEN!r})\n",
        f"--spec-kitty-daemon-root={ROOT}",
        f"--spec-kitty-daemon-exec={RESOLVED_PYTHON}",
    ]


def test_built_argv_parses_back_to_its_port_token_and_markers() -> None:
    facts = parse_cmdline(build_daemon_argv(PYTHON, RESOLVED_PYTHON, ROOT, 9417, TOKEN))

    assert facts.spawn_shape
    assert facts.argv_port == 9417
    assert facts.argv_token == TOKEN
    assert facts.root_marker == ROOT
    assert facts.exec_marker == RESOLVED_PYTHON
    assert facts.executable == PYTHON


@given(python=paths, resolved=paths, root=paths, port=ports, token=tokens)
def test_every_built_argv_round_trips_through_the_parser(
    python: str, resolved: str, root: str, port: int, token: str
) -> None:
    facts = parse_cmdline(build_daemon_argv(python, resolved, root, port, token))

    assert facts.spawn_shape
    assert (facts.argv_port, facts.argv_token) == (port, token)
    assert (facts.root_marker, facts.exec_marker, facts.executable) == (root, resolved, python)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="empty argv (kernel thread, unreadable)"),
        pytest.param(["/usr/bin/python3", "-m", "http.server", "9401"], id="http.server"),
        pytest.param(["/usr/bin/python3", "-c", "print('hi')"], id="another -c script"),
        pytest.param(
            ["/usr/bin/python3", "-c"], id="-c as the last element, with no script after it"
        ),
        pytest.param(
            ["/usr/bin/python3", "run_sync_daemon(9401, 'x')"], id="the script without -c"
        ),
        pytest.param(["/usr/bin/nginx", "-g", "daemon off;"], id="a third-party server"),
    ],
)
def test_non_daemon_argv_is_not_spawn_shaped(argv: list[str]) -> None:
    facts = parse_cmdline(argv)

    assert not facts.spawn_shape
    assert facts.argv_port is None
    assert facts.argv_token is None


def test_markers_are_read_even_without_the_spawn_shape() -> None:
    # A marker alone proves nothing (anyone can put it in argv), but doctor reports it.
    facts = parse_cmdline(["/bin/sleep", "1000", f"{DAEMON_ROOT_MARKER}{ROOT}"])

    assert not facts.spawn_shape
    assert facts.root_marker == ROOT
    assert facts.exec_marker is None


def test_pre_marker_daemon_is_spawn_shaped_without_a_root() -> None:
    # Daemons spawned before the marker existed carry only the interpreter and the script.
    facts = parse_cmdline([PYTHON, "-c", daemon_script(9403, TOKEN)])

    assert facts.spawn_shape
    assert facts.root_marker is None
    assert facts.exec_marker is None
    assert (facts.argv_port, facts.argv_token) == (9403, TOKEN)


def test_port_and_token_are_parsed_whatever_the_spacing_and_quotes() -> None:
    script = (
        f'from specify_cli.sync.daemon import run_sync_daemon\nrun_sync_daemon(  9412 ,"{TOKEN}")'
    )

    facts = parse_cmdline([PYTHON, "-c", script])

    assert (facts.argv_port, facts.argv_token) == (9412, TOKEN)


def test_a_malformed_token_is_not_read_as_one() -> None:
    # Upstream tokens are 32 lowercase hex characters; anything else is not a token.
    facts = parse_cmdline([PYTHON, "-c", "run_sync_daemon(9412, 'NOT-A-TOKEN')"])

    assert facts.spawn_shape
    assert facts.argv_port == 9412
    assert facts.argv_token is None


def test_the_first_marker_of_each_kind_wins() -> None:
    facts = parse_cmdline(
        [
            PYTHON,
            "-c",
            daemon_script(9401, TOKEN),
            f"{DAEMON_ROOT_MARKER}{ROOT}",
            f"{DAEMON_ROOT_MARKER}/elsewhere",
            f"{DAEMON_EXEC_MARKER}{RESOLVED_PYTHON}",
        ]
    )

    assert facts.root_marker == ROOT

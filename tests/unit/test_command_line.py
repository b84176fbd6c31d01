"""The command line builds only the parser of the command it runs, and parses it the same."""

from __future__ import annotations

import argparse

import pytest

from spec_kitty_supervisor._cli import _COMMAND_PARSERS, _build_parser, _named_command

#: One valid command line per command name, each with the options it takes.
COMMAND_LINES = {
    "run": ["run", "--root", "/r", "--port-range", "9430-9440", "--heartbeat-seconds", "2"],
    "ensure": ["ensure", "--json", "--python", "/usr/bin/python3", "--show-token"],
    "status": ["status", "--json"],
    "stop": ["stop", "--children"],
    "events": ["events", "--since", "4", "--limit", "9"],
    "retire": ["retire", "--pid", "12"],
    "restart": ["restart"],
    "doctor": ["doctor", "--json", "--reset", "--force", "--root", "/r"],
    "install-service": ["install-service", "--root", "/r"],
    "uninstall-service": ["uninstall-service", "--root", "/r"],
    "integrate": ["integrate", "--json"],
}


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_every_command_has_a_command_line_here() -> None:
    assert set(COMMAND_LINES) == {name for names, _ in _COMMAND_PARSERS for name in names}


@pytest.mark.parametrize("name", sorted(COMMAND_LINES))
def test_a_command_parses_the_same_with_its_parser_alone(name: str) -> None:
    argv = COMMAND_LINES[name]

    assert _named_command(argv) == name
    alone = _build_parser(name)
    assert name in _subcommands(alone)
    assert alone.parse_args(argv) == _build_parser().parse_args(argv)


def test_doctor_builds_no_other_commands_parser() -> None:
    assert _subcommands(_build_parser(_named_command(["doctor", "--json"]))) == {"doctor"}


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["bogus"], ["-h", "doctor"]])
def test_help_and_errors_before_a_command_get_the_whole_parser(argv: list[str]) -> None:
    assert _named_command(argv) is None
    assert _subcommands(_build_parser(_named_command(argv))) == set(COMMAND_LINES)

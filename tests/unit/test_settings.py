from __future__ import annotations

from pathlib import Path

import pytest

from spec_kitty_supervisor._settings import SettingsError, load_settings, parse_port_range


def test_port_range_is_half_open_lo_hi() -> None:
    assert parse_port_range("9430-9450") == (9430, 9450)


def test_defaults_without_any_source() -> None:
    settings = load_settings(None, environ={})
    assert settings.port_range == (9400, 9450)
    assert settings.heartbeat_seconds == 5.0
    assert settings.idle_retirement_seconds == 900.0
    assert settings.watchdog_seconds == 60.0
    assert settings.idle_exit_seconds == 1800.0


def test_flags_beat_config_which_beats_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('heartbeat_seconds = 2.0\nport_range = "9420-9440"\nwatchdog_seconds = 7\n')
    env = {
        "SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "9",
        "SPEC_KITTY_SUPERVISOR_IDLE_EXIT_SECONDS": "11",
        "SPEC_KITTY_SUPERVISOR_PORT_RANGE": "9430-9450",
    }
    settings = load_settings(config, {"watchdog_seconds": 3.0, "sweep_seconds": None}, env)
    assert settings.heartbeat_seconds == 2.0  # config over environment
    assert settings.idle_exit_seconds == 11.0  # environment only
    assert settings.port_range == (9420, 9440)
    assert settings.watchdog_seconds == 3.0  # flags over config
    assert settings.sweep_seconds == 600.0  # a flag left unset does not override


@pytest.mark.parametrize(
    "value", ["9300-9420", "9440-9460", "9440-9440", "9449-9430", "x-y", "9430"]
)
def test_port_range_outside_family_or_malformed_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="environment"):
        load_settings(None, environ={"SPEC_KITTY_SUPERVISOR_PORT_RANGE": value})


def test_unknown_key_in_config_is_refused_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("heartbeet_seconds = 2\n")
    with pytest.raises(SettingsError, match="heartbeet_seconds"):
        load_settings(config, environ={})


def test_corrupt_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("heartbeat_seconds = = 2\n")
    with pytest.raises(SettingsError, match=str(config)):
        load_settings(config, environ={})


def test_negative_durations_are_refused() -> None:
    with pytest.raises(SettingsError, match="heartbeat_seconds"):
        load_settings(None, environ={"SPEC_KITTY_SUPERVISOR_HEARTBEAT_SECONDS": "-1"})

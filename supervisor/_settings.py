"""Loading :class:`Settings`: environment, then ``config.toml``, then flags (later wins)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spec_kitty_supervisor_client._models import Settings

from ._files import RefusedFile, read_regular_file

__all__ = ["ENV_PREFIX", "SettingsError", "load_settings", "parse_port_range"]

ENV_PREFIX = "SPEC_KITTY_SUPERVISOR_"
#: Settings written as "LO-HI" in the environment and in config.toml.
_RANGES = ("port_range", "scan_range")
MAX_CONFIG_BYTES = 1024 * 1024


class SettingsError(ValueError):
    """Raised when a setting from any source is unknown or invalid; names the source."""


def parse_port_range(text: str) -> tuple[int, int]:
    """``"9430-9450"`` → ``(9430, 9450)``: half-open, like Python's ``range``."""
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError(f"port range {text!r} must look like LO-HI, e.g. 9430-9450")
    try:
        return int(low), int(high)
    except ValueError:
        raise ValueError(f"port range {text!r} must look like LO-HI, e.g. 9430-9450") from None


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field_name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + field_name.upper())
        if raw is None or raw == "":
            continue
        values[field_name] = parse_port_range(raw) if field_name in _RANGES else raw
    return values


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except RefusedFile as exc:
        raise SettingsError(f"{exc}; replace it with a regular file, or remove it") from None
    except OSError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    if raw is None:
        return {}
    import tomllib  # only when there is a config file: most supervisors start without one

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise SettingsError(f"{path}: nested too deeply to be a settings file") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    for field_name in _RANGES:
        if isinstance(data.get(field_name), str):
            data[field_name] = parse_port_range(data[field_name])
    return data


def load_settings(
    config_path: Path | None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the three sources field by field; every error says which source was wrong."""
    merged: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    try:
        sources.append(("environment", _from_env(os.environ if environ is None else environ)))
    except ValueError as exc:
        raise SettingsError(f"environment: {exc}") from exc
    if config_path is not None:
        sources.append((str(config_path), _from_toml(config_path)))
    sources.append(("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    for source, values in sources:
        merged.update(values)
        try:
            Settings.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise SettingsError(f"{source}: {problems}") from None
    return Settings.model_validate(merged)

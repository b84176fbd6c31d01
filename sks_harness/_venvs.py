"""The real spec-kitty-cli releases, installed by ``scripts/spec-kitty-venvs.sh``.

Each lives in ``$SPEC_KITTY_VENVS/spec-kitty-<version>``; a missing one fails the test that
needs it with the command that installs it, never a skip.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from ._errors import MissingVenvError

__all__ = [
    "DEFAULT_ORPHAN_VERSIONS",
    "KNOWN_VERSIONS",
    "SAAS_SYNC_ENV",
    "honours_spec_kitty_home",
    "new_token",
    "spec_kitty_cli",
    "spec_kitty_python",
    "spec_kitty_venv",
    "venvs_dir",
]

#: The releases ``scripts/spec-kitty-venvs.sh`` installs by default.
KNOWN_VERSIONS: tuple[str, ...] = ("3.2.2", "3.2.3", "3.2.4", "3.2.7")
#: The versions of the real-world "18 orphans" machine.
DEFAULT_ORPHAN_VERSIONS: tuple[str, ...] = ("3.2.2", "3.2.3", "3.2.4")
#: Upstream CLIs spawn daemons only when this is truthy; daemons run their sync service then.
SAAS_SYNC_ENV = "SPEC_KITTY_ENABLE_SAAS_SYNC"


def venvs_dir() -> Path:
    """Where the venvs live: ``$SPEC_KITTY_VENVS``, else the install script's own default."""
    configured = os.environ.get("SPEC_KITTY_VENVS", "")
    if configured:
        base = Path(configured).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
        base = Path(cache) / "spec-kitty-supervisor" / "venvs"
    # Absolute but not resolved: upstream puts the venv's own bin/python path in argv[0].
    return Path(os.path.abspath(base))


def spec_kitty_venv(version: str) -> Path:
    """``$SPEC_KITTY_VENVS/spec-kitty-<version>``, or MissingVenvError naming the fix."""
    venv = venvs_dir() / f"spec-kitty-{version}"
    if not (venv / ".installed").is_file() or not (venv / "bin" / "python").exists():
        raise MissingVenvError(
            f"spec-kitty-cli {version} is not installed at {venv}. Install the real releases "
            f"with `SPEC_KITTY_VENVS={venvs_dir()} scripts/spec-kitty-venvs.sh {version}` "
            "(`make test` and `make spec-kitty-venvs` run it for every known version)."
        )
    return venv


def spec_kitty_python(version: str) -> Path:
    """The venv's ``bin/python``, unresolved, as upstream spawners put it in argv[0]."""
    return spec_kitty_venv(version) / "bin" / "python"


def spec_kitty_cli(version: str) -> Path:
    """The venv's real ``spec-kitty`` command."""
    cli = spec_kitty_venv(version) / "bin" / "spec-kitty"
    if not cli.exists():
        raise MissingVenvError(f"{cli} is missing: reinstall with scripts/spec-kitty-venvs.sh")
    return cli


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def honours_spec_kitty_home(version: str) -> bool:
    """3.1.x and 3.2.0-3.2.2 ignore ``SPEC_KITTY_HOME`` and always serve ``$HOME/.spec-kitty``."""
    return _version_key(version) >= (3, 2, 3)


def new_token() -> str:
    """A daemon token the way upstream makes one: 32 lowercase hex characters."""
    return secrets.token_hex(16)

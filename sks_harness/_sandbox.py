"""Throwaway HOMEs: every spec-kitty write of a test stays inside one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Sandbox"]


def _sandbox_parent() -> Path:
    configured = os.environ.get("SKS_TEST_TMPDIR", "")
    if configured:
        return Path(configured)
    parent = Path(tempfile.gettempdir())
    # The supervisor's socket lives in R/supervisor/; a short base keeps it bindable.
    if len(str(parent)) > 40 and Path("/tmp").is_dir():
        return Path("/tmp")
    return parent


@dataclass(frozen=True)
class Sandbox:
    """A throwaway HOME and the daemon root R that spec-kitty derives from it.

    ``base`` holds everything the sandbox owns; ``home`` is ``base/home``; the root is
    ``home/.spec-kitty`` (which every version, 3.2.2 included, serves), or ``base/root`` when
    the sandbox was created with ``separate_root`` (passed to 3.2.3+ as ``SPEC_KITTY_HOME``).
    Paths are resolved, as upstream resolves the root it writes into the argv marker.
    """

    base: Path
    home: Path
    root: Path
    owned: bool = True

    @classmethod
    def create(cls, *, separate_root: bool = False, parent: Path | None = None) -> Sandbox:
        base = Path(tempfile.mkdtemp(prefix="sks-", dir=parent or _sandbox_parent())).resolve()
        home = base / "home"
        root = base / "root" if separate_root else home / ".spec-kitty"
        home.mkdir(mode=0o700)
        root.mkdir(mode=0o700, parents=True)
        return cls(base=base, home=home, root=root.resolve(), owned=True)

    @classmethod
    def at(cls, home: Path, *, root: Path | None = None) -> Sandbox:
        """A sandbox in a folder the caller owns (created if missing, never removed)."""
        home = Path(home).expanduser()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home = home.resolve()
        chosen = Path(root).expanduser() if root is not None else home / ".spec-kitty"
        chosen.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(base=home, home=home, root=chosen.resolve(), owned=False)

    @property
    def root_is_home_default(self) -> bool:
        """True when R is ``$HOME/.spec-kitty``: the only root a 3.2.2 daemon can serve."""
        return self.root == self.home / ".spec-kitty"

    @property
    def state_file(self) -> Path:
        return self.root / "sync-daemon"

    @property
    def lock_file(self) -> Path:
        return self.root / "sync-daemon.lock"

    @property
    def log_file(self) -> Path:
        return self.root / "sync-daemon.log"

    @property
    def owner_file(self) -> Path:
        return self.root / "sync" / "daemon" / "owner.json"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment that keeps every spec-kitty write inside the sandbox.

        Built from scratch rather than copied: the outer ``XDG_*``, ``PYTHONPATH``,
        ``VIRTUAL_ENV`` or ``SPEC_KITTY_*`` of the machine running the tests must not leak in.
        ``SPEC_KITTY_ENABLE_SAAS_SYNC`` is absent, so upstream CLIs spawn no daemon unless a
        test asks for one.
        """
        env = {
            "HOME": str(self.home),
            "SPEC_KITTY_HOME": str(self.root),
            "PATH": os.environ.get("PATH", os.defpath),
        }
        for name in ("LANG", "LC_ALL", "LC_CTYPE", "TMPDIR"):
            value = os.environ.get(name)
            if value:
                env[name] = value
        if extra:
            env.update(extra)
        return env

    def cleanup(self) -> None:
        """Remove the sandbox (only one this object created). Stop its daemons first."""
        if self.owned:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

"""Throwaway spec-kitty venvs that tests may integrate into.

``integrate`` writes into a venv's site-packages, so tests never integrate into the shared
release venvs (``scripts/spec-kitty-venvs.sh``), which other tests use read-only, and never into
a ``spec-kitty`` on the developer's PATH. A throwaway venv is a copy of a shared one: a venv of
its own (its ``pyvenv.cfg``, its ``bin/python``, its site-packages, installed by pip from PyPI
in the original), with the shebangs of its scripts pointed at itself. Copying takes seconds
where ``pip install spec-kitty-cli`` takes a minute or more; nothing is written into the source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ._errors import HarnessError
from ._venvs import spec_kitty_venv

__all__ = ["site_packages", "throwaway_venv", "tree_snapshot"]


def throwaway_venv(version: str, parent: Path, name: str | None = None) -> Path:
    """A private copy of the shared spec-kitty-cli ``version`` venv: ``parent/name``."""
    source = spec_kitty_venv(version)
    target = parent / (name or f"spec-kitty-{version}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=True)
    old, new = str(source).encode(), str(target).encode()
    for script in (target / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        first_line, _, rest = data.partition(b"\n")
        if first_line.startswith(b"#!") and old in first_line:
            script.write_bytes(first_line.replace(old, new) + b"\n" + rest)
    config = target / "pyvenv.cfg"
    config.write_bytes(config.read_bytes().replace(old, new))
    return target


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    if len(found) != 1:
        raise HarnessError(f"{venv} has {len(found)} site-packages folders: {found}")
    return found[0]


def tree_snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``folder``: kind, size and mtime (ns), by relative path."""
    snapshot = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        size = 0 if kind == "dir" else info.st_size
        mtime = 0 if kind == "dir" else info.st_mtime_ns
        snapshot[str(path.relative_to(folder))] = (kind, size, mtime)
    return snapshot

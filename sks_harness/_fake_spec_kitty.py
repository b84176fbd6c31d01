"""Interpreters that *say* a spec-kitty-cli version, without spec-kitty installed.

The supervisor learns an interpreter's version by running it (``_versions``): a test that needs
"an interpreter with spec-kitty-cli 4.0.0rc7" without a daemon to start gets a real venv (no
pip, ~0.1 s) whose site-packages holds only ``spec_kitty_cli-<V>.dist-info/METADATA``. Its
``importlib.metadata`` answers exactly as a real installation's does; importing ``specify_cli``
fails, as it would for a release without a sync daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["fake_spec_kitty_venv", "install_fake_release", "linked_venv", "relink"]


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def install_fake_release(venv: Path, version: str) -> None:
    """Make ``venv`` report ``version`` (replacing whatever release it reported: an upgrade)."""
    site = _site_packages(venv)
    for old in site.glob("spec_kitty_cli-*.dist-info"):
        shutil.rmtree(old)
    dist_info = site / f"spec_kitty_cli-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: spec-kitty-cli\nVersion: {version}\n"
    )


def fake_spec_kitty_venv(folder: Path, version: str) -> Path:
    """A venv under ``folder`` whose interpreter reports spec-kitty-cli ``version``; its python."""
    venv = folder / f"fake-spec-kitty-{version}"
    if not (venv / "bin" / "python").exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
        )
        install_fake_release(venv, version)
    return venv / "bin" / "python"


def linked_venv(folder: Path, release_python: Path) -> Path:
    """A venv under ``folder`` whose site-packages links every entry of a real release's venv.

    It runs real daemons of that release, and :func:`relink` swaps the links for another
    release's in place, the way an upgrade renames entries of site-packages (its ``mtime``
    changes, the interpreter path stays). Costs milliseconds, where a real ``pip install``
    of spec-kitty-cli takes a minute. Returns the venv's ``bin/python``.
    """
    venv = folder / "linked-venv"
    base = os.path.realpath(release_python)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    relink(venv / "bin" / "python", release_python)
    return venv / "bin" / "python"


def relink(python: Path, release_python: Path) -> None:
    """Point the linked venv of ``python`` at the release installed for ``release_python``."""
    site = _site_packages(python.parent.parent)
    source = _site_packages(release_python.parent.parent)
    for entry in site.iterdir():
        if entry.is_symlink():
            entry.unlink()
    for entry in source.iterdir():
        if not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)

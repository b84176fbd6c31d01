"""Read the sync-daemon facts of published spec-kitty-cli wheels: the evidence behind
``supervisor/_releases.py``.

Usage::

    pip download --no-deps --dest WHEELS spec-kitty-cli==3.1.10   # once per release
    python scripts/release_facts.py WHEELS/spec_kitty_cli-*.whl

Prints one line per wheel: whether it ships ``specify_cli/sync/daemon.py``, a digest of the daemon
files (equal digests: the same family), and each fact the release table records, found by the
source text that implements it. A fact printed here is a reason to check the table, not a proof:
the table's docstring names the functions each fact was read from.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile
from pathlib import Path

_DAEMON_FILES = (
    "specify_cli/sync/daemon.py",
    "specify_cli/sync/owner.py",
    "specify_cli/sync/orphan_sweep.py",
)


def facts(wheel: Path) -> dict[str, object]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        if "specify_cli/sync/daemon.py" not in names:
            return {"daemon": False}
        texts = {name: archive.read(name).decode() for name in _DAEMON_FILES if name in names}
        init = archive.read("specify_cli/__init__.py").decode()
    daemon = texts["specify_cli/sync/daemon.py"]
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(texts[name].encode())
    version_lookup = re.search(r'version\("([a-z-]+)"\)', daemon)
    return {
        "daemon": True,
        "family_digest": digest.hexdigest()[:12],
        "root_marker_in_argv": "--spec-kitty-daemon-root=" in daemon,
        "honours_SPEC_KITTY_HOME": "SPEC_KITTY_HOME" in daemon,
        "version_from_distribution": version_lookup.group(1) if version_lookup else None,
        "honours_SPEC_KITTY_CLI_VERSION": "SPEC_KITTY_CLI_VERSION" in daemon,
        "writes_owner_json": "write_owner_record" in daemon,
        "retires_superseded": "_decide_self_retire" in daemon,
        "retires_idle": bool(re.search(r"IDLE[A-Z_]*SECONDS", daemon)),
        "health_daemon_family": '"daemon_family"' in daemon,
        "import_probe_may_add_PYTHONPATH": "PYTHONPATH" in daemon,
        "kitty_env_loaded_on_import": ".kitty.env" in init or "kitty_env" in init,
    }


def main(paths: list[str]) -> int:
    for path in sorted(paths, key=lambda p: Path(p).name):
        release = Path(path).name.split("-")[1]
        described = facts(Path(path))
        print(release, " ".join(f"{key}={value}" for key, value in described.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

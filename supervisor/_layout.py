"""Every file of a daemon root, upstream's and ours, named in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spec_kitty_supervisor_client._errors import UnsafeDirectoryError
from spec_kitty_supervisor_client._paths import (
    ensure_private_dir,
    socket_path_for_root,
    supervisor_dir,
)

__all__ = ["RootLayout"]


@dataclass(frozen=True)
class RootLayout:
    daemon_root: Path

    # Upstream's files (contract document, "Roots and files").
    @property
    def legacy_state(self) -> Path:
        return self.daemon_root / "sync-daemon"

    @property
    def legacy_lock(self) -> Path:
        return self.daemon_root / "sync-daemon.lock"

    @property
    def daemon_log(self) -> Path:
        return self.daemon_root / "sync-daemon.log"

    @property
    def owner_json(self) -> Path:
        return self.daemon_root / "sync" / "daemon" / "owner.json"

    # Ours.
    @property
    def supervisor_dir(self) -> Path:
        return supervisor_dir(self.daemon_root)

    @property
    def socket(self) -> Path:
        return socket_path_for_root(self.daemon_root)

    @property
    def lock(self) -> Path:
        return self.supervisor_dir / "supervisor.lock"

    @property
    def state(self) -> Path:
        return self.supervisor_dir / "state.json"

    @property
    def events(self) -> Path:
        return self.supervisor_dir / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.supervisor_dir / "supervisor.log"

    @property
    def config(self) -> Path:
        return self.supervisor_dir / "config.toml"

    def prepare(self) -> None:
        """Create the root and our private folders, refusing folders that are not ours alone."""
        self.daemon_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.daemon_root.stat().st_uid
        if owner != os.getuid():
            raise UnsafeDirectoryError(
                f"the daemon root {self.daemon_root} belongs to uid {owner}, not to you "
                f"(uid {os.getuid()}); refusing to supervise it"
            )
        ensure_private_dir(self.supervisor_dir)
        ensure_private_dir(self.socket.parent)

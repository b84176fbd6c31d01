"""A sync daemon's ``GET /api/health`` answer, read into what the decisions need.

Pure: standard library only, no I/O (a wall: tests/unit/test_walls.py). ``_probe``
fetches the answer; classification, verification and the lifecycle read it from here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["HealthAnswer"]


class HealthAnswer(NamedTuple):
    """A parsed ``GET /api/health`` answer; None where the daemon's version lacks a field."""

    payload: dict[str, Any]
    status: str | None
    token: str | None
    daemon_family: str | None
    singleton_scope_id: str | None
    protocol_version: int | None
    package_version: str | None
    owner: dict[str, Any] | None
    sync_running: bool
    extra_keys: frozenset[str] = frozenset()

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> HealthAnswer:
        owner = payload.get("owner")
        sync = payload.get("sync")
        protocol = payload.get("protocol_version")
        return cls(
            payload=payload,
            status=_str_or_none(payload.get("status")),
            token=_str_or_none(payload.get("token")),
            daemon_family=_str_or_none(payload.get("daemon_family")),
            singleton_scope_id=_str_or_none(payload.get("singleton_scope_id")),
            protocol_version=protocol if isinstance(protocol, int) else None,
            package_version=_str_or_none(payload.get("package_version")),
            owner=owner if isinstance(owner, dict) else None,
            sync_running=bool(isinstance(sync, dict) and sync.get("running")),
            extra_keys=frozenset(payload),
        )

    @property
    def looks_like_spec_kitty(self) -> bool:
        """Upstream's own test: the answer carries both protocol and package versions."""
        return self.protocol_version is not None and self.package_version is not None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None

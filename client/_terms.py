"""The words and numbers the wire protocol and the supervisor's decisions share.

Pure: standard library only, no I/O (a wall: tests/unit/test_walls.py), so that the
supervisor's pure decision modules can use them without importing pydantic through
``_models``, which re-exports them for the protocol.

The sync family range is decided here and nowhere else: every "is this port a sync daemon's"
question in either package is :func:`in_family_range`, every "may this configured range be
used" is :func:`family_sub_range_error`.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "FAMILY_PORT_RANGE",
    "CleanupClass",
    "StopPath",
    "family_sub_range_error",
    "in_family_range",
]

#: The sync daemon family's ports, half-open: every upstream tool scans exactly these.
FAMILY_PORT_RANGE = (9400, 9450)

StopPath = Literal["http_shutdown", "terminate", "kill", "already_gone"]
CleanupClass = Literal["supervised", "safe_auto", "operator_required", "never_touch"]


def in_family_range(port: int) -> bool:
    """True when ``port`` is one a sync daemon may listen on (``[9400, 9450)``)."""
    low, high = FAMILY_PORT_RANGE
    return low <= port < high


def family_sub_range_error(low: int, high: int) -> str | None:
    """Why ``[low, high)`` may not serve as a configured port range; None when it may.

    A range must be non-empty and lie inside the family: a wider one would let a sweep or a
    spawn reach ports no sync daemon ever uses.
    """
    family_low, family_high = FAMILY_PORT_RANGE
    if family_low <= low < high <= family_high:
        return None
    return (
        f"port range {low}-{high} must be a non-empty half-open range inside "
        f"{family_low}-{family_high}"
    )

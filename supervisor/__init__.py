"""spec-kitty-supervisor: one long-lived owner for every spec-kitty sync daemon of a root."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

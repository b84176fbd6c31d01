"""What the harness raises when it cannot do what a test asked.

Errors::

    HarnessError (RuntimeError)
    ├── MissingVenvError      a spec-kitty-cli venv is not installed: run the install script
    └── DaemonStartError      a daemon exited, or did not answer its health check in time
"""

from __future__ import annotations

__all__ = ["DaemonStartError", "HarnessError", "MissingVenvError"]


class HarnessError(RuntimeError):
    """The test harness could not do what it was asked; the message says what to fix."""


class MissingVenvError(HarnessError):
    """A real spec-kitty-cli venv is missing. Tests fail on it, never skip: CI installs them."""


class DaemonStartError(HarnessError):
    """A real daemon exited or stayed silent while it should have become healthy."""

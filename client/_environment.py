"""Which of a client's environment variables a sync daemon inherits.

One allow-list, shared: the client sends only these (the warm ``ensure`` stays small), and the
supervisor applies the same list again before it spawns (it never trusts what it was sent). It
is written in :mod:`._wire`, which the hook in spec-kitty's environment shares verbatim.
"""

from __future__ import annotations

from ._wire import PASSED_ENV_NAMES, PASSED_ENV_PREFIXES, passed_environment

__all__ = ["PASSED_ENV_NAMES", "PASSED_ENV_PREFIXES", "passed_environment"]

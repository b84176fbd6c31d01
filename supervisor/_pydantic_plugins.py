"""The supervisor's own process loads no pydantic plugins (docs/adr/0019).

pydantic looks for plugins, the entry points of the ``pydantic`` group of every installed
distribution, the first time it builds a validator, and runs what it finds inside every later
validation. In the supervisor that would be code of whatever else is installed beside it,
running in the process that signals daemons, and observing every request it validates. The
search itself costs every start the import of ``importlib.metadata`` (with ``zipfile``,
``csv`` and ``email``) and a read of every distribution's metadata: about 59 M of the 1.05 G
instructions the supervisor's imports take. ``PYDANTIC_DISABLE_PLUGINS`` skips the running,
not the import and not always the read, so the supervisor's entry point puts a loader that
finds no plugin where pydantic imports its own from, before pydantic is imported.

Only the supervisor's own process does this (``__main__.main``); the client library never
does, since it runs inside other programs, whose plugins are theirs. The one name pydantic
takes from that module is pinned by ``tests/unit/test_pydantic_plugins.py``. Standard library
only: the first stage imports this.
"""

from __future__ import annotations

import sys
import types

__all__ = ["LOADER_MODULE", "disable_pydantic_plugins"]

#: Where pydantic imports ``get_plugins`` from (``pydantic.plugin._schema_validator``).
LOADER_MODULE = "pydantic.plugin._loader"


def _no_plugins() -> tuple[()]:
    return ()


def disable_pydantic_plugins() -> bool:
    """Make pydantic find no plugin in this process; False when its own loader was imported
    already (then nothing is replaced: a loader in use is never swapped)."""
    if LOADER_MODULE in sys.modules:
        return False
    loader = types.ModuleType(
        LOADER_MODULE, "pydantic's plugin loader, finding none (spec-kitty-supervisor, ADR 0019)"
    )
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[LOADER_MODULE] = loader
    return True

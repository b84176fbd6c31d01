"""The lifecycle of one root's sync daemons: a small core of decisions behind one seam.

```
_decisions   pure verdicts: retired or died, restart or quarantine, watchdog or idle
_effects     the seam: the Effects and Clock protocols, and the values that cross it
_real        the real effects, over _spawn, _probe, _verify, _signals, _legacy_state, ...
_lifecycle   what every step shares: table, lock, journal writes, R/sync-daemon
_ensure      answer from the table, or spawn (make-before-break, _spawning)
_spawning    spawn, wait healthy, switch table and state file, retire the old
_retiring    state file first, graceful stop, forget
_exits       watch, reap, retire or restart (backoff) or quarantine; the wedged restart
_heartbeat   one tick: observe, record, decide, act
_adoption    start-up recovery, adopting the recorded daemon, following upstream CLIs
_sweeps      orphan sweeps on the supervisor's schedule
```

:class:`.._core.Supervisor` builds a :class:`Lifecycle` over :class:`RealEffects`; the unit
tests build one over fakes.
"""

from __future__ import annotations

from ._adoption import adopt_recorded, follow_recorded, recover
from ._decisions import Rules
from ._effects import Clock, Effects, SpawnContext
from ._ensure import ensure, lift_quarantine, take_over_early_spawn
from ._exits import on_exit, restart_wedged, watch_exits
from ._fencing import FencedEffects
from ._heartbeat import tick
from ._lifecycle import Lifecycle, StepLock, rules_from
from ._real import LEGACY_LOCK_WAIT, RealEffects, SystemClock
from ._retiring import retire, retire_later, retire_now, stop_all
from ._sweeps import sweep_orphans, sweep_orphans_forever

__all__ = [
    "LEGACY_LOCK_WAIT",
    "Clock",
    "Effects",
    "FencedEffects",
    "Lifecycle",
    "RealEffects",
    "Rules",
    "SpawnContext",
    "StepLock",
    "SystemClock",
    "adopt_recorded",
    "ensure",
    "follow_recorded",
    "lift_quarantine",
    "take_over_early_spawn",
    "on_exit",
    "recover",
    "restart_wedged",
    "retire",
    "retire_later",
    "retire_now",
    "rules_from",
    "stop_all",
    "sweep_orphans",
    "sweep_orphans_forever",
    "tick",
    "watch_exits",
]

"""How fast the machine itself ran while a benchmark did: its steal time and a fixed workload.

The load average says how many processes of this machine wanted a CPU. It does not say that
a virtual machine's host ran something else for a while, and this VM has minutes in which
everything is slower (docs/performance.md, "The fully cold path, session 10"): the same cold
start took 358 ms, then 461 ms three minutes later, with nothing else running here. Two
gauges are read before and after each benchmark and printed with it, so that a figure taken
in such a minute can be told from one that got worse:

- **steal**: the CPU time the hypervisor gave to others while this VM wanted it (the eighth
  number of ``/proc/stat``'s ``cpu`` line, in clock ticks). None where it cannot be read;
- **pace**: how long a fixed piece of pure Python takes here (building and sorting a
  dictionary's values, the median of five runs after one untimed). Only comparable on the
  same machine.

Neither changes a verdict: they are reported beside the figures, never used to correct them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from ._common import median

__all__ = [
    "Gauges",
    "describe",
    "during",
    "pace_ms",
    "read_gauges",
    "steal_seconds",
    "steal_ticks",
]

#: The fixed workload's size: about 3-5 ms on this project's 2-CPU VM when it is quiet.
_PACE_ITEMS = 20_000
_PACE_RUNS = 5
_PROC_STAT = "/proc/stat"


class Gauges(NamedTuple):
    steal_s: float | None
    pace_ms: float


def steal_ticks(proc_stat: str) -> int | None:
    """The steal column of ``/proc/stat``'s aggregate ``cpu`` line; None when it has none."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields[:1] == ["cpu"]:
            # cpu user nice system idle iowait irq softirq steal ...: kernels before 2.6.11
            # end before the steal column.
            if len(fields) < 9 or not fields[8].isdigit():
                return None
            return int(fields[8])
    return None


def steal_seconds() -> float | None:
    """This machine's steal time so far, in seconds; None where it is not reported."""
    try:
        with open(_PROC_STAT, encoding="ascii") as stat:
            ticks = steal_ticks(stat.read())
    except (OSError, UnicodeDecodeError):
        return None
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def _workload() -> None:
    values = {index: str(index) for index in range(_PACE_ITEMS)}
    sorted(values.values())


def pace_ms(
    workload: Callable[[], None] = _workload,
    clock: Callable[[], float] = time.perf_counter,
    runs: int = _PACE_RUNS,
) -> float:
    """The median time of ``runs`` runs of ``workload``, in milliseconds, after one untimed
    run (the first one also takes its memory from the system: 10 ms against 5 ms here)."""
    workload()
    took = []
    for _ in range(runs):
        began = clock()
        workload()
        took.append(clock() - began)
    return median(took) * 1000


def read_gauges() -> Gauges:
    return Gauges(steal_s=steal_seconds(), pace_ms=pace_ms())


def during(before: Gauges, after: Gauges) -> dict[str, float | None]:
    """What the JSON keeps of one benchmark's gauges: the steal between them, both paces."""
    stolen = (
        None
        if before.steal_s is None or after.steal_s is None
        else round(after.steal_s - before.steal_s, 2)
    )
    return {
        "steal_s": stolen,
        "pace_ms_before": round(before.pace_ms, 2),
        "pace_ms_after": round(after.pace_ms, 2),
    }


def describe(gauges: Mapping[str, float | None]) -> str:
    """One benchmark's :func:`during`, as the run prints it."""
    stolen = gauges["steal_s"]
    steal = "steal not reported" if stolen is None else f"steal {stolen:.2f} s"
    return f"{steal}, pace {gauges['pace_ms_before']:.1f} → {gauges['pace_ms_after']:.1f} ms"

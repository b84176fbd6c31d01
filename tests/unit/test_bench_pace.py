"""The bench's machine gauges (``bench/_pace.py``): what they read, never how fast anything is."""

from __future__ import annotations

from bench._pace import Gauges, describe, during, pace_ms, steal_ticks

# A 2-CPU guest's /proc/stat, as this project's VM writes it (trimmed after the cpu lines).
PROC_STAT = """\
cpu  8986298 120245 907959 6521703 32702 0 24721 29037 0 0
cpu0 4456648 57794 454544 3298397 19443 0 9758 14565 0 0
cpu1 4529649 62451 453415 3223306 13258 0 14962 14472 0 0
intr 1 2 3
"""


def test_steal_is_the_eighth_number_of_the_aggregate_cpu_line() -> None:
    assert steal_ticks(PROC_STAT) == 29037


def test_no_steal_is_reported_where_the_kernel_writes_none() -> None:
    assert steal_ticks("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n") is None  # before 2.6.11
    assert steal_ticks("cpu0 1 2 3 4 5 6 7 8 9\n") is None  # no aggregate line
    assert steal_ticks("cpu  1 2 3 4 5 6 7 x 9\n") is None
    assert steal_ticks("") is None


def test_the_pace_is_the_median_of_the_workloads_runs() -> None:
    # Durations 0.5, 2, 0.25, 1 and 2 s (exact in binary): their median is 1 s.
    readings = iter([0.0, 0.5, 1.0, 3.0, 4.0, 4.25, 5.0, 6.0, 8.0, 10.0])
    runs: list[int] = []

    def workload() -> None:
        runs.append(1)

    assert pace_ms(workload, clock=lambda: next(readings), runs=5) == 1000.0
    assert len(runs) == 6  # one untimed first


def test_the_steal_during_a_benchmark_is_the_difference_and_unknown_stays_unknown() -> None:
    measured = during(Gauges(10.0, 9.0), Gauges(10.75, 12.5))
    assert measured == {"steal_s": 0.75, "pace_ms_before": 9.0, "pace_ms_after": 12.5}
    assert describe(measured) == "steal 0.75 s, pace 9.0 → 12.5 ms"

    unknown = during(Gauges(None, 9.0), Gauges(None, 9.0))
    assert unknown["steal_s"] is None
    assert describe(unknown) == "steal not reported, pace 9.0 → 9.0 ms"

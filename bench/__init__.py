"""Side-by-side benchmarks: the supervisor against the real upstream ``spec-kitty-cli``.

``python -m bench [--only NAME ...] [--full] [--json PATH]`` (``make bench`` runs the default
set). Every figure is a median (or p50/p90) of samples measured on this machine, next to the
same operation done by the published upstream release, and the table reports their ratio
against the project's targets (listed in docs/performance.md). These are
measurements, not tests: a missed target is reported, never retried until it passes.

Every benchmark runs in a throwaway HOME (never the real ``~/.spec-kitty``) and stops every
process it started by pid (through the harness ``sks_harness``: ``DaemonFleet`` and
``SupervisorUnderTest``), never by name. Orphans are placed in ``9400-9425``; supervisors
spawn in ``9425-9450``.
"""

from __future__ import annotations

__all__: list[str] = []

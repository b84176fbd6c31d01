# The harness moved to the top-level package ``sks_harness`` (issue 10). This file exists only
# so that code still importing the old path fails with the fix instead of a bare "No module";
# it is removed before the session ends.
raise ImportError(
    "tests.support is gone: the harness is the top-level package sks_harness. "
    "Write `from sks_harness import DaemonFleet, Sandbox, eventually, ...`"
)

"""Developer scripts. Those written in Python run from the repository root as modules
(``python -m scripts.demo``), which makes the harness package ``sks_harness`` importable
without touching ``sys.path``."""

# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SPEC_KITTY_VENVS ?= $(HOME)/.cache/spec-kitty-supervisor/venvs

.PHONY: matrix demo test lint typecheck unit pytest venv spec-kitty-venvs wheel-smoke bench chaos clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

spec-kitty-venvs:
	scripts/spec-kitty-venvs.sh

# Every release 3.1.0-3.2.7 on its real daemon (docs/versions.md): installs the missing venvs
# (in parallel, cached), then prints release x (spawn, reuse, adopt, orphan, swept, stop).
MATRIX_RELEASES ?= 3.1.0 3.1.1 3.1.2 3.1.4 3.1.5 3.1.6 3.1.7 3.1.8 3.1.9 3.1.10 \
	3.2.0 3.2.1 3.2.2 3.2.3 3.2.4 3.2.5 3.2.6 3.2.6.1 3.2.6.2 3.2.7
matrix: venv
	scripts/spec-kitty-venvs.sh $(MATRIX_RELEASES)
	$(BIN)/python -m scripts.matrix $(MATRIX_RELEASES)

demo: venv spec-kitty-venvs
	$(BIN)/python -m scripts.demo

lint: venv
	$(BIN)/ruff check supervisor client sks_harness tests bench scripts
	$(BIN)/ruff format --check supervisor client sks_harness tests bench scripts

# mypy has no package-dir mapping, so it reads the packages through a tree of links that
# carries their import names. The test harness (sks_harness) is held to the same strictness.
typecheck: venv
	@mkdir -p .typecheck
	@ln -sfn ../supervisor .typecheck/spec_kitty_supervisor
	@ln -sfn ../client .typecheck/spec_kitty_supervisor_client
	@ln -sfn ../sks_harness .typecheck/sks_harness
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p spec_kitty_supervisor -p spec_kitty_supervisor_client -p sks_harness

pytest: venv spec-kitty-venvs
	$(BIN)/pytest

wheel-smoke: venv spec-kitty-venvs
	scripts/wheel-smoke.sh

test: lint typecheck pytest wheel-smoke

# The fault suite with more rounds than CI's (tests/chaos/_tally.py), its tallies written as
# JSON and rendered as docs/reliability.md's table. Real ports: on a shared machine run it in a
# private network namespace (unshare -n sh -c 'ip link set lo up && make chaos').
CHAOS_ROUNDS ?= 10
CHAOS_REPORT ?= chaos-report.json
chaos: venv spec-kitty-venvs
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) CHAOS_REPORT=$(CHAOS_REPORT) $(BIN)/pytest -q tests/chaos; \
	  status=$$?; $(BIN)/python -m scripts.reliability_report $(CHAOS_REPORT); exit $$status

bench: venv spec-kitty-venvs
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .typecheck build dist

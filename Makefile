# Every target sets up .venv itself when it is missing: `make quickstart` and `make test` work on a
# fresh machine with only Python 3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Ray 2.59+ turns token auth on once ~/.ray/auth_token exists; our local clusters don't use it.
export RAY_AUTH_MODE ?= disabled

.PHONY: setup quickstart test bench ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

quickstart: setup
	$(BIN)/tricksweep run sweeps/quickstart.yaml

test: setup
	$(BIN)/python -m pytest

# Performance against the alternatives, measured side by side (README, Performance):
# ~15 min on 2 CPUs; BENCH_ARGS=--quick for a few minutes. Writes benchmarks/results/latest.json.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

ui: setup
	$(BIN)/tricksweep ui

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache test-artifacts

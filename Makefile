# Every target sets up .venv itself when it is missing: `make quickstart` and `make test` work on a
# fresh machine with only Python 3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Ray 2.59+ turns token auth on once ~/.ray/auth_token exists; our local clusters don't use it.
export RAY_AUTH_MODE ?= disabled

.PHONY: setup quickstart test test-fast lint browser bench ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

quickstart: setup
	$(BIN)/tricksweep run sweeps/quickstart.yaml

# Test files run in PYTEST_WORKERS processes (pytest-xdist), a file at a time each: module-scoped
# sweeps run once. Three processes on 2 CPUs: while one waits (a worker starting, a server, a driver, a
# paced trial), two compute; with two, 11 % of the CPU time went idle over the suite (up to 25 % where
# two waiting files overlapped). Each process has its own session Ray. PYTEST_WORKERS=0 runs everything in
# one process.
# Files go out in tests/conftest.py's FILE_ORDER (the benchmark smoke first, the smallest files last), not
# xdist's (most tests first).
PYTEST_WORKERS ?= 3
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The whole suite: what CI runs (.ci/run).
test: setup browser
	$(BIN)/python -m pytest $(XDIST) --durations=15  # the slowest tests, for whoever makes the suite faster

# ruff over the whole tree (config in pyproject.toml): seconds, so CI runs it first.
lint: setup
	$(BIN)/ruff check .

# The edit-test loop: all but the multi-process scenarios and the further sweeps (markers `scenario`,
# `slow`); it keeps one end-to-end sweep per way in (CLI, ASHA + MLflow record, own trainable, own data,
# each searcher, a worker's imports).
test-fast: setup
	$(BIN)/python -m pytest $(XDIST) -m "not scenario and not slow"

# What the tests need beyond pip: tests/test_mlflow_ui.py drives Debian's chromium through playwright
# (no `playwright install`). Where it can't be installed, that test fails and says how; it never skips.
CHROMIUM ?= $(or $(TRICKSWEEP_CHROMIUM),/usr/bin/chromium)
browser:
	@[ -x "$(CHROMIUM)" ] || { \
	    sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	    $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	} || echo "warning: could not install chromium; tests/test_mlflow_ui.py will fail" >&2

# Performance against the alternatives, measured side by side (benchmarks/README.md):
# ~20 min on 2 CPUs; BENCH_ARGS=--quick for a few minutes. Writes benchmarks/results/latest.json.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

ui: setup
	$(BIN)/tricksweep ui

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache test-artifacts

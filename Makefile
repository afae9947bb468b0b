# Run `make help` for the list of targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/example.yaml

.DEFAULT_GOAL := help

.PHONY: help install run run-date demo-data lint lint-fix test test-slow docs clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

TEST_STAMP := $(VENV)/.installed-test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,sql,dask,s3]'
	@touch $(TEST_STAMP)

install: $(TEST_STAMP) ## Create .venv with the package and the test tools (make run installs only what running needs)

data/.demo-data: $(STAMP)
	$(PY) -m pipeline.demo data
	@touch $@

demo-data: data/.demo-data ## Generate the deterministic demo input files into data/

# make exits with 2 whenever a command fails: say which exit code the tool gave (see README, Exit codes)
TOOL_EXIT = || { code=$$?; echo "pipeline exited with $$code" >&2; exit $$code; }

run: $(STAMP) demo-data ## Run CONFIG (default configs/example.yaml) on the demo data and print the summary
	$(BIN)/pipeline run $(CONFIG) $(TOOL_EXIT)

DATE ?= yesterday
run-date: $(STAMP) demo-data ## Run configs/daily.yaml for one day: make run-date DATE=2026-11-02
	$(BIN)/pipeline run configs/daily.yaml --param date=$(DATE) $(TOOL_EXIT)

LINT_STAMP := $(VENV)/.installed-dev

$(LINT_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(LINT_STAMP)

lint: $(LINT_STAMP) ## Check style (ruff), types (mypy) and the import layers (lint-imports)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

lint-fix: $(LINT_STAMP) ## Apply ruff's safe fixes (import order, modern syntax), then check again
	$(BIN)/ruff check --fix pipeline tests bench
	$(MAKE) lint

test: $(TEST_STAMP) ## Run the test suite (a few minutes; slow tests excluded)
	$(BIN)/pytest -q -m "not slow"

test-slow: $(TEST_STAMP) ## Run only the slow tests (chaos, large inputs)
	$(BIN)/pytest -q -m slow

BENCH_STAMP  := $(VENV)/.installed-bench
BENCH_SCALE  ?= 1.0
BENCH_REPEAT ?= 3

.PHONY: bench bench-smoke

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Benchmark against DuckDB, Polars, pandas, Dask (BENCH_SCALE=1.0 BENCH_REPEAT=3)
	BENCH_SCALE=$(BENCH_SCALE) BENCH_REPEAT=$(BENCH_REPEAT) $(PY) -m bench

bench-smoke: $(BENCH_STAMP) ## A tiny, quick run of the benchmark (checks it end to end)
	BENCH_SCALE=0.002 BENCH_REPEAT=1 BENCH_RESULTS=bench/work/smoke $(PY) -m bench

docs: $(STAMP) ## Regenerate schema/job.schema.json and docs/configuration.md from the config models
	$(BIN)/pipeline schema > schema/job.schema.json
	$(PY) -m pipeline.commands.reference > docs/configuration.md

clean: ## Remove the virtual environment, generated data and outputs
	rm -rf $(VENV) data build *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache .import_linter_cache

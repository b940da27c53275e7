# One command each: `make repro` sets up and runs the pipeline, `make test` sets up and tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test test-fast lint bench gate clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m "not e2e"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m bench.throughput

gate: setup  # workspace metrics vs main, tolerances from regression.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.check_regression --rev main

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

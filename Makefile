# The command line of the project. `make` alone lists the targets.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The python that creates .venv (pyproject.toml's requires-python or newer): `make PYTHON3=python3.12 ...`.
PYTHON3 ?= python3
# Stages run as `python -m stages.<name>`: the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# `make predict`: the images (files or folders) and the model whose checkpoint reads them.
IMAGES ?=
MODEL  ?= mlp
# `make tune`: trials to finish and DVC queue workers (experiments at once); the model is MODEL. STORAGE: the
# study's journal file (default experiments/studies/<study>.journal) or a database URL that several machines share
# (postgresql+psycopg://user@host/db); PUSH: a git remote to `dvc exp push` this machine's trials to at the end.
TRIALS ?= 12
JOBS   ?= 2
STORAGE ?=
PUSH    ?=
# vega, vega-lite and vega-embed for `dvc plots show` offline (html/dvc_plots.html loads them from
# html/vendor/): the majors DVC's default page loads from a CDN, checked against html/vendor.sha256.
VEGA_PACKAGES := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
VENDOR        := html/vendor
VEGA          := $(VENDOR)/.installed
# `make bench` / `make bench-gpu`: extra options for python -m bench (see python -m bench --help).
BENCH_ARGS ?=
BENCH_DEPS := bench/.deps
# `make test`: pytest-xdist workers, each given whole test modules (their shared fixtures built once): one per
# usable core, at least 2, at most 4 (beyond that the longest module, the views' sweep, bounds the suite).
TEST_WORKERS ?= $(shell $(PYTHON3) -c 'import os; cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(); print(min(4, max(2, cores or 2)))' 2>/dev/null || echo 2)

.DEFAULT_GOAL := help
.PHONY: help repro verify test test-fast report tune predict bench bench-gpu lint format clean-venv lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

repro: $(STAMP) ## run the whole pipeline (dvc repro); creates .venv first if missing
	@$(MAKE) --no-print-directory $(VEGA) || echo "warning: no offline copy of vega: dvc plots show's charts stay blank" >&2
	dvc repro

verify: $(STAMP) ## did I reproduce the committed results? reruns the pipeline in a throwaway copy, compares
	$(PYTHON) -m mnistlab.verify

test: $(STAMP) $(VEGA) ## all tests, the slow end-to-end ones included (what CI runs); a worker per core, 2 to 4
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-fast: $(STAMP) $(VEGA) ## unit tests only (no slow marker)
	$(PYTHON) -m pytest -m "not slow"

report: $(STAMP) ## every experiment of HEAD on one offline page: reports/experiments.html [SORT=val_acc.mlr] [REV=commit]
	@$(MAKE) --no-print-directory $(VEGA)
	$(PYTHON) -m mnistlab.report reports/experiments.html $(if $(SORT),--sort-by $(SORT)) $(if $(REV),--rev $(REV))

tune: $(STAMP) ## each trial a DVC experiment: [MODEL=mlr] [TRIALS=12] [JOBS=2] [STUDY=] [STORAGE=url] [PUSH=origin]
	$(PYTHON) -m mnistlab.tune --model $(MODEL) --trials $(TRIALS) --jobs $(JOBS) $(if $(STUDY),--study $(STUDY)) \
	  $(if $(STORAGE),--storage $(STORAGE)) $(if $(PUSH),--push $(PUSH))

predict: $(STAMP) ## top-3 digits for your images: make predict IMAGES="a.png folder/" [MODEL=mlr] [JSON=1] [SHOW=DIR]
	@test -n "$(IMAGES)" || { echo 'usage: make predict IMAGES="digit.png my_digits/" [MODEL=mlr] [JSON=1] [SHOW=DIR]' >&2; exit 2; }
	$(PYTHON) -m mnistlab.predict --model $(MODEL) $(if $(JSON),--json) $(if $(SHOW),--show $(SHOW)) $(IMAGES)

bench: $(STAMP) $(BENCH_DEPS)/.installed ## CPU benchmark vs the lab's code (real ISLP): tables, bench/results.json
	$(PYTHON) -m bench $(BENCH_ARGS)

# Any python3 with torch, Lightning, torchmetrics, torchvision, pandas, matplotlib, PyYAML and pydantic:
# no .venv, DVC or torchinfo needed. Reads the repository and data/MNIST/raw (or BENCH_ARGS="--data-root DIR").
bench-gpu: ## GPU table: fits, plain loop, CUDA graphs, stage times; writes bench/results_gpu.json
	python3 -m bench --gpu $(BENCH_ARGS)

lint: $(STAMP) ## ruff: format check and lint
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

format: $(STAMP) ## ruff: format and fix
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# ISLP 0.6.0 and what `import ISLP` needs, for the bench's lab's way only: not in the project's .venv.
$(BENCH_DEPS)/.installed: bench/requirements.txt | $(STAMP)
	rm -rf $(BENCH_DEPS)
	$(PYTHON) -m pip install --quiet --no-deps --target $(BENCH_DEPS) -r bench/requirements.txt
	touch $@

# requirements.txt is the lock (from requirements.in by `make lock`): every package, pinned, with its
# hashes. pip installs uv from it, uv installs all of it (faster than pip: docs/install.md); both check
# every hash. First, a python older than pyproject.toml's requires-python stops make with one line.
PYTHON_PROBLEM = $(shell $(if $(wildcard $(PYTHON)),$(PYTHON),$(PYTHON3)) tools/check_python.py 2>&1)
$(STAMP): requirements.txt
	$(if $(PYTHON_PROBLEM),$(error $(PYTHON_PROBLEM)))
	test -x $(PYTHON) || $(PYTHON3) -m venv $(VENV)
	sed -n '/^uv==/,/[^\\]$$/p' requirements.txt | $(PYTHON) -m pip install --quiet --require-hashes -r /dev/stdin
	$(PYTHON) -m uv pip sync --quiet --require-hashes --compile-bytecode --python $(PYTHON) requirements.txt
	touch $@

lock: | $(STAMP) ## resolve requirements.in into requirements.txt, with hashes, for every platform (needs PyPI)
	$(PYTHON) -m uv pip compile --quiet --universal --generate-hashes --no-strip-extras \
	  --python-version $$($(PYTHON) tools/check_python.py --minimum) requirements.in -o requirements.txt

$(VEGA): html/vendor.sha256
	@command -v npm >/dev/null || { echo "npm not found: install Node.js and npm (Debian: apt-get install -y npm)" >&2; exit 1; }
	rm -rf $(VENDOR).partial && mkdir -p $(VENDOR).partial
	cd $(VENDOR).partial && npm pack --silent $(VEGA_PACKAGES) >/dev/null
	cd $(VENDOR).partial && for package in $(VEGA_PACKAGES); do \
	  name=$${package%@*}; tar -xzf $$name-$${package#*@}.tgz -O package/build/$$name.min.js > $$name.min.js; \
	done && rm ./*.tgz && sha256sum --check --quiet ../vendor.sha256
	touch $(VENDOR).partial/.installed && rm -rf $(VENDOR) && mv $(VENDOR).partial $(VENDOR)

clean-venv: ## remove .venv
	rm -rf $(VENV)

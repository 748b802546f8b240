# pilot: `make demo` runs the example pool on the embedded local pool; `make test` runs every test.
# Each target installs what it needs into ignored folders (.venv, .deps) so a fresh clone just works.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := .deps
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv pyz demo test test-deps lint format bench soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed  ## create .venv with pilot, pytest, shiv and ruff

pilot.pyz: $(VENV)/.installed build/build.py build/pilot_boot.py build/requirements.txt $(shell find agent -name '*.py')
	$(PY) build/build.py --output pilot.pyz

pyz: pilot.pyz  ## build ./pilot.pyz (reproducible zipapp made with shiv)

demo: pilot.pyz  ## run 24 example tasks through two pilots on the embedded local pool
	sh site-configs/demo.sh

test-deps: $(VENV)/.installed  ## install what the tests start: pouchdb-server, picas, Slurm
	sh tests/setup/install.sh

test: pilot.pyz test-deps lint  ## run the tests (installs and starts everything they need)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed  ## ruff check and format check
	$(VENV)/bin/ruff check agent build tests
	$(VENV)/bin/ruff format --check agent build tests

format: $(VENV)/.installed  ## reformat the code with ruff
	$(VENV)/bin/ruff check --fix agent build tests
	$(VENV)/bin/ruff format agent build tests

bench: pilot.pyz test-deps  ## run the benchmarks and print figures against same-run baselines
	sh tests/benchmarks/install-references.sh
	$(PY) tests/benchmarks/run.py

soak: pilot.pyz test-deps  ## chaos soak on every backend (or BACKEND=local|couchdb|topos): kills, outage (minutes)
	$(PY) tests/soak/soak.py $(if $(BACKEND),--backend $(BACKEND))

clean:  ## remove build outputs and installed test dependencies
	rm -rf $(VENV) $(DEPS) pilot.pyz .demo .pytest_cache .ruff_cache

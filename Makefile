# sandboxd: `make run` and `make test` set everything up first (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ARGS ?=
# Only the directories that exist: ruff fails on a missing one (bench/ comes with issue 4).
LINT_DIRS := $(wildcard sandboxd tests twisted bench)

.PHONY: setup run test lint bench clean test-cgroup2

setup: system-packages $(STAMP)
	@$(BIN)/sandboxd-warm

.PHONY: system-packages
system-packages:
	@PYTHON=$(PYTHON) bash scripts/sandbox-tools.sh

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "sandboxd needs Python 3.11+"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c 'from twisted.plugin import getPlugins, IPlugin; list(getPlugins(IPlugin))'
	touch $(STAMP)

.PHONY: test-tools
test-tools:
	@PYTHON=$(PYTHON) bash scripts/sandbox-tools.sh --test

run: setup
	$(BIN)/twistd -n sandboxd $(ARGS)

test: setup test-tools
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q tests

# The cgroup-dependent system tests in a cgroup-v2 Linux (Debian packages, user-mode-linux),
# built once and cached in /var/cache/sandboxd-cgroup2: see docs/operations.md.
test-cgroup2: setup
	bash scripts/cgroup2/run.sh

lint: setup
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/hadolint Dockerfile

bench: setup
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) build *.egg-info

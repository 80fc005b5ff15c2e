# Crewgraph — developer entry points. Everything installs from the lock file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: install run test test-long lint typecheck schema bench clean docker-up sandbox-image

$(UV):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.9

install: $(UV)  ## install the project and dev tools exactly as locked (idempotent)
	$(UV) sync --frozen --extra dev --quiet

run: install  ## serve on embedded PostgreSQL + Redis unless DATABASE_URL / REDIS_URL are set
	$(BIN)/crewgraph serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schema: install  ## re-export graphql/schema.graphql after changing the schema
	$(BIN)/crewgraph export-schema

test: install lint  ## lint + the whole test suite (short modes of slow tests)
	$(BIN)/pytest -q -p no:cacheprovider

test-long: install
	CREWGRAPH_LONG_TESTS=1 $(BIN)/pytest -q -m "slow or not slow"

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

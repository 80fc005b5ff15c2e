# Crewgraph — developer entry points. Everything installs from the lock file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: install run test test-long fuzz lint typecheck schema bench clean sandbox-up local-model

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
	$(BIN)/lint-imports
	$(BIN)/mypy

schema: install  ## re-export graphql/schema.graphql after changing the schema
	$(BIN)/crewgraph export-schema

# The real tiny model (SmolLM2-135M on llama.cpp) in its own venv under the data dir;
# `crewgraph serve` starts it when present. The first build compiles llama.cpp (~6 min
# on 2 cores, once per clone); reinstalling into the same directory takes seconds.
local-model: install  ## the real tiny local model, from the lock's local-model group
	bash scripts/install-local-model.sh

# The tool sandbox needs a Docker engine (installed from Debian's docker.io and
# started when none answers), bubblewrap, and the locally built image. In CI a
# failure here fails the run; on a laptop without root it only warns, and the
# sandbox tests print why they skip.
sandbox-up:  ## a Docker engine, bubblewrap and the sandbox image (all built locally)
	@if bash scripts/sandbox-deps.sh >&2 && bash scripts/docker-up.sh >/dev/null \
	    && bash scripts/build-sandbox-image.sh >&2; then echo "sandbox ready"; \
	  elif [ "$${CI:-}" = "true" ]; then echo "sandbox setup failed" >&2; exit 1; \
	  else echo "WARNING: sandbox setup failed; sandbox tests will skip" >&2; fi

test: install lint sandbox-up  ## lint + the whole test suite (short modes of slow tests)
	[ -f .crewgraph/docker.env ] && . .crewgraph/docker.env; \
	if [ "$${CI:-}" = "true" ]; then export CREWGRAPH_REQUIRE_SANDBOX=docker,bubblewrap; fi; \
	$(BIN)/pytest -q -p no:cacheprovider

test-long: install
	CREWGRAPH_LONG_TESTS=1 $(BIN)/pytest -q -m "slow or not slow"

# The standing attack suite at length: the schema fuzzer with many examples and every
# injection payload in every argument (make test runs the short mode).
CREWGRAPH_FUZZ_EXAMPLES ?= 2000
fuzz: install  ## long property-based fuzzing of the live schema (CREWGRAPH_FUZZ_EXAMPLES)
	CREWGRAPH_FUZZ_EXAMPLES=$(CREWGRAPH_FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider \
	  tests/security/test_fuzz.py tests/security/test_injection.py \
	  tests/security/test_cross_tenant_sweep.py tests/security/test_jwt_attacks.py

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

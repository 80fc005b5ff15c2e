# Crewgraph — developer entry points. Everything installs from the lock file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: install run test test-long fuzz lint typecheck schema bench clean sandbox-up local-model \
	vendor browser-up deploy-deps image compose-smoke

$(UV):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.9

install: $(UV) vendor  ## install the project and dev tools exactly as locked (idempotent)
	$(UV) sync --frozen --extra dev --quiet
	@# The TypeScript client examples' packages (examples/typescript, its own lock); without
	@# Node.js they are skipped and their tests say why (in CI they fail instead).
	@if bash scripts/install-examples.sh; then :; \
	  elif [ "$${CI:-}" = "true" ]; then echo "client examples install failed" >&2; exit 1; \
	  else echo "WARNING: client examples not installed; their tests will skip" >&2; fi

# GraphiQL's and the dashboard's browser libraries: `npm ci` from frontend/package-lock.json
# (every tarball checked against the lock's integrity hash; skipped when node_modules already
# matches), then the served files copied to server/static/vendor (frontend/vendor.py). Node.js
# and npm are needed here only, never at run time. In CI a failure fails the run; on a laptop
# without npm it only warns (GraphiQL then says how to get its files).
vendor: $(UV)  ## the locked frontend packages' files into server/static/vendor (npm ci)
	@if $(BIN)/python frontend/vendor.py --quiet; then :; \
	  elif [ "$${CI:-}" = "true" ]; then echo "frontend assets failed" >&2; exit 1; \
	  else echo "WARNING: frontend assets missing; GraphiQL and the dashboard need them" >&2; fi

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

# Debian's chromium for the browser tests (tests/browser; Playwright drives it, no browser
# download). In CI a failure fails the run; elsewhere it warns and the browser tests skip.
browser-up:  ## Debian's chromium for the browser tests
	@if bash scripts/browser-deps.sh >&2; then echo "browser ready"; \
	  elif [ "$${CI:-}" = "true" ]; then echo "browser setup failed" >&2; exit 1; \
	  else echo "WARNING: chromium missing; browser tests will skip" >&2; fi

# Debian's docker-compose, which validates docker-compose.yml in tests/deploy. In CI a
# failure fails the run; elsewhere it warns and the compose tests skip.
deploy-deps:  ## docker-compose (Debian's) for the deploy/ checks
	@if bash scripts/deploy-deps.sh >&2; then :; \
	  elif [ "$${CI:-}" = "true" ]; then echo "deploy tools setup failed" >&2; exit 1; \
	  else echo "WARNING: docker-compose missing; compose tests will skip" >&2; fi

# The application image (Dockerfile) on a locally built Debian base: no registry here.
# CREWGRAPH_BASE_IMAGE=python:3.11-slim-bookworm uses a public base where one can be pulled.
image: vendor  ## the crewgraph/crewgraph:dev image (API and worker), built locally
	bash scripts/build-image.sh

# docker-compose.yml up for real with the image above, a registration and a flow run by
# the worker, then down (README: Deploying).
compose-smoke: deploy-deps  ## the compose stack's smoke test (builds the image if missing)
	bash scripts/compose-smoke.sh

# The suite and the benchmarks start dozens of Python processes (servers, workers, the CLI):
# where the environment sets PYTHONDONTWRITEBYTECODE, each would compile its ~1,700 modules
# from source again (about half its start-up CPU). Cached bytecode is checked against its
# source file, so an edited module never runs stale.
test test-long fuzz bench: export PYTHONDONTWRITEBYTECODE :=

test: install lint sandbox-up browser-up deploy-deps  ## lint + the whole test suite (short modes of slow tests)
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

#!/usr/bin/env bash
# scripts/compose-smoke.sh — `make compose-smoke`: docker-compose.yml up for real, here.
#
# Starts api, worker, PostgreSQL, Redis and MongoDB with docker-compose.yml plus
# deploy/compose/smoke.yml (data stores from the app image, host network on free
# loopback ports: no registry and no bridge here), waits for /readyz, registers a team,
# runs a flow that only the worker can finish and a tool in the sandbox engine
# (scripts/compose_smoke_check.py), waits for both health checks, and takes the stack
# down (volumes too) whatever happened. Builds what is missing first: the Docker engine,
# docker-compose, the image, the sandbox image.
#
# Env: CREWGRAPH_IMAGE (default crewgraph/crewgraph:dev), CREWGRAPH_SMOKE_TIMEOUT (300 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { echo "compose-smoke: $*" >&2; }

if [ -z "${DOCKER_HOST:-}" ] && [ -f .crewgraph/docker.env ]; then
  # shellcheck disable=SC1091
  . .crewgraph/docker.env
fi
timeout 10 docker info >/dev/null 2>&1 || eval "$(bash scripts/docker-up.sh)"
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
bash scripts/deploy-deps.sh
export CREWGRAPH_IMAGE="${CREWGRAPH_IMAGE:-crewgraph/crewgraph:dev}"
docker image inspect "$CREWGRAPH_IMAGE" >/dev/null 2>&1 || bash scripts/build-image.sh "$CREWGRAPH_IMAGE" >/dev/null
# The sandbox image, in the engine whose socket the stack gets (skips when present).
bash scripts/build-sandbox-image.sh >&2

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export CREWGRAPH_SMOKE_PG_PORT="$(free_port)" CREWGRAPH_SMOKE_REDIS_PORT="$(free_port)"
export CREWGRAPH_SMOKE_MONGO_PORT="$(free_port)" CREWGRAPH_SMOKE_API_PORT="$(free_port)"
export CREWGRAPH_SMOKE_METRICS_PORT="$(free_port)"
export CREWGRAPH_SECRET_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
export CREWGRAPH_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
sock="${DOCKER_HOST#unix://}"
export CREWGRAPH_DOCKER_SOCK="$sock"
export CREWGRAPH_DOCKER_GID="$(stat -c %g "$sock" 2>/dev/null || echo 0)"
# The smoke talks to loopback only; the scripted local model is off in production.
export CREWGRAPH_EGRESS_ALLOW_PRIVATE=true

project="crewgraph-smoke-$$"
# docker-compose.yml with smoke.yml on top, resolved, minus the API's published port:
# Compose 1.x refuses ports beside network_mode host, and an override file can add
# ports but not take them away. Everything else runs as written.
work="$(mktemp -d)"
chmod 700 "$work"
docker-compose -f docker-compose.yml -f deploy/compose/smoke.yml config >"$work/resolved.yml"
# /usr/bin/python3: Debian's docker-compose brings its python3-yaml.
/usr/bin/python3 - "$work/resolved.yml" <<'PY'
import sys

import yaml

path = sys.argv[1]
with open(path) as f:
    doc = yaml.safe_load(f)
for service in doc["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
with open(path, "w") as f:
    yaml.safe_dump(doc, f, sort_keys=False)
PY
compose=(docker-compose -p "$project" --project-directory . -f "$work/resolved.yml")
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    log "failed; the services' last log lines:"
    "${compose[@]}" logs --no-color --tail=40 >&2 || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

start=$SECONDS
log "up ($project, image $CREWGRAPH_IMAGE, API on 127.0.0.1:$CREWGRAPH_SMOKE_API_PORT)"
"${compose[@]}" up -d >&2
python3 scripts/compose_smoke_check.py "http://127.0.0.1:$CREWGRAPH_SMOKE_API_PORT" \
  "${CREWGRAPH_SMOKE_TIMEOUT:-300}"

# Both long-running services report healthy through the image's HEALTHCHECK.
deadline=$((SECONDS + 120))
for service in api worker; do
  cid="$("${compose[@]}" ps -q "$service")"
  until [ "$(docker inspect --format '{{.State.Health.Status}}' "$cid")" = healthy ]; do
    [ "$SECONDS" -lt "$deadline" ] || { log "$service never became healthy"; exit 1; }
    sleep 2
  done
  log "$service healthy"
done
log "passed in $((SECONDS - start))s"

#!/usr/bin/env bash
# scripts/build-image.sh — build the Crewgraph application image (Dockerfile) here.
#
#   scripts/build-image.sh [IMAGE]      # default crewgraph/crewgraph:dev (CREWGRAPH_IMAGE)
#
# 1. A Docker engine (scripts/docker-up.sh starts one when none answers).
# 2. The base: CREWGRAPH_BASE_IMAGE when set (any python3.11 Debian-like image), else the
#    locally built crewgraph/python-base:bookworm (scripts/build-base-image.sh; no
#    container registry is reachable here).
# 3. `docker build --network host` (the engine here runs without a bridge), handing on
#    the package index this machine is configured with: PIP_INDEX_URL /
#    PIP_EXTRA_INDEX_URL / UV_INDEX_URL / UV_EXTRA_INDEX_URL from the environment, else
#    pip's configuration (`pip config get global.index-url` ...). Only http(s) URLs
#    are handed on: a file:// index on this disk means nothing inside the build. The
#    CA certificates this machine adds go along too (EXTRA_CA_CERTS, builder stage only).
# Prints the build's progress to stderr and the image name on stdout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
image="${1:-${CREWGRAPH_IMAGE:-crewgraph/crewgraph:dev}}"
log() { echo "build-image: $*" >&2; }

if [ -z "${DOCKER_HOST:-}" ] && [ -f .crewgraph/docker.env ]; then
  # shellcheck disable=SC1091
  . .crewgraph/docker.env
fi
if ! timeout 10 docker info >/dev/null 2>&1; then
  eval "$(bash scripts/docker-up.sh)"
fi

base="${CREWGRAPH_BASE_IMAGE:-}"
if [ -z "$base" ]; then
  base="crewgraph/python-base:bookworm"
  bash scripts/build-base-image.sh "$base"
fi

# The configured index, as URLs the build can reach (http/https only, space separated).
reachable() {
  local out="" u
  for u in $1; do
    case "$u" in http://*|https://*) out="${out:+$out }$u" ;; esac
  done
  echo "$out"
}
pip_conf() {
  local v=""
  if command -v pip >/dev/null 2>&1; then
    v="$(pip config get "global.$1" 2>/dev/null || true)"
  fi
  echo "$v"
}
pip_index="$(reachable "${PIP_INDEX_URL:-$(pip_conf index-url)}")"
pip_extra="$(reachable "${PIP_EXTRA_INDEX_URL:-$(pip_conf extra-index-url)}")"
uv_index="$(reachable "${UV_INDEX_URL:-${UV_DEFAULT_INDEX:-}}")"
uv_extra="$(reachable "${UV_EXTRA_INDEX_URL:-${UV_INDEX:-}}")"

# The CA certificates this machine adds to the system's (a TLS-inspecting proxy's, say):
# the build's HTTPS to the index goes the same way. CREWGRAPH_BUILD_CA_CERTS names a
# PEM file to use instead; an empty value hands on none.
if [ -n "${CREWGRAPH_BUILD_CA_CERTS+set}" ]; then
  ca_files="${CREWGRAPH_BUILD_CA_CERTS}"
else
  ca_files="$(ls /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)"
fi
extra_ca=""
for f in $ca_files; do
  [ -r "$f" ] && extra_ca="$extra_ca$(cat "$f")"$'\n'
done

log "docker build $image from $base (pip index: ${pip_index:-default}; uv index: ${uv_index:-default})"
start=$SECONDS
docker build --network host \
  --build-arg "BASE_IMAGE=$base" \
  --build-arg "PIP_INDEX_URL=$pip_index" \
  --build-arg "PIP_EXTRA_INDEX_URL=$pip_extra" \
  --build-arg "UV_INDEX_URL=$uv_index" \
  --build-arg "UV_EXTRA_INDEX_URL=$uv_extra" \
  --build-arg "EXTRA_CA_CERTS=$extra_ca" \
  -t "$image" . >&2
log "built $image in $((SECONDS - start))s ($(docker image inspect "$image" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$image"

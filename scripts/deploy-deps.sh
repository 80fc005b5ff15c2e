#!/usr/bin/env bash
# scripts/deploy-deps.sh — the tools that check deploy/: Debian's docker-compose (for
# `docker-compose config` and `make compose-smoke`), installed only when missing
# (idempotent, instant when present). kubectl (kustomize is built in) comes with the
# machine on this project's kind; without it the Kubernetes tests skip, saying so.
#
# Needs root (or sudo) for apt-get. Env: CREWGRAPH_APT_UPDATE=0 skips `apt-get update`.
set -euo pipefail

command -v docker-compose >/dev/null 2>&1 && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "deploy-deps: not root and no sudo; install Debian's docker-compose yourself" >&2
    exit 1
  fi
fi
echo "deploy-deps: installing docker-compose" >&2
if [ "${CREWGRAPH_APT_UPDATE:-1}" != 0 ]; then
  $SUDO apt-get update -qq >&2 || echo "deploy-deps: apt-get update reported errors (continuing)" >&2
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold docker-compose >&2
echo "deploy-deps: done" >&2

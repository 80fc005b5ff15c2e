#!/usr/bin/env bash
# scripts/build-base-image.sh — build the application's base image from Debian's packages.
#
#   scripts/build-base-image.sh [IMAGE]           # default crewgraph/python-base:bookworm
#   scripts/build-base-image.sh --force           # re-import (reuses the cached tarball)
#   scripts/build-base-image.sh --rebuild-rootfs  # also re-run debootstrap
#
# The Dockerfile's default base is a public Python image; where no container registry
# answers (this workplace), this builds a stand-in the same way
# scripts/build-sandbox-image.sh builds the sandbox image: `debootstrap --variant=minbase`
# with Debian's python3 (3.11 on bookworm), python3-venv (the builder stage bootstraps
# pip from it) and ca-certificates (TLS to the package index), tarred, cached and loaded
# with `docker import`. Nothing is pulled from a registry. `make image` passes the result
# as BASE_IMAGE. Skips everything when the image already exists.
#
# Env (all optional):
#   CREWGRAPH_BASE_IMAGE     image name (default crewgraph/python-base:bookworm)
#   CREWGRAPH_CACHE_DIR      tarball cache (default $HOME/.cache/crewgraph)
#   CREWGRAPH_DEBIAN_SUITE   Debian suite (default bookworm: its python3 is 3.11)
#   CREWGRAPH_DEBIAN_MIRROR  Debian mirror URL (default: the one this machine's apt uses)
# Needs root (debootstrap), a Docker engine (scripts/docker-up.sh) and debootstrap
# (scripts/sandbox-deps.sh installs it).
set -euo pipefail

image="${CREWGRAPH_BASE_IMAGE:-crewgraph/python-base:bookworm}"
force=0; rebuild_rootfs=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --rebuild-rootfs) force=1; rebuild_rootfs=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "build-base-image: unknown option $arg" >&2; exit 2 ;;
    *) image="$arg" ;;
  esac
done
log() { echo "build-base-image: $*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/_debootstrap.sh
. "$here/_debootstrap.sh"
require_docker
skip_if_built "$image" "$force"

# bookworm whatever the host runs: the image's python3 must be 3.11 (requires-python and
# the locked wheels are cp311).
suite="${CREWGRAPH_DEBIAN_SUITE:-bookworm}"
arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
cache_dir="${CREWGRAPH_CACHE_DIR:-$HOME/.cache/crewgraph}"
tarball="$cache_dir/python-base-rootfs-$suite-$arch.tar.gz"
mkdir -p "$cache_dir"

rootfs_tarball "$tarball" "$suite" "$arch" "python3,python3-venv,ca-certificates" \
  crewgraph-base "$rebuild_rootfs"

log "docker import -> $image"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL crewgraph.image=python-base' \
  --change 'CMD ["python3"]' \
  --message "crewgraph base: Debian $suite minbase + python3" \
  "$tarball" "$image" >/dev/null
log "built $image ($(image_size "$image"))"

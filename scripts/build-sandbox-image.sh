#!/usr/bin/env bash
# scripts/build-sandbox-image.sh — build the tool-sandbox image from Debian's packages.
#
#   scripts/build-sandbox-image.sh [IMAGE]        # default crewgraph/sandbox-python:1
#   scripts/build-sandbox-image.sh --force        # rebuild the image (reuses the tarball)
#   scripts/build-sandbox-image.sh --rebuild-rootfs  # also re-run debootstrap
#
# A minimal Debian root (`debootstrap --variant=minbase` + python3; python3-minimal lacks
# json and asyncio) is tarred, cached, and loaded with `docker import`. Nothing is pulled
# from a container registry. Skips everything when the image already exists.
# The runner (sandbox/runner.py) is NOT baked in: any image with python3 works.
#
# Env (all optional):
#   CREWGRAPH_SANDBOX_IMAGE  image name (default crewgraph/sandbox-python:1)
#   CREWGRAPH_CACHE_DIR      tarball cache (default $HOME/.cache/crewgraph); the tarball is
#                            $CREWGRAPH_CACHE_DIR/sandbox-rootfs-<suite>-<arch>.tar.gz
#   CREWGRAPH_DEBIAN_SUITE   Debian suite (default: this machine's VERSION_CODENAME, else bookworm)
#   CREWGRAPH_DEBIAN_MIRROR  Debian mirror URL (default: the one this machine's apt uses)
#   CREWGRAPH_SANDBOX_PACKAGES  extra Debian packages, space separated
# Needs root (debootstrap, docker), a Docker engine (scripts/docker-up.sh) and debootstrap
# (scripts/sandbox-deps.sh installs it).
set -euo pipefail

image="${CREWGRAPH_SANDBOX_IMAGE:-crewgraph/sandbox-python:1}"
force=0; rebuild_rootfs=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --rebuild-rootfs) force=1; rebuild_rootfs=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "build-sandbox-image: unknown option $arg" >&2; exit 2 ;;
    *) image="$arg" ;;
  esac
done
log() { echo "build-sandbox-image: $*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/_debootstrap.sh
. "$here/_debootstrap.sh"
require_docker
skip_if_built "$image" "$force"

suite="${CREWGRAPH_DEBIAN_SUITE:-}"
if [ -z "$suite" ] && [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi
suite="${suite:-bookworm}"
arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
cache_dir="${CREWGRAPH_CACHE_DIR:-$HOME/.cache/crewgraph}"
tarball="$cache_dir/sandbox-rootfs-$suite-$arch.tar.gz"
mkdir -p "$cache_dir"

name_host() { echo sandbox > "$1/etc/hostname"; }
packages="python3,coreutils${CREWGRAPH_SANDBOX_PACKAGES:+,${CREWGRAPH_SANDBOX_PACKAGES// /,}}"
rootfs_tarball "$tarball" "$suite" "$arch" "$packages" crewgraph-rootfs "$rebuild_rootfs" name_host

old_id="$(docker image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)"
log "docker import -> $image"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'WORKDIR /tmp' \
  --change 'USER 65534:65534' \
  --change 'LABEL crewgraph.image=sandbox-python' \
  --change 'CMD ["python3"]' \
  --message "crewgraph sandbox: Debian $suite minbase + python3" \
  "$tarball" "$image" >/dev/null
new_id="$(docker image inspect "$image" --format '{{.Id}}')"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true   # the replaced build, unless in use
fi
log "built $image ($(image_size "$image"))"

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
if [ -z "${DOCKER_HOST:-}" ] && [ -f "${CREWGRAPH_DATA_DIR:-./.crewgraph}/docker.env" ]; then
  # shellcheck disable=SC1090,SC1091
  . "${CREWGRAPH_DATA_DIR:-./.crewgraph}/docker.env"
fi
if ! timeout 10 docker info >/dev/null 2>&1; then
  log "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); run scripts/docker-up.sh first"
  exit 1
fi
if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  log "$image already exists (use --force to rebuild)"
  exit 0
fi

# bookworm whatever the host runs: the image's python3 must be 3.11 (requires-python and
# the locked wheels are cp311).
suite="${CREWGRAPH_DEBIAN_SUITE:-bookworm}"
arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
cache_dir="${CREWGRAPH_CACHE_DIR:-$HOME/.cache/crewgraph}"
tarball="$cache_dir/python-base-rootfs-$suite-$arch.tar.gz"
mkdir -p "$cache_dir"

detect_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri="$(awk '/^URIs:/ {print $2}' "$f" | grep -E '/debian/?$' | head -n1 || true)"
    [ -n "$uri" ] && { echo "${uri%/}"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri="$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; break}}' "$f" \
           | grep -E '/debian/?$' | head -n1 || true)"
    [ -n "$uri" ] && { echo "${uri%/}"; return; }
  done
}

if [ "$rebuild_rootfs" = 1 ] || [ ! -s "$tarball" ]; then
  [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
  command -v debootstrap >/dev/null 2>&1 || bash "$here/sandbox-deps.sh"
  mirror="${CREWGRAPH_DEBIAN_MIRROR:-$(detect_mirror)}"
  [ -n "$mirror" ] || { log "cannot tell the Debian mirror from apt's sources; set CREWGRAPH_DEBIAN_MIRROR"; exit 1; }
  work="$(mktemp -d "${TMPDIR:-/tmp}/crewgraph-base.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  packages="python3,python3-venv,ca-certificates"
  log "debootstrap --variant=minbase $suite ($arch) from $mirror with $packages"
  start=$SECONDS
  debootstrap --variant=minbase --arch="$arch" --include="$packages" \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
  log "debootstrap took $((SECONDS - start))s"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/tmp/* || true
  # Nothing of the build machine in the image: the engine supplies resolv.conf and hosts.
  : > "$rootfs/etc/resolv.conf"
  printf '127.0.0.1 localhost\n' > "$rootfs/etc/hosts"
  log "writing $tarball"
  tar --numeric-owner -C "$rootfs" -cf - . | gzip -1 > "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
else
  log "using cached $tarball"
fi

log "docker import -> $image"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL crewgraph.image=python-base' \
  --change 'CMD ["python3"]' \
  --message "crewgraph base: Debian $suite minbase + python3" \
  "$tarball" "$image" >/dev/null
log "built $image ($(docker image inspect "$image" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"

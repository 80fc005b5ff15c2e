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

detect_mirror() {
  # deb822 sources first, then one-line sources; the first plain Debian archive wins.
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
  work="$(mktemp -d "${TMPDIR:-/tmp}/crewgraph-rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  packages="python3,coreutils${CREWGRAPH_SANDBOX_PACKAGES:+,${CREWGRAPH_SANDBOX_PACKAGES// /,}}"
  log "debootstrap --variant=minbase $suite ($arch) from $mirror with $packages"
  start=$SECONDS
  debootstrap --variant=minbase --arch="$arch" --include="$packages" \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
  log "debootstrap took $((SECONDS - start))s"
  # Trim what a sandbox never needs: package caches, docs, man pages, locales.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/tmp/* || true
  # no secrets in the image: no resolv.conf / hosts from the build machine
  : > "$rootfs/etc/resolv.conf"
  printf '127.0.0.1 localhost\n' > "$rootfs/etc/hosts"
  echo sandbox > "$rootfs/etc/hostname"
  log "writing $tarball"
  tar --numeric-owner -C "$rootfs" -cf - . | gzip -1 > "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
else
  log "using cached $tarball"
fi

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
log "built $image ($(docker image inspect "$image" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"

# scripts/_debootstrap.sh — the steps build-base-image.sh and build-sandbox-image.sh share:
# a Docker engine check, a minimal Debian root from `debootstrap --variant=minbase`,
# trimmed and tarred into a cache (loaded afterwards with `docker import`).
#
# Sourced, not run: the caller has `set -euo pipefail`, defines log() (its own prefix)
# and sets $here (the scripts folder).

# Load the engine address `scripts/docker-up.sh` wrote; exit 1 when no engine answers.
require_docker() {
  if [ -z "${DOCKER_HOST:-}" ] && [ -f "${CREWGRAPH_DATA_DIR:-./.crewgraph}/docker.env" ]; then
    # shellcheck disable=SC1090,SC1091
    . "${CREWGRAPH_DATA_DIR:-./.crewgraph}/docker.env"
  fi
  if ! timeout 10 docker info >/dev/null 2>&1; then
    log "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); run scripts/docker-up.sh first"
    exit 1
  fi
}

# Exit 0 (nothing to do) when IMAGE exists, unless FORCE is 1.
skip_if_built() {
  local image="$1" force="$2"
  if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists (use --force to rebuild)"
    exit 0
  fi
}

# The Debian mirror this machine's apt uses: deb822 sources first, then one-line
# sources; the first plain Debian archive wins.
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

# rootfs_tarball TARBALL SUITE ARCH PACKAGES WORK_PREFIX REBUILD [FINISH]
# Bootstrap SUITE for ARCH with PACKAGES (comma separated) in a fresh
# $TMPDIR/WORK_PREFIX.XXXXXX, trim it, let the function named FINISH (if given) add to
# the root ($1: its path), and write it to TARBALL. Reuses TARBALL unless REBUILD is 1.
rootfs_tarball() {
  local tarball="$1" suite="$2" arch="$3" packages="$4" prefix="$5" rebuild="$6"
  local finish="${7:-}" mirror rootfs start
  if [ "$rebuild" != 1 ] && [ -s "$tarball" ]; then
    log "using cached $tarball"
    return
  fi
  [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
  command -v debootstrap >/dev/null 2>&1 || bash "$here/sandbox-deps.sh"
  mirror="${CREWGRAPH_DEBIAN_MIRROR:-$(detect_mirror)}"
  [ -n "$mirror" ] || { log "cannot tell the Debian mirror from apt's sources; set CREWGRAPH_DEBIAN_MIRROR"; exit 1; }
  # Global, not local: the EXIT trap reads it after this function has returned.
  debootstrap_work="$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")"
  trap 'rm -rf "$debootstrap_work"' EXIT
  rootfs="$debootstrap_work/rootfs"
  log "debootstrap --variant=minbase $suite ($arch) from $mirror with $packages"
  start=$SECONDS
  debootstrap --variant=minbase --arch="$arch" --include="$packages" \
    "$suite" "$rootfs" "$mirror" >"$debootstrap_work/debootstrap.log" 2>&1 || {
      tail -n 30 "$debootstrap_work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
  log "debootstrap took $((SECONDS - start))s"
  # Trim what an image never needs: package caches, docs, man pages, locales.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/tmp/* || true
  # Nothing of the build machine in the image: the engine supplies resolv.conf and hosts.
  : > "$rootfs/etc/resolv.conf"
  printf '127.0.0.1 localhost\n' > "$rootfs/etc/hosts"
  if [ -n "$finish" ]; then "$finish" "$rootfs"; fi
  log "writing $tarball"
  tar --numeric-owner -C "$rootfs" -cf - . | gzip -1 > "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
}

# The image's size, for the last log line.
image_size() {
  docker image inspect "$1" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'
}

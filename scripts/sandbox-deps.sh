#!/usr/bin/env bash
# scripts/sandbox-deps.sh — install the host tools the tool sandbox needs, from
# Debian's packages, only when they are missing (idempotent, fast when present).
#
#   scripts/sandbox-deps.sh            # bubblewrap + debootstrap (+ util-linux tools)
#   scripts/sandbox-deps.sh docker     # ... and Debian's docker.io (dockerd, containerd, runc, tini)
#
# Needs root (or sudo) for apt-get. Env: CREWGRAPH_APT_UPDATE=0 skips `apt-get update`.
set -euo pipefail

want_docker=0
for arg in "$@"; do
  case "$arg" in
    docker) want_docker=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "sandbox-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    extra=""; [ "$want_docker" = 1 ] && extra=" docker.io tini"
    echo "sandbox-deps: not root and no sudo; install these Debian packages yourself: bubblewrap debootstrap$extra" >&2
    exit 1
  fi
fi

# command -> Debian package providing it
declare -A needed=([bwrap]=bubblewrap [debootstrap]=debootstrap [prlimit]=util-linux [setpriv]=util-linux)
if [ "$want_docker" = 1 ]; then
  needed[dockerd]=docker.io
  needed[containerd]=docker.io
  needed[runc]=docker.io
fi

missing=()
for cmd in "${!needed[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
    pkg="${needed[$cmd]}"
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done
# docker-init (tini) backs HostConfig.Init=true
if [ "$want_docker" = 1 ] && [ ! -x /usr/bin/docker-init ] && [ ! -x /usr/sbin/docker-init ] \
   && ! command -v docker-init >/dev/null 2>&1; then
  missing+=(tini)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "sandbox-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if [ "${CREWGRAPH_APT_UPDATE:-1}" != 0 ]; then
  # Third-party sources configured on a machine may be unreachable; Debian's own
  # lists are what we need, so a partial update failure is not fatal.
  $SUDO apt-get update -qq >&2 || echo "sandbox-deps: apt-get update reported errors (continuing)" >&2
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >&2
echo "sandbox-deps: done" >&2

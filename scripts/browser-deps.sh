#!/usr/bin/env bash
# scripts/browser-deps.sh — install the headless browser the browser tests drive
# (Debian's `chromium`, used by Playwright as a system browser: Playwright's own
# browser download is never used), only when it is missing (idempotent, fast when
# present). Fonts come along so screenshots show text.
#
#   scripts/browser-deps.sh            # chromium + fonts
#
# Needs root (or sudo) for apt-get. Env: CREWGRAPH_APT_UPDATE=0 skips `apt-get update`;
# CREWGRAPH_CHROMIUM overrides the browser's path (default /usr/bin/chromium).
set -euo pipefail

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "browser-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

chromium="${CREWGRAPH_CHROMIUM:-/usr/bin/chromium}"
missing=()
[ -x "$chromium" ] || missing+=(chromium)
# Without any font, text renders as boxes in screenshots.
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "browser-deps: not root and no passwordless sudo; install these Debian packages yourself: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "browser-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if [ "${CREWGRAPH_APT_UPDATE:-1}" != 0 ]; then
  # Third-party sources configured on a machine may be unreachable; Debian's own
  # lists are what we need, so a partial update failure is not fatal.
  $SUDO apt-get update -qq >&2 || echo "browser-deps: apt-get update reported errors (continuing)" >&2
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >&2
[ -x "$chromium" ] || { echo "browser-deps: $chromium still missing after install" >&2; exit 1; }
echo "browser-deps: done ($("$chromium" --version 2>/dev/null || echo chromium))" >&2

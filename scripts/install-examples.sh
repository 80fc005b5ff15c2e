#!/usr/bin/env bash
# The TypeScript client examples' npm packages (examples/typescript), exactly as locked:
# `npm ci` from its package-lock.json, through npm's configured registry. Skipped when
# node_modules was installed from the same lock already. Without Node.js/npm it says so
# and exits 0 (the example tests then skip, or fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/../examples/typescript"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "client examples: Node.js and npm not found; skipping examples/typescript" >&2
  exit 0
fi
stamp=node_modules/.crewgraph-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1) $(node --version)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error >&2
echo "$want" > "$stamp"

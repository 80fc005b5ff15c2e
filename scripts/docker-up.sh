#!/usr/bin/env bash
# scripts/docker-up.sh — make sure a Docker engine answers, for the tool sandbox.
#
#   eval "$(scripts/docker-up.sh)"      # prints: export DOCKER_HOST=unix://<sock>
#   . .crewgraph/docker.env             # the same line, written for the Makefile / CI
#
# 1. If an engine already answers (at $DOCKER_HOST, else at the socket below), print
#    its DOCKER_HOST line, write the env file and exit: fast and idempotent.
# 2. Otherwise install Debian's docker.io (plus bubblewrap/debootstrap) through
#    scripts/sandbox-deps.sh when dockerd is missing, start `dockerd` in the background
#    (no iptables, no bridge: sandbox containers run with NetworkMode=none), with the
#    overlay2 storage driver, falling back to vfs when overlay2 does not start, and wait
#    until `docker info` answers.
#
# Env (all optional):
#   CREWGRAPH_DOCKER_SOCK  socket path dockerd listens on (default /var/run/docker.sock,
#                          so plain `docker` and aiodocker find it without DOCKER_HOST)
#   CREWGRAPH_DOCKER_ROOT  dockerd --data-root (default /var/lib/crewgraph-docker)
#   CREWGRAPH_DOCKER_EXEC  dockerd --exec-root (default /run/crewgraph-docker)
#   CREWGRAPH_DATA_DIR     where docker.env and dockerd.log go (default ./.crewgraph)
#   CREWGRAPH_DOCKER_STORAGE  force a storage driver (overlay2 | vfs)
#   CREWGRAPH_DOCKER_WAIT  seconds to wait for the engine (default 60)
# Output: stdout gets only the `export DOCKER_HOST=...` line; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sock="${CREWGRAPH_DOCKER_SOCK:-/var/run/docker.sock}"
data_root="${CREWGRAPH_DOCKER_ROOT:-/var/lib/crewgraph-docker}"
exec_root="${CREWGRAPH_DOCKER_EXEC:-/run/crewgraph-docker}"
state_dir="${CREWGRAPH_DATA_DIR:-./.crewgraph}"
wait_s="${CREWGRAPH_DOCKER_WAIT:-60}"
log() { echo "docker-up: $*" >&2; }

engine_answers() {  # $1 = DOCKER_HOST value
  command -v docker >/dev/null 2>&1 || return 1
  DOCKER_HOST="$1" timeout 10 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1
}

publish() {  # $1 = DOCKER_HOST value
  mkdir -p "$state_dir"
  printf 'export DOCKER_HOST=%s\n' "$1" > "$state_dir/docker.env.tmp"
  mv "$state_dir/docker.env.tmp" "$state_dir/docker.env"
  printf 'export DOCKER_HOST=%s\n' "$1"
}

# 1. already running?
if [ -n "${DOCKER_HOST:-}" ] && engine_answers "$DOCKER_HOST"; then
  publish "$DOCKER_HOST"; exit 0
fi
if [ -S "$sock" ] && engine_answers "unix://$sock"; then
  publish "unix://$sock"; exit 0
fi
[ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$sock" ] && \
  log "no engine answers at DOCKER_HOST=$DOCKER_HOST; starting one at unix://$sock"

if [ "$(id -u)" -ne 0 ]; then
  log "no Docker engine answers and starting dockerd needs root; the sandbox falls back to bubblewrap"
  exit 1
fi

# 2. install what is missing (docker.io, its docker CLI, bubblewrap, debootstrap)
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  bash "$here/sandbox-deps.sh" docker
else
  bash "$here/sandbox-deps.sh" >/dev/null || log "could not install bubblewrap/debootstrap (continuing)"
fi
command -v dockerd >/dev/null 2>&1 || { log "dockerd still missing after install"; exit 1; }

mkdir -p "$state_dir" "$data_root" "$exec_root" "$(dirname "$sock")"
state_dir="$(cd "$state_dir" && pwd)"
logfile="$state_dir/dockerd.log"
pidfile="$exec_root/dockerd.pid"

# A dockerd of ours that is still starting: just wait for it.
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "dockerd (pid $(cat "$pidfile")) is running; waiting for it"
else
  rm -f "$pidfile"
  [ -S "$sock" ] && rm -f "$sock"   # stale socket: nothing answered on it above
  start() {  # $1 = storage driver
    log "starting dockerd (storage driver $1, data root $data_root, log $logfile)"
    nohup setsid dockerd \
      --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
      --storage-driver="$1" --data-root "$data_root" --exec-root "$exec_root" \
      --pidfile "$pidfile" -H "unix://$sock" \
      >>"$logfile" 2>&1 </dev/null &
    echo $!
  }
  wait_for() {  # $1 = pid, $2 = seconds; 0 when the engine answers
    local pid="$1" deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
      engine_answers "unix://$sock" && return 0
      kill -0 "$pid" 2>/dev/null || return 1
      sleep 0.3
    done
    return 1
  }
  drivers="${CREWGRAPH_DOCKER_STORAGE:-overlay2 vfs}"
  ok=0
  for driver in $drivers; do
    pid="$(start "$driver")"
    if wait_for "$pid" "$wait_s"; then ok=1; break; fi
    log "dockerd with $driver did not come up; last log lines:"
    tail -n 5 "$logfile" >&2 || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile" "$sock"
  done
  [ "$ok" = 1 ] || { log "no Docker engine could be started (see $logfile)"; exit 1; }
fi

deadline=$((SECONDS + wait_s))
until engine_answers "unix://$sock"; do
  [ "$SECONDS" -lt "$deadline" ] || { log "engine did not answer within ${wait_s}s (see $logfile)"; exit 1; }
  sleep 0.3
done
log "engine up: $(DOCKER_HOST="unix://$sock" docker info --format '{{.ServerVersion}} {{.Driver}} cgroup {{.CgroupVersion}}' 2>/dev/null)"
publish "unix://$sock"

#!/usr/bin/env bash
# Quick start on one machine (Debian, root): installs what is needed, builds the images from this
# tree, brings up the stack (spawner + egress proxy + gateway stub) with docker-compose, creates a
# session with the operator CLI and runs a command in it. The stack keeps running afterwards.
#
#   scripts/quickstart.sh                  the compose stack (sessions are hardened containers)
#   scripts/quickstart.sh --local-backend  no Docker: sessions are runnerd processes (no isolation);
#                                          runs in the foreground, Ctrl-C stops everything it started
#   scripts/quickstart.sh --down           remove what the quick start created, and say what
#
# Each stage prints one line with its duration; a failing stage prints its log and stops.
# TALE_QUICKSTART_DIR (default /tmp/tale-quickstart) holds the token, logs and local sessions;
# TALE_QUICKSTART_PORT (default 8003) is the spawner's port for --local-backend; TALE_BIN (for
# --local-backend) runs that tale binary instead of building the static one.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${TALE_QUICKSTART_DIR:-/tmp/tale-quickstart}
port=${TALE_QUICKSTART_PORT:-8003}
# The compose project: its containers, networks and volumes carry com.docker.compose.project=tale.
project=tale
# The network the stack's spawner puts its sessions on (compose.yml names it).
session_network=tale-sandbox-net
mkdir -p "$state/logs" && chmod 755 "$state"
[ -s "$state/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/token"
chmod 600 "$state/token"
export SANDBOX_TOKEN=$(cat "$state/token")
compose=(docker-compose -f compose.yml -f compose.local.yml -p "$project" --env-file "$state/.env")
static_bin=${TALE_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/tale}

# step NAME CMD…: runs CMD with its output in a log, prints "NAME … ok (Ns)" or the log's tail.
step() {
  local name=$1 log started ticker status
  shift
  log="$state/logs/$(echo "$name" | tr -c 'a-zA-Z0-9\n' '-').log"
  started=$SECONDS
  printf '%-44s ' "$name"
  # Long stages (the static build takes minutes) show that they are alive.
  # (Its sleep is killed with it, so it holds no pipe open after the stage.)
  ( trap 'kill $nap 2>/dev/null; exit 0' TERM
    while :; do sleep 30 & nap=$!; wait $nap; printf '[%ss] ' $((SECONDS - started)); done ) &
  ticker=$!
  status=0
  "$@" >"$log" 2>&1 || status=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "FAILED after $((SECONDS - started))s (exit $status); the last lines of $log:"
    tail -n 30 "$log" | sed 's/^/    /'
    exit "$status"
  fi
  echo "ok ($((SECONDS - started))s)"
}

# Local sessions are runnerd processes; their pids are in the local backend's state files.
stop_local_runnerds() {
  local file pid stopped=0
  for file in "$state"/sessions/.state/*.json; do
    [ -f "$file" ] || continue
    pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$file")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q runnerd "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" && stopped=$((stopped + 1))
    fi
  done
  echo "$stopped"
}

down() {
  local sessions volumes v n
  # Local backend: runnerds and their workspaces under this quick start's directory only.
  if [ -d "$state/sessions" ]; then
    n=$(stop_local_runnerds)
    rm -rf "$state/sessions"
    echo "removed $n local runnerd(s) and the local sessions under $state/sessions"
  fi
  command -v docker >/dev/null 2>&1 || return 0
  # The stack's sessions (any org): while its spawner runs, destroy them through it (container and
  # workspace volume); then any session container still on the stack's network.
  if [ -x "$state/tale" ] && docker ps -q --filter "label=com.docker.compose.project=$project" --filter name=tale-sandbox | grep -q .; then
    export TALE_SPAWNER_URL=http://127.0.0.1:8003
    for s in $("$state/tale" session --json ls 2>/dev/null | sed -n 's/.*"sessionId": *"\([^"]*\)".*/\1/p'); do
      "$state/tale" session --json rm "$s" >/dev/null && echo "destroyed session $s (container and workspace volume)"
    done
  fi
  sessions=$(docker ps -aq --filter label=tale.sandbox-session=1 --filter "network=$session_network")
  for c in $sessions; do
    v=$(docker inspect -f '{{index .Config.Labels "tale.session"}}' "$c")
    docker rm -f "$c" >/dev/null
    volumes=$(docker volume ls -q --filter label=tale.sandbox-workspace=1 --filter "label=tale.session=$v")
    [ -z "$volumes" ] || docker volume rm $volumes >/dev/null
    echo "removed session container $c (session $v) and its workspace volume(s): ${volumes:-none}"
  done
  # The spawners' shared objects on that network (see README "Several spawner replicas"): claim
  # and network-lock containers, pin marker volumes.
  prefix=tale-claim-$(printf '%s' "$session_network" | sha256sum | cut -c1-12)
  markers=$(docker ps -aq --filter "label=tale.claim=$prefix")
  [ -z "$markers" ] || { docker rm -f $markers >/dev/null && echo "removed the spawners' claim and network-lock containers ($prefix-*)"; }
  pins=$(docker volume ls -q --filter "label=tale.claim=$prefix")
  [ -z "$pins" ] || { docker volume rm $pins >/dev/null && echo "removed pin marker volumes ($prefix-pin-*)"; }
  if [ -f "$state/.env" ]; then
    "${compose[@]}" down -v --remove-orphans
    echo "removed the compose project $project (containers, networks $session_network and ${project}_internal, its volumes)"
  fi
}

case "${1:-}" in
--down)
  down
  exit 0
  ;;
--local-backend)
  export TALE_SPAWNER_URL=http://127.0.0.1:$port
  # Refuse to run against whatever else listens there.
  if curl -s -o /dev/null --max-time 2 "$TALE_SPAWNER_URL/health"; then
    echo "quickstart: something already listens on 127.0.0.1:$port; stop it or set TALE_QUICKSTART_PORT" >&2
    exit 1
  fi
  # The static binary serves as both spawner and runnerd (the compose path builds the same one).
  [ -n "${TALE_BIN:-}" ] || step "build the static binary" scripts/build-static.sh
  spawner_log="$state/logs/spawner.log"
  SANDBOX_BACKEND=local SANDBOX_HOST_SESSION_ROOT=$state/sessions \
    "$static_bin" spawner --listen "127.0.0.1:$port" >"$spawner_log" 2>&1 &
  pid=$!
  cleanup() {
    trap - EXIT INT TERM
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    n=$(stop_local_runnerds)
    echo "stopped the spawner and $n runnerd(s); sessions' workspaces stay in $state/sessions (--down removes them)"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  wait_for_spawner() {
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || { echo "the spawner exited:"; cat "$spawner_log"; return 1; }
      # Healthy and still ours (a spawner that could not listen has exited).
      curl -fsS --max-time 2 "$TALE_SPAWNER_URL/health" >/dev/null 2>&1 && sleep 0.2 && kill -0 "$pid" 2>/dev/null && return 0
      sleep 0.1
    done
    echo "the spawner did not answer within 10 s:"; cat "$spawner_log"; return 1
  }
  step "start the spawner on 127.0.0.1:$port" wait_for_spawner
  step "create session demo" "$static_bin" session --json create demo --org quickstart
  "$static_bin" session exec demo 'echo "hello from session demo: uid $(id -u) in $PWD"; uname -sr'
  echo "spawner on $TALE_SPAWNER_URL (local backend, no isolation); Ctrl-C stops it and its runnerds"
  echo "try: SANDBOX_TOKEN=\$(cat $state/token) TALE_SPAWNER_URL=$TALE_SPAWNER_URL $static_bin session ls"
  wait "$pid"
  exit 0
  ;;
"") ;;
*)
  echo "usage: scripts/quickstart.sh [--local-backend | --down]" >&2
  exit 2
  ;;
esac

export TALE_SPAWNER_URL=http://127.0.0.1:8003
step "install Docker and the toolchain" env TALE_SETUP_DOCKER=1 scripts/setup.sh
step "build the static binary + session image" scripts/build-test-image.sh
step "build the spawner and egress images" scripts/build-images.sh --local spawner egress
printf 'SANDBOX_TOKEN=%s\nSANDBOX_EGRESS_ALLOWLIST=%s\n' "$SANDBOX_TOKEN" "${SANDBOX_EGRESS_ALLOWLIST:-}" > "$state/.env"
chmod 600 "$state/.env"
step "start the stack (docker-compose -p $project)" "${compose[@]}" up -d
cp "$static_bin" "$state/tale"
wait_for_stack() {
  for _ in $(seq 1 120); do
    "$state/tale" session --json ls >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  "$state/tale" session --json ls # its error says why
  "${compose[@]}" logs --tail 30 sandbox
  return 1
}
step "wait for the spawner" wait_for_stack
step "create session demo" "$state/tale" session --json create demo --org quickstart
"$state/tale" session exec demo 'echo "hello from session demo: uid $(id -u) in $PWD on $(hostname)"; uname -sr'
cat <<MSG

The stack runs (docker-compose -p $project). Try:
  SANDBOX_TOKEN=\$(cat $state/token) $state/tale session exec demo 'ls -la'
Stop it and remove its sessions, volumes and networks with: scripts/quickstart.sh --down
MSG

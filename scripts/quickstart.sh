#!/usr/bin/env bash
# Quick start on one machine (Debian, root): installs what is needed, builds the images from this
# tree, brings up the stack (spawner + egress proxy + gateway stub) with docker-compose, creates a
# session with the operator CLI and runs a command in it. The stack keeps running afterwards.
#
#   scripts/quickstart.sh                  the compose stack (sessions are hardened containers)
#   scripts/quickstart.sh --agents         the same, with sessions from the agent image (bash, git
#                                          and the Claude Code, OpenCode and Codex CLIs)
#   scripts/quickstart.sh --local-backend  no Docker: sessions are runnerd processes (no isolation);
#                                          runs in the foreground, Ctrl-C stops everything it started
#   scripts/quickstart.sh --down           remove what the quick start created, and say what
#
# Each stage prints one line with its duration; a failing stage prints its log and stops.
# TALE_QUICKSTART_STACK (default tale) names the stack: the compose project, the prefix of its
# container and network names, and the tale.stack label the spawner puts on every session
# container and volume it creates — --down removes exactly the objects that carry that stack's
# labels, never another deployment's on the same engine.
# TALE_QUICKSTART_DIR (default /tmp/tale-quickstart, or /tmp/tale-quickstart-<stack>) holds the
# token, logs and local sessions; TALE_QUICKSTART_PORT (default 8003) is the spawner's port;
# TALE_BIN (for --local-backend) runs that tale binary instead of building the static one.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${TALE_QUICKSTART_STACK:-tale}
if ! [[ $stack =~ ^[a-z0-9][a-z0-9_-]{0,40}$ ]]; then
  echo "quickstart: TALE_QUICKSTART_STACK must be 1-41 characters of a-z, 0-9, '_' and '-'" >&2
  exit 2
fi
if [ "$stack" = tale ]; then default_state=/tmp/tale-quickstart; else default_state=/tmp/tale-quickstart-$stack; fi
state=${TALE_QUICKSTART_DIR:-$default_state}
agents=0
port=${TALE_QUICKSTART_PORT:-8003}
# The compose project: its containers, networks and volumes carry com.docker.compose.project=<stack>.
project=$stack
# The network the stack's spawner puts its sessions on (compose.yml names it).
session_network=$stack-sandbox-net
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

# remove_labelled KIND LABEL WHAT: removes every Docker object of KIND (container, network)
# carrying LABEL, one line per object. Volumes go through remove_volumes.
remove_labelled() {
  local kind=$1 label=$2 what=$3 ids id name
  case $kind in
  container) ids=$(docker ps -aq --filter "label=$label") ;;
  network) ids=$(docker network ls -q --filter "label=$label") ;;
  esac
  for id in $ids; do
    case $kind in
    container)
      name=$(docker inspect -f '{{.Name}} (session {{index .Config.Labels "tale.session"}})' "$id" 2>/dev/null | sed 's|^/||; s| (session )||') || continue
      docker rm -f "$id" >/dev/null && echo "removed $what container $name" ;;
    network)
      name=$(docker network inspect -f '{{.Name}}' "$id" 2>/dev/null) || continue
      docker network rm "$id" >/dev/null && echo "removed $what network $name" ;;
    esac
  done
}

# remove_volumes LABEL WHAT: removes every volume carrying LABEL with `tale docker-volumes rm`,
# which removes a quota'd volume the way the spawner does — its loop device detached and its
# image file deleted (a plain `docker volume rm` would leave both on the host). Its helper
# containers are labelled as the stack's, so a --down run again removes any it left behind.
remove_volumes() {
  local label=$1 what=$2
  SANDBOX_EGRESS_NETWORK=$session_network SANDBOX_STACK_LABEL=$stack \
    "$volume_tool" docker-volumes rm --label "$label" | sed "s/^removed volume /removed $what volume /" ||
    { echo "quickstart: some $what volumes could not be removed (see above)" >&2; down_failed=1; }
}

# remove_quota_helpers: removes the stack's disk quota helper containers that a killed spawner (or
# an interrupted --down) left behind: helpers labelled with the stack, or with its sandbox network
# as their deployment. Run once the stack's spawner is gone, so none is a run in flight.
remove_quota_helpers() {
  local ids id name
  ids=$( (docker ps -aq --filter label=tale.disk-quota-helper=1 --filter "label=tale.stack=$stack"
    docker ps -aq --filter label=tale.disk-quota-helper=1 --filter "label=tale.disk-quota-owner=$session_network") | sort -u)
  for id in $ids; do
    name=$(docker inspect -f '{{.Name}}' "$id" 2>/dev/null | sed 's|^/||') || continue
    docker rm -f "$id" >/dev/null && echo "removed leftover disk quota helper container $name"
  done
}

down() {
  local s
  down_failed=0
  # The tale binary that removes volumes: the one the stack was started with, else this tree's.
  volume_tool=${TALE_BIN:-}
  [ -n "$volume_tool" ] || { [ -x "$state/tale" ] && volume_tool=$state/tale; } || volume_tool=$static_bin
  # The disk quota helper runs the stack's session image (what its spawner used).
  if [ -z "${SANDBOX_DISK_QUOTA_HELPER_IMAGE:-}" ]; then
    SANDBOX_DISK_QUOTA_HELPER_IMAGE=$(sed -n 's/^SANDBOX_RUNTIME_IMAGE=//p' "$state/.env" 2>/dev/null || true)
    export SANDBOX_DISK_QUOTA_HELPER_IMAGE=${SANDBOX_DISK_QUOTA_HELPER_IMAGE:-tale-test-runtime:latest}
  fi
  # Local backend: runnerds and their workspaces under this quick start's directory only.
  if [ -d "$state/sessions" ]; then
    n=$(stop_local_runnerds)
    rm -rf "$state/sessions"
    echo "removed $n local runnerd(s) and the local sessions under $state/sessions"
  fi
  command -v docker >/dev/null 2>&1 || return 0
  if [ ! -x "$volume_tool" ]; then
    echo "quickstart: --down needs the tale binary ($volume_tool) to remove volumes with their disk quota images; build it (scripts/build-static.sh) or set TALE_BIN" >&2
    return 1
  fi
  # While the stack's spawner runs, destroy its sessions (any org) through it, so it forgets them.
  if [ -x "$state/tale" ] && docker ps -q --filter "label=com.docker.compose.project=$project" --filter "name=^/?$stack-sandbox\$" | grep -q .; then
    export TALE_SPAWNER_URL=http://127.0.0.1:$port
    for s in $("$state/tale" session --json ls 2>/dev/null | sed -n 's/.*"sessionId": *"\([^"]*\)".*/\1/p'); do
      "$state/tale" session --json rm "$s" >/dev/null && echo "destroyed session $s (container and workspace volume)"
    done
  fi
  # Then every object that carries this stack's labels, and nothing else: the compose project's
  # containers, networks and volumes (com.docker.compose.project; its spawner first, so it makes
  # nothing more), the spawner's leftover disk quota helpers, sessions (any org) and their
  # workspace and cache volumes (tale.stack). Containers go first: a network in use cannot be
  # removed.
  remove_labelled container "com.docker.compose.project=$project" "stack $stack"
  remove_quota_helpers
  remove_labelled container "tale.stack=$stack" session
  # The spawners' shared objects on that network (see README "Several spawner replicas"): claim
  # and network-lock containers, pin marker volumes.
  prefix=tale-claim-$(printf '%s' "$session_network" | sha256sum | cut -c1-12)
  markers=$(docker ps -aq --filter "label=tale.claim=$prefix")
  [ -z "$markers" ] || { docker rm -f $markers >/dev/null && echo "removed the spawners' claim and network-lock containers ($prefix-*)"; }
  remove_volumes "tale.claim=$prefix" "pin marker"
  remove_volumes "tale.stack=$stack" session
  remove_volumes "com.docker.compose.project=$project" "stack $stack"
  remove_labelled network "tale.stack=$stack" session
  remove_labelled network "com.docker.compose.project=$project" "stack $stack"
  if [ "$down_failed" = 1 ]; then
    echo "stack $stack: some volumes are left (see above)"
    return 1
  fi
  echo "stack $stack: nothing of it is left on this engine"
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
--agents) agents=1 ;;
*)
  echo "usage: scripts/quickstart.sh [--agents | --local-backend | --down]" >&2
  exit 2
  ;;
esac

export TALE_SPAWNER_URL=http://127.0.0.1:$port
runtime_image=${SANDBOX_RUNTIME_IMAGE:-tale-test-runtime:latest}
profile=default
if [ "$agents" = 1 ]; then
  runtime_image=tale-agent-runtime:latest
  profile=agent
fi
# A stack that already runs keeps its sessions (session demo among them) on the image it was
# started with: switching between the plain and the --agents quick start needs --down first.
if command -v docker >/dev/null 2>&1 && [ -f "$state/.env" ] &&
  docker ps -q --filter "label=com.docker.compose.project=$project" --filter "name=^/?$stack-sandbox\$" 2>/dev/null | grep -q .; then
  running_image=$(sed -n 's/^SANDBOX_RUNTIME_IMAGE=//p' "$state/.env")
  if [ -n "$running_image" ] && [ "$running_image" != "$runtime_image" ]; then
    echo "quickstart: stack $stack already runs with sessions from $running_image, and this run needs $runtime_image;" >&2
    echo "remove it first with: scripts/quickstart.sh --down (README \"Quick start\")" >&2
    exit 1
  fi
fi
step "install Docker and the toolchain" env TALE_SETUP_DOCKER=1 scripts/setup.sh
# The busybox test image is the sessions' runtime, and the stub gateway's image in any case.
step "build the static binary + session image" scripts/build-test-image.sh
if [ "$agents" = 1 ]; then
  step "build the agent session image" env TALE_BIN="$static_bin" scripts/build-agent-image.sh "$runtime_image"
fi
step "build the spawner and egress images" scripts/build-images.sh --local spawner egress
printf 'SANDBOX_TOKEN=%s\nSANDBOX_EGRESS_ALLOWLIST=%s\nSANDBOX_RUNTIME_IMAGE=%s\nTALE_STACK=%s\nTALE_SPAWNER_PORT=%s\n' \
  "$SANDBOX_TOKEN" "${SANDBOX_EGRESS_ALLOWLIST:-}" "$runtime_image" "$stack" "$port" > "$state/.env"
# A second stack on one engine needs its own sandbox subnet and bridge name (compose.yml).
for var in TALE_SANDBOX_NET TALE_SANDBOX_BRIDGE; do
  if [ -n "${!var:-}" ]; then printf '%s=%s\n' "$var" "${!var}" >> "$state/.env"; fi
done
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
# A second run against the running stack finds session demo there, and a create of a running
# session is refused (409 duplicate): it uses that session when its profile is this run's. (A
# stopped one is created again: that resumes it on its workspace.)
demo_state=
if "$state/tale" session --json get demo >"$state/logs/demo-session.json" 2>/dev/null; then
  demo_profile=$(sed -n 's/.*"profile": *"\([^"]*\)".*/\1/p' "$state/logs/demo-session.json")
  demo_state=$(sed -n 's/.*"state": *"\([^"]*\)".*/\1/p' "$state/logs/demo-session.json")
  if [ "$demo_profile" != "$profile" ]; then
    echo "quickstart: session demo exists with profile ${demo_profile:-?}, not $profile; remove the stack first with: scripts/quickstart.sh --down" >&2
    exit 1
  fi
fi
if [ "$demo_state" = ready ]; then
  echo "session demo runs already (profile $profile): using it"
else
  step "create session demo" "$state/tale" session --json create demo --org quickstart --profile "$profile"
fi
"$state/tale" session exec demo 'echo "hello from session demo: uid $(id -u) in $PWD on $(hostname)"; uname -sr'
if [ "$agents" = 1 ]; then
  "$state/tale" session exec demo 'echo "claude $(claude --version)"; echo "opencode $(opencode --version)"; codex --version; git --version'
  cat <<MSG

Session demo runs the agent image. An agent run needs a model behind the stack's LLM gateway
(sandbox-llm-gateway, http://sandbox-llm-gateway:8080 from the sessions; here a stub): README.md,
"Agent runs in the quick start", shows one run event by event.
MSG
fi
cat <<MSG

The stack runs (docker-compose -p $project). Try:
  SANDBOX_TOKEN=\$(cat $state/token) TALE_SPAWNER_URL=$TALE_SPAWNER_URL $state/tale session exec demo 'ls -la'
Stop it and remove its sessions, volumes and networks with: scripts/quickstart.sh --down
(objects labelled tale.stack=$stack or com.docker.compose.project=$project; nothing else)
MSG

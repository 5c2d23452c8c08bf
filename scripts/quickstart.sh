#!/usr/bin/env bash
# Quick start on one machine (Debian, root): installs what is needed, builds the images from this
# tree, brings up the stack (spawner + egress proxy + gateway stub) with docker-compose, creates a
# session with the operator CLI and runs a command in it. The stack keeps running afterwards.
#
#   scripts/quickstart.sh                  the compose stack (sessions are hardened containers)
#   scripts/quickstart.sh --local-backend  no Docker: sessions are runnerd processes (no isolation)
#   scripts/quickstart.sh --down           stop the stack
set -euo pipefail
cd "$(dirname "$0")/.."
state=${TALE_QUICKSTART_DIR:-/tmp/tale-quickstart}
mkdir -p "$state" && chmod 755 "$state"
[ -s "$state/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/token"
chmod 600 "$state/token"
export SANDBOX_TOKEN=$(cat "$state/token") TALE_SPAWNER_URL=http://127.0.0.1:8003
compose=(docker-compose -f compose.yml -f compose.local.yml -p tale --env-file "$state/.env")

case "${1:-}" in
--down)
  # The quick start's own sessions first: they sit on the stack's network.
  sessions=$(docker ps -aq --filter label=tale.sandbox-session=1 --filter label=tale.org=quickstart)
  [ -z "$sessions" ] || docker rm -f $sessions >/dev/null
  [ -f "$state/.env" ] && "${compose[@]}" down -v
  exit 0
  ;;
--local-backend)
  cargo build --locked --release
  bin=$PWD/target/release/tale
  SANDBOX_BACKEND=local SANDBOX_HOST_SESSION_ROOT=$state/sessions "$bin" spawner --listen 127.0.0.1:8003 &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
  for _ in $(seq 1 100); do curl -fsS "$TALE_SPAWNER_URL/health" >/dev/null 2>&1 && break; sleep 0.1; done
  "$bin" session create demo --org quickstart >/dev/null 2>&1 || true
  "$bin" session exec demo 'echo "hello from session demo: uid $(id -u) in $PWD"; uname -sr'
  echo "spawner on $TALE_SPAWNER_URL (local backend, no isolation); Ctrl-C stops it"
  wait $pid
  ;;
esac

TALE_SETUP_DOCKER=1 scripts/setup.sh
scripts/build-test-image.sh >/dev/null
scripts/build-images.sh --local spawner egress
printf 'SANDBOX_TOKEN=%s\nSANDBOX_EGRESS_ALLOWLIST=%s\n' "$SANDBOX_TOKEN" "${SANDBOX_EGRESS_ALLOWLIST:-}" > "$state/.env"
chmod 600 "$state/.env"
"${compose[@]}" up -d
cp target/x86_64-unknown-linux-musl/release/tale "$state/tale"
for _ in $(seq 1 120); do "$state/tale" session ls >/dev/null 2>&1 && break; sleep 0.5; done
"$state/tale" session create demo --org quickstart >/dev/null 2>&1 || true
"$state/tale" session exec demo 'echo "hello from session demo: uid $(id -u) in $PWD on $(hostname)"; uname -sr'
cat <<MSG

The stack runs (docker-compose -p tale). Try:
  SANDBOX_TOKEN=\$(cat $state/token) $state/tale session exec demo 'ls -la'
Stop it with: scripts/quickstart.sh --down
MSG

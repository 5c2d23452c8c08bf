#!/usr/bin/env bash
# Quick start on one machine: builds tale, starts a spawner (local backend: sessions are runnerd
# processes on this host, no isolation — for trying tale out), creates a session, runs a command in
# it with the operator CLI, and leaves the spawner running in the foreground (Ctrl-C stops it;
# sessions keep running and are re-adopted at the next start).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release
bin=$PWD/target/release/tale
state=${TALE_QUICKSTART_DIR:-/tmp/tale-quickstart}
mkdir -p "$state" && chmod 755 "$state"
[ -s "$state/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/token"
chmod 600 "$state/token"
port=${TALE_QUICKSTART_PORT:-8003}
export SANDBOX_TOKEN=$(cat "$state/token") SANDBOX_BACKEND=local SANDBOX_HOST_SESSION_ROOT=$state/sessions
export TALE_SPAWNER_URL=http://127.0.0.1:$port
"$bin" spawner --listen 127.0.0.1:$port &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -fsS "$TALE_SPAWNER_URL/health" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" session create demo --org quickstart >/dev/null 2>&1 || true   # 409 when it already runs
"$bin" session exec demo 'echo "hello from session demo: $(id -u) in $PWD"; uname -sr'
cat <<MSG

spawner: $TALE_SPAWNER_URL (token in $state/token)
try:     SANDBOX_TOKEN=\$(cat $state/token) TALE_SPAWNER_URL=$TALE_SPAWNER_URL $bin session exec demo 'ls -la'
MSG
wait $pid

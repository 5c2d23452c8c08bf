#!/usr/bin/env bash
# Quick start on one machine: builds tale, starts runnerd on 127.0.0.1:8200 with a throwaway
# workspace, runs a command in it, and leaves the daemon running (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release
bin=target/release/tale
workspace=$(mktemp -d /tmp/tale-quickstart.XXXXXX)
chmod 755 "$workspace"
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
port=${TALE_QUICKSTART_PORT:-8200}
TALE_RUNNERD_TOKEN=$token "$bin" runnerd --listen 127.0.0.1:$port --workspace-root "$workspace" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:$port/readyz >/dev/null 2>&1 && break; sleep 0.1; done
echo "runnerd on 127.0.0.1:$port, workspace $workspace, token $token"
curl -sS -H "x-tale-runnerd-token: $token" -X POST http://127.0.0.1:$port/execs \
  -d '{"execId":"hello","shell":"echo hello from $(id -un 2>/dev/null || id -u) in $PWD","timeoutMs":10000}'
echo "Try: curl -sS -H 'x-tale-runnerd-token: $token' -X POST http://127.0.0.1:$port/execs -d '{\"execId\":\"e2\",\"shell\":\"uname -a\",\"timeoutMs\":10000}'"
wait $pid

#!/usr/bin/env bash
# The inner loop: unit tests and the end-to-end suites that need nothing beyond the toolchain and
# this tree (no Docker, no apt packages, no network): the real `tale` binary driven on loopback,
# runnerd as a child subreaper or PID 1 of a PID namespace (unshare, from util-linux, which every
# Debian has), the spawner's local backend and the Kubernetes backend against the in-process fake
# API server; `session_shell` drives the CLI in a real terminal through tmux (scripts/setup.sh
# installs it). See README, "Test tiers", for its time on 2 cores from a warm target/.
#
#   scripts/test-fast.sh [CARGO TEST ARGS...]     e.g. scripts/test-fast.sh exec_replay
#   scripts/test-fast.sh --check-tiers            only check that every suite is in one list
#
# scripts/test.sh runs everything (the suites below that need host tools as well).
set -euo pipefail
cd "$(dirname "$0")/.."
# Suites of tests/ that run here.
fast_suites=(
  golden_runnerd golden_spawner quickstart runnerd_backpressure runnerd_bad_input runnerd_cancel_tree
  runnerd_connections runnerd_drain_grace runnerd_exec runnerd_files runnerd_hostile runnerd_pid1 runnerd_pty runnerd_tls
  session_cli session_shell spawner_api spawner_edge spawner_kubernetes spawner_kubernetes_heal
  spawner_kubernetes_names spawner_kubernetes_replicas spawner_kubernetes_unwatched spawner_kubernetes_watch
)
# Suites that need more than the toolchain, and what (they run in scripts/test.sh only).
host_suites=(
  agent_claude_code # the Claude Code CLI from npm; Docker and the agent image
  agent_codex       # the Codex CLI from npm; Docker and the agent image
  agent_opencode    # the OpenCode CLI from npm; Docker and the agent image
  client_libraries  # httpx and pytest from PyPI, TypeScript from npm
  compose_stack     # Docker and docker-compose
  docker_isolation  # Docker, the test image, iptables (an INPUT rule on the test's own bridge)
  egress_firewall   # ip, iptables, network namespaces
  egress_proxy      # tinyproxy
  git_credentials   # git with its http backend
  helm_chart        # the helm-python-sdk and kubernetes-validate venv (PyPI)
  kubernetes_schema # the kubernetes-validate venv (PyPI)
  quickstart_agents # Docker, docker-compose, the npm agent CLIs (the compose quick start)
  spawner_docker    # Docker and the test image (a static release build)
  spawner_docker_names # Docker and the test image
  spawner_docker_seed  # Docker and the test image
  spawner_docker_quota # Docker, the test image, loop devices (a helper container with CAP_SYS_ADMIN)
  spawner_docker_quota_helpers # Docker and the test image (spawners killed with a quota helper left)
  spawner_replicas  # Docker and the test image (three spawner processes on one engine)
  spawner_upgrade   # Docker, the test image and the previous release's binary (scripts/build-previous.sh)
  spawner_tls       # curl and openssl (a CA and certificates made per run)
)
# A new suite must be sorted into one list: an unlisted one would silently run in neither tier's
# selection here.
listed=" ${fast_suites[*]} ${host_suites[*]} "
for file in tests/*.rs; do
  suite=$(basename "$file" .rs)
  if [[ $listed != *" $suite "* ]]; then
    echo "test-fast: tests/$suite.rs is in neither fast_suites nor host_suites of $0" >&2
    exit 1
  fi
done
if [ "${1:-}" = --check-tiers ]; then exit 0; fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
args=(--locked --lib --bins)
for suite in "${fast_suites[@]}"; do args+=(--test "$suite"); done
# Build once, then run the test binaries TALE_FAST_JOBS at a time (default 3): most suites wait on
# timers and child processes, not the CPU, so on 2 cores three at once roughly halve the wall time.
# Arguments are passed to every test binary (a name filter, `--nocapture`, …). Each binary's
# output is printed whole when it ends; the exit status is non-zero if any failed.
jobs=${TALE_FAST_JOBS:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo test "${args[@]}" --no-run --message-format=json 2>"$out/build.log" \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])' >"$out/binaries" || { cat "$out/build.log" >&2; exit 1; }
grep -E "^(warning|error)" "$out/build.log" >&2 || true
run_one() {
  local binary=$1 out=$2
  shift 2
  local log
  log="$out/$(basename "$binary").log"
  if (cd "$PWD" && "$binary" "$@") >"$log" 2>&1; then
    echo "ok      $(basename "$binary")"
  else
    echo "FAILED  $(basename "$binary")"
    cat "$log"
    touch "$out/failed"
  fi
}
export -f run_one
xargs -a "$out/binaries" -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$out" "$@"
grep -h "^test result" "$out"/*.log | awk '{p += $4; f += $6} END {print "fast tier: " p " passed, " f " failed"}'
[ ! -e "$out/failed" ]

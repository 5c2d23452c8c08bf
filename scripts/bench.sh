#!/usr/bin/env bash
# Benchmarks: `scripts/bench.sh runnerd` (or `spawner`, or `kubernetes`; `scripts/bench.sh runnerd memory`: the
# memory rows only). Builds the static release binary first; the
# tables are printed and written to bench-out/<name>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
TALE_PROFILE=release scripts/build-static.sh >/dev/null
ulimit -n 65536 2>/dev/null || true
exec cargo bench --locked --bench "${1:-runnerd}" -- "${@:2}"

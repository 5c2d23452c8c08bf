#!/usr/bin/env bash
# The test command: prerequisites, then every unit and end-to-end test (real binary, real processes,
# real Docker engine, git and tinyproxy where a test needs them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=never
# Line tables are enough for test backtraces and keep cold builds fast on 2 cores.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
# The Docker suite runs sessions from an image holding the static binary: build both first.
export TALE_TEST_IMAGE=tale-test-runtime:latest
scripts/build-test-image.sh "$TALE_TEST_IMAGE"
# The compose suite runs the stack from the spawner and egress images, rebuilt from this tree.
scripts/build-images.sh --local spawner egress
cargo build --locked --benches          # benchmarks must build; they run with scripts/bench.sh
cargo test --locked --lib --bins --tests "$@"

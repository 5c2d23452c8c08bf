#!/usr/bin/env bash
# The test command: prerequisites, format and lint checks, then every unit and end-to-end test
# (real binary, real processes, real Docker engine, git and tinyproxy where a test needs them).
# scripts/test-fast.sh is the inner loop (no Docker, no apt, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=never
# Line tables are enough for test backtraces and keep cold builds fast on 2 cores.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
# Cheap checks first: a formatting slip or a lint fails in seconds, not after the image builds.
cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
# The static binary in the test images is built with the CI profile (release without fat LTO:
# the same code, a fraction of the cold build time); production images use the release profile.
export TALE_PROFILE=${TALE_PROFILE:-ci}
# The Docker suite runs sessions from an image holding the static binary: build both first.
export TALE_TEST_IMAGE=tale-test-runtime:latest
scripts/build-test-image.sh "$TALE_TEST_IMAGE"
# The agent suites also run their CLIs in Docker sessions, from the agent image (the native CLIs).
export TALE_AGENT_IMAGE=tale-agent-runtime:latest
scripts/build-agent-image.sh "$TALE_AGENT_IMAGE"
# The compose suite runs the stack from the spawner and egress images, rebuilt from this tree.
scripts/build-images.sh --local spawner egress
# The upgrade suite runs the previous release's spawner. Built before this tree's debug build:
# cargo uplifts the old binary to target/debug/tale on the way, and the tests' build puts ours back.
scripts/build-previous.sh
cargo build --locked --benches          # benchmarks must build; they run with scripts/bench.sh
scripts/test-fast.sh --check-tiers       # every suite of tests/ sorted into a tier
# --no-fail-fast: a failing suite does not hide the results of the ones after it.
cargo test --locked --no-fail-fast --lib --bins --tests "$@"

#!/usr/bin/env bash
# Builds the previous release's `tale` (the commit in scripts/previous-release; debug, host target)
# into target/previous/tale-<commit>, for the upgrade suite (tests/spawner_upgrade.rs). Skips the
# build when that binary exists. Prints the binary's path.
#
# The sources come from `git archive` (no worktree, no change to the repository's metadata) into
# target/previous/src-<commit>, and are built with this tree's target directory so the compiled
# dependencies are reused (same lock file, same toolchain). Cargo uplifts the old binary to
# target/debug/tale on the way: run this BEFORE building the current tree (scripts/test.sh does), and
# the next `cargo build`/`cargo test` puts the current binary back there (it uplifts fresh units too).
#
# Needs the commit in the clone's history: a shallow clone fails here with a clear message.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
commit=$(grep -v '^#' scripts/previous-release | grep -m1 -E '^[0-9a-f]{40}$' || true)
if [ -z "$commit" ]; then
    echo "build-previous: scripts/previous-release holds no 40-hex commit" >&2
    exit 1
fi
out="$root/target/previous/tale-$commit"
if [ -x "$out" ]; then
    echo "$out"
    exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    shallow=$(git rev-parse --is-shallow-repository 2>/dev/null || echo unknown)
    echo "build-previous: commit $commit (the previous release) is not in this clone's history" \
        "(shallow clone: $shallow). The upgrade suite needs it: clone with full history, or run" \
        "\`git fetch --unshallow\` (or \`git fetch origin $commit\`)." >&2
    exit 1
fi
src="$root/target/previous/src-$commit"
rm -rf "$src" "$src.partial"
mkdir -p "$src.partial"
git archive "$commit" | tar -x -C "$src.partial"
mv "$src.partial" "$src"
# Same profile settings as scripts/test.sh, so the dependencies compiled for the tests are reused.
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
# Built from inside the old sources, so their own rust-toolchain.toml and .cargo/config.toml apply.
(cd "$src" && cargo build --locked --bin tale --target-dir "$root/target" >&2)
cp "$root/target/debug/tale" "$out.partial"
mv "$out.partial" "$out"
rm -rf "$src"
echo "$out"

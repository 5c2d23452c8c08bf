#!/usr/bin/env bash
# Builds target/x86_64-unknown-linux-musl/<profile>/tale, the static binary (rustls + ring, no
# OpenSSL, no aws-lc): one plain `cargo build --locked` with the toolchain of rust-toolchain.toml.
# Installs musl-tools and the rustup target when missing.
#
#   scripts/build-static.sh [CARGO ARGS...]   TALE_PROFILE=ci picks the CI profile (Cargo.toml)
#
# Prints the binary's path on stdout (the last line), everything else on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
profile=${TALE_PROFILE:-release}
if ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if cargo tree --locked --target all -e normal,build 2>/dev/null | grep -E "aws-lc|openssl-sys|native-tls"; then
  echo "build-static: a forbidden TLS stack is in the dependency tree" >&2
  exit 1
fi
cargo build --locked --profile "$profile" --target "$target" "$@" >&2
bin=${CARGO_TARGET_DIR:-target}/$target/$profile/tale
file "$bin" >&2 2>/dev/null || true
ls -l "$bin" >&2
echo "$bin"

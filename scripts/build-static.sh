#!/usr/bin/env bash
# Builds the static release binary target/x86_64-unknown-linux-musl/release/tale (rustls + ring, no
# OpenSSL, no aws-lc). Installs musl-tools and the rustup target when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
if ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if cargo tree --target all -e normal,build 2>/dev/null | grep -E "aws-lc|openssl-sys|native-tls"; then
  echo "build-static: a forbidden TLS stack is in the dependency tree" >&2
  exit 1
fi
cargo build --locked --release --target "$target" "$@"
bin=target/$target/release/tale
file "$bin" 2>/dev/null || true
ls -l "$bin"

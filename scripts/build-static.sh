#!/usr/bin/env bash
# Builds target/x86_64-unknown-linux-musl/release/tale, the static binary (rustls + ring, no OpenSSL,
# no aws-lc). Installs musl-tools and the rustup target when missing.
#
# Two passes. The first build is run once under callgrind (scripts/runnerd-symbol-order.sh) to list
# the functions runnerd runs from boot to idle and on its common routes; the second links those
# first (rust-lld, --symbol-ordering-file), so an idle runnerd keeps ~1.2 MiB of the binary's text
# resident instead of ~3 MiB (the kernel maps text 64 KiB around each fault, and without the order
# those functions are spread over the whole 9 MiB of text). The first pass lives in
# target/order-pass; both are built with symbols, and the result is stripped with binutils.
# Without valgrind the second pass is skipped with a warning: the binary is the same code,
# only laid out as the compiler left it.
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
# Symbols in both passes (the order names functions); the same profile keeps their names equal.
export CARGO_PROFILE_RELEASE_STRIP=false
bin=target/$target/release/tale
if command -v valgrind >/dev/null 2>&1 && [ "${TALE_NO_SYMBOL_ORDER:-0}" != 1 ]; then
  cargo build --locked --release --target "$target" --target-dir target/order-pass "$@"
  first="target/order-pass/$target/release/tale"
  # One order per first-pass binary, named after it: an unchanged tree reuses it (the profile
  # varies a little from run to run) and cargo relinks only when the order changes.
  order=target/runnerd-$(sha256sum "$first" | cut -c1-16).order
  if [ ! -s "$order" ]; then
    find target -maxdepth 1 -name 'runnerd-*.order' -delete
    scripts/runnerd-symbol-order.sh "$first" "$order.new"
    mv "$order.new" "$order"
  fi
  gcc_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
  cargo rustc --locked --release --target "$target" --bin tale "$@" -- \
    -C link-arg=-fuse-ld=lld -C "link-arg=-B$gcc_ld" \
    -C "link-arg=-Wl,--symbol-ordering-file=$PWD/$order" -C link-arg=-Wl,--no-warn-symbol-ordering
  # A binary already stripped here was checked when it was linked (cargo found it fresh).
  if [ -n "$(nm "$bin" 2>/dev/null | head -1)" ]; then python3 - "$bin" "$order"; fi <<'EOF'
# The ordered functions must sit together at the start of the text: report how tightly.
import subprocess, sys
binary, order = sys.argv[1], sys.argv[2]
wanted = set(open(order).read().split())
spans = []
for line in subprocess.run(["nm", "-S", binary], capture_output=True, text=True).stdout.splitlines():
    parts = line.split()
    if len(parts) == 4 and parts[2] in "tT" and parts[3] in wanted:
        spans.append((int(parts[0], 16), int(parts[1], 16)))
if not spans:
    sys.exit("build-static: none of the ordered functions is in the binary")
start = min(a for a, _ in spans)
end = max(a + s for a, s in spans)
size = sum(s for _, s in spans)
print(f"build-static: {len(spans)} ordered functions, {size // 1024} KiB in a {(end - start) // 1024} KiB span")
if end - start > 2 * size:
    sys.exit("build-static: the symbol order did not take effect")
EOF
else
  echo "build-static: valgrind missing (or TALE_NO_SYMBOL_ORDER=1): no runnerd symbol order" >&2
  cargo build --locked --release --target "$target" "$@"
fi
strip "$bin"
file "$bin" 2>/dev/null || true
ls -l "$bin"

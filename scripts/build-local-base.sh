#!/usr/bin/env bash
# Makes the registry-free Debian base image (default tale-local-debian:bookworm) when it is missing:
# a minbase debootstrap of bookworm from Debian's mirror, imported with `docker import`.
# Prints the image name (the last line).
#   scripts/build-local-base.sh [NAME]
set -euo pipefail
base=${1:-tale-local-debian:bookworm}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$base" >/dev/null
fi
echo "$base"

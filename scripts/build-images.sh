#!/usr/bin/env bash
# Builds tale's images from the Dockerfile.
#   scripts/build-images.sh [TARGET...]           public bases (needs a registry)
#   scripts/build-images.sh --local [TARGET...]   no registry: a debootstrapped Debian imported with
#                                                 `docker import` as every base, and the prebuilt
#                                                 static binary (scripts/build-static.sh;
#                                                 TALE_PROFILE picks its cargo profile) in dist/.
# TARGETs: spawner egress runtime (default: spawner egress). TALE_IMAGE_TAG picks the tag (default
# latest), so a branch can test its own images without replacing anyone's.
set -euo pipefail
cd "$(dirname "$0")/.."
local_mode=0
if [ "${1:-}" = "--local" ]; then local_mode=1; shift; fi
targets=("${@:-spawner egress}")
targets=(${targets[*]})
args=()
if [ $local_mode = 1 ]; then
  base=$(scripts/build-local-base.sh | tail -1)
  bin=$(scripts/build-static.sh | tail -1)
  mkdir -p dist && cp "$bin" dist/tale
  # Behind a TLS-inspecting proxy the host trusts a CA the image does not: hand it to npm.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt dist/extra-ca.crt; fi
  args+=(--build-arg "RUST_IMAGE=$base" --build-arg "DEBIAN_IMAGE=$base")
fi
for target in "${targets[@]}"; do
  version=${TALE_IMAGE_TAG:-latest}
  case $target in
    spawner) tag=tale-sandbox:$version ;;
    egress) tag=tale-sandbox-egress:$version ;;
    runtime) tag=tale-sandbox-runtime:$version ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
  docker build -q "${args[@]}" --target "$target" -t "$tag" . >/dev/null
  echo "$tag $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
done

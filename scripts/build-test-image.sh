#!/usr/bin/env bash
# Builds the session test image (default tag tale-test-runtime:latest) without any registry:
# FROM scratch + Debian's busybox-static + the static tale binary, runnerd as the entrypoint.
# Usage: scripts/build-test-image.sh [TAG]   (TALE_BIN overrides the binary to copy; TALE_PROFILE
# picks the cargo profile of the one built otherwise, default release)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-tale-test-runtime:latest}
bin=${TALE_BIN:-}
if [ -z "$bin" ]; then
  # Always (re)build: a stale binary in the image tests old code. Cargo makes this quick when nothing changed.
  bin=$(scripts/build-static.sh | tail -1)
fi
busybox=/bin/busybox
if ! [ -x "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q "statically linked"; then
  echo "build-test-image: $busybox must be Debian's busybox-static (statically linked)" >&2; exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/tale"
cp "$busybox" "$ctx/busybox"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp /workspace /etc && chmod 1777 /tmp && \
    echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && \
    echo 'agent:x:10001:10001:agent:/workspace/.home:/bin/sh' >> /etc/passwd && \
    echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' >> /etc/passwd && \
    printf 'root:x:0:\nagent:x:10001:\nnogroup:x:65534:\n' > /etc/group
COPY tale /usr/local/bin/tale
ENV PATH=/usr/local/bin:/bin
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/tale", "runnerd"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"

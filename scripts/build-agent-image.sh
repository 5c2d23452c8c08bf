#!/usr/bin/env bash
# Builds the agent session image (default tag tale-agent-runtime:latest) without any container
# registry: the local Debian base (scripts/build-local-base.sh) with bash, git, CA certificates, e2fsprogs and mount (the disk-quota helper runs from the session image),
# the static `tale` (runnerd as the entrypoint, git's credential helper), and the native binaries of
# the three agent CLIs at the versions the Dockerfile pins — Claude Code, OpenCode and Codex — taken
# from their npm packages (scripts/setup.sh installs them globally), without node or node_modules.
#
#   scripts/build-agent-image.sh [TAG]    TALE_BIN overrides the binary to copy; TALE_PROFILE picks
#                                         the cargo profile of the one built otherwise (release)
#
# Prints the tag (the last line). A rebuild with unchanged inputs reuses every cached layer.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-tale-agent-runtime:latest}
pin() { sed -n "s/^ARG $1=//p" Dockerfile; }
npm_root=$(npm root -g)

# native NAME VERSION-LINE CANDIDATE...: the first candidate that is an executable printing the
# pinned version line, or a failure that says how to install it.
native() {
  local name=$1 want=$2 candidate
  shift 2
  for candidate in "$@"; do
    if [ -x "$candidate" ] && [ "$("$candidate" --version 2>/dev/null | head -1)" = "$want" ]; then
      echo "$candidate"
      return 0
    fi
  done
  echo "build-agent-image: no native $name binary printing \"$want\" under $npm_root (run scripts/setup.sh)" >&2
  return 1
}
claude_version=$(pin CLAUDE_CODE_VERSION)
opencode_version=$(pin OPENCODE_VERSION)
codex_version=$(pin CODEX_VERSION)
claude=$(native claude "$claude_version (Claude Code)" \
  "$npm_root/@anthropic-ai/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude" \
  "$npm_root/@anthropic-ai/claude-code-linux-x64/claude" \
  "$npm_root/@anthropic-ai/claude-code/bin/claude.exe")
opencode=$(native opencode "$opencode_version" \
  "$npm_root/opencode-ai/node_modules/opencode-linux-x64/bin/opencode" \
  "$npm_root/opencode-linux-x64/bin/opencode" \
  "$npm_root/opencode-ai/bin/opencode.exe")
codex_vendor=x86_64-unknown-linux-musl
codex=$(native codex "codex-cli $codex_version" \
  "$npm_root/@openai/codex/node_modules/@openai/codex-linux-x64/vendor/$codex_vendor/bin/codex" \
  "$npm_root/@openai/codex-linux-x64/vendor/$codex_vendor/bin/codex")

bin=${TALE_BIN:-}
if [ -z "$bin" ]; then
  # Always (re)build: a stale binary in the image tests old code. Cargo makes this quick when nothing changed.
  bin=$(scripts/build-static.sh | tail -1)
fi
base=$(scripts/build-local-base.sh | tail -1)

# The build context holds hard links where the filesystem allows (the CLIs are ~700 MB together).
ctx=$(mktemp -d -p "${TMPDIR:-/tmp}")
trap 'rm -rf "$ctx"' EXIT
put() { cp -l "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
mkdir -p "$ctx/codex/bin" "$ctx/codex/codex-path"
put "$claude" "$ctx/claude"
put "$opencode" "$ctx/opencode"
# Codex finds its helpers (ripgrep) beside its binary, as laid out in its npm package.
put "$codex" "$ctx/codex/bin/codex"
codex_rg=$(dirname "$(dirname "$codex")")/codex-path/rg
[ -x "$codex_rg" ] && put "$codex_rg" "$ctx/codex/codex-path/rg"
put "$bin" "$ctx/tale"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      git ca-certificates e2fsprogs mount >/dev/null && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \\
    && echo 'agent:x:10001:10001:agent:/workspace/.home:/bin/bash' >> /etc/passwd \\
    && echo 'agent:x:10001:' >> /etc/group \\
    && git config --system credential.helper tale
COPY claude opencode /usr/local/bin/
COPY codex/ /opt/codex/
RUN ln -s /opt/codex/bin/codex /usr/local/bin/codex && mkdir -p /workspace
ENV PATH=/usr/local/bin:/usr/bin:/bin \\
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \\
    DISABLE_AUTOUPDATER=1 \\
    OPENCODE_DISABLE_AUTOUPDATE=1
COPY tale /usr/local/bin/tale
RUN ln -s tale /usr/local/bin/git-credential-tale && ln -s tale /usr/local/bin/runnerd
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/tale", "runnerd"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"

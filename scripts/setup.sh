#!/usr/bin/env bash
# Installs what building and testing tale needs on a fresh Debian machine (idempotent; quick when
# everything is there). Needs root for apt. Starts dockerd in the background when it is not running.
set -euo pipefail

# rustup is the one prerequisite this script does not install (Debian bookworm does not package
# it); it fetches the toolchain that rust-toolchain.toml pins on first use.
if ! command -v rustup >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/rustup" ]; then
    echo "setup: rustup is installed in $HOME/.cargo/bin but not on PATH; run: . \"\$HOME/.cargo/env\" (or open a new login shell), then again" >&2
  else
    echo "setup: rustup is needed and not installed; install it as https://rustup.rs says (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain none), run: . \"\$HOME/.cargo/env\", then again" >&2
  fi
  exit 1
fi

packages=(musl-tools docker.io tinyproxy busybox-static iproute2 iptables dnsmasq-base git curl openssl util-linux file python3 python3-venv docker-compose tmux tcpdump)
# Node and npm for the agent CLIs, unless a Node install (e.g. NodeSource's, which bundles npm)
# is there already: Debian's npm package would conflict with it.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
fi

# The Claude Code CLI for tests/agent_claude_code.rs: the version the runtime image pins. Its native
# binary comes from the registry's per-platform package, which the postinstall step links into
# place; run that step explicitly when npm skipped it.
claude_version=$(sed -n 's/^ARG CLAUDE_CODE_VERSION=//p' "$(dirname "$0")/../Dockerfile")
claude_ok() { claude --version 2>/dev/null | grep -q "^${claude_version} "; }
if ! claude_ok; then
  echo "setup: installing @anthropic-ai/claude-code@${claude_version}"
  npm install -g --no-fund --no-audit "@anthropic-ai/claude-code@${claude_version}" >/dev/null
  claude_ok || node "$(npm root -g)/@anthropic-ai/claude-code/install.cjs"
  claude_ok || { echo "setup: claude --version does not print ${claude_version}" >&2; exit 1; }
fi

# OpenCode and Codex for tests/agent_opencode.rs and tests/agent_codex.rs: the runtime image's pins.
# Both npm packages ship their native binary in a per-platform dependency.
pin() { sed -n "s/^ARG $1=//p" "$(dirname "$0")/../Dockerfile"; }
opencode_version=$(pin OPENCODE_VERSION)
if [ "$(opencode --version 2>/dev/null)" != "${opencode_version}" ]; then
  echo "setup: installing opencode-ai@${opencode_version}"
  npm install -g --no-fund --no-audit "opencode-ai@${opencode_version}" >/dev/null
  [ "$(opencode --version 2>/dev/null)" = "${opencode_version}" ] \
    || { echo "setup: opencode --version does not print ${opencode_version}" >&2; exit 1; }
fi
codex_version=$(pin CODEX_VERSION)
if [ "$(codex --version 2>/dev/null)" != "codex-cli ${codex_version}" ]; then
  echo "setup: installing @openai/codex@${codex_version}"
  npm install -g --no-fund --no-audit "@openai/codex@${codex_version}" >/dev/null
  [ "$(codex --version 2>/dev/null)" = "codex-cli ${codex_version}" ] \
    || { echo "setup: codex --version does not print codex-cli ${codex_version}" >&2; exit 1; }
fi

# Helm's engine for tests/helm_chart.rs: Debian ships no helm binary; the helm-python-sdk wheel
# (PyPI) bundles the helm v4 SDK as a native library. In the same venv, kubernetes-validate (PyPI)
# with the official Kubernetes OpenAPI schemas that the chart's and the backend's objects are
# checked against (scripts/k8s-validate.py). Pinned, in their own venv.
helm_venv=/opt/tale-helm-sdk
kubernetes_validate_version=1.37.0
if ! "$helm_venv/bin/python" -c "import helm_python, yaml" >/dev/null 2>&1 \
  || [ "$("$helm_venv/bin/python" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)' 2>/dev/null)" != "$kubernetes_validate_version" ]; then
  echo "setup: installing helm-python-sdk and kubernetes-validate into $helm_venv"
  python3 -m venv "$helm_venv"
  "$helm_venv/bin/pip" install -q "helm-python-sdk==0.2.2" "pyyaml==6.0.3" "kubernetes-validate==$kubernetes_validate_version"
fi

# Docker engine (Debian's docker.io): start it when its socket does not answer.
sock=/var/run/docker.sock
ping_docker() { curl -fsS --max-time 2 --unix-socket "$sock" http://x/_ping >/dev/null 2>&1; }
if [ "${TALE_SETUP_DOCKER:-1}" = 1 ] && ! ping_docker; then
  echo "setup: starting dockerd"
  mkdir -p /var/log
  setsid /usr/sbin/dockerd >/var/log/tale-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 150); do
    ping_docker && break
    sleep 0.2
  done
  ping_docker || { echo "setup: dockerd did not come up; see /var/log/tale-dockerd.log" >&2; tail -20 /var/log/tale-dockerd.log >&2; exit 1; }
fi
echo "setup: ready"

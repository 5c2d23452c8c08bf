# tale images, one multi-stage file. Every base is a build argument, so the same file builds from
# public bases (the defaults) or, where no registry is reachable, from local ones
# (`scripts/build-images.sh --local`, which also supplies a prebuilt static binary in dist/tale).
#
#   docker build --target spawner -t tale-sandbox:latest .
#   docker build --target egress  -t tale-sandbox-egress:latest .
#   docker build --target runtime -t tale-sandbox-runtime:latest .
ARG RUST_IMAGE=rust:1.95-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- builder: the static musl binary (or the prebuilt one in dist/tale when present) -------------
# One `cargo build --locked --release` (scripts/build-static.sh) with rust-toolchain.toml's
# toolchain, which rustup installs on first use; the only package it needs is musl-tools.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN mkdir -p dist && if [ -x dist/tale ]; then cp dist/tale /tale; \
    else apt-get update && apt-get install -y --no-install-recommends musl-tools \
      && cp "$(TALE_PROFILE=release scripts/build-static.sh | tail -1)" /tale; fi

FROM ${DEBIAN_IMAGE} AS certs
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*

# --- spawner: the static binary and a CA bundle, nothing else -------------------------------------
FROM scratch AS spawner
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /tale /usr/local/bin/tale
EXPOSE 8003
ENTRYPOINT ["/usr/local/bin/tale", "spawner"]

# --- egress: tinyproxy + DNS forwarder + iptables, supervised by tale ------------------------------
FROM ${DEBIAN_IMAGE} AS egress
RUN apt-get update && apt-get install -y --no-install-recommends tinyproxy dnsmasq-base iptables curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /tale /usr/local/bin/tale
EXPOSE 3128
HEALTHCHECK --interval=10s --timeout=3s CMD curl -s -o /dev/null http://127.0.0.1:3128/ || exit 1
ENTRYPOINT ["/usr/local/bin/tale", "egress-proxy", "run"]

# --- runtime: the session image (runnerd as PID 1, agent CLIs, browser for the MCP) ----------------
FROM ${DEBIAN_IMAGE} AS runtime
ARG CLAUDE_CODE_VERSION=2.1.173
ARG OPENCODE_VERSION=1.18.33
ARG CODEX_VERSION=0.169.0
ARG PLAYWRIGHT_MCP_VERSION=0.0.41
ENV PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    PATH=/usr/local/bin:/usr/bin:/bin
RUN apt-get update && apt-get install -y --no-install-recommends \
      bash git ca-certificates curl ripgrep fd-find python3 nodejs npm chromium passwd e2fsprogs mount \
    && (apt-get install -y --no-install-recommends gh || true) \
    && ln -sf /usr/bin/fdfind /usr/local/bin/fd \
    && rm -rf /var/lib/apt/lists/*
# dist/extra-ca.crt (local builds behind a TLS-inspecting proxy) is trusted for the npm step only.
COPY --from=builder /src/dist/ /tmp/tale-dist/
RUN if [ -f /tmp/tale-dist/extra-ca.crt ]; then export NODE_EXTRA_CA_CERTS=/tmp/tale-dist/extra-ca.crt; fi \
    && npm install -g --omit=dev "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" "opencode-ai@${OPENCODE_VERSION}" \
      "@openai/codex@${CODEX_VERSION}" "@playwright/mcp@${PLAYWRIGHT_MCP_VERSION}" && npm cache clean --force && rm -rf /tmp/tale-dist
RUN /usr/sbin/groupadd -g 10001 agent && /usr/sbin/useradd -u 10001 -g 10001 -d /workspace/.home -s /bin/bash agent \
    && git config --system credential.helper tale
COPY --from=builder /tale /usr/local/bin/tale
RUN ln -s tale /usr/local/bin/git-credential-tale && ln -s tale /usr/local/bin/runnerd && mkdir -p /workspace
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/tale", "runnerd"]

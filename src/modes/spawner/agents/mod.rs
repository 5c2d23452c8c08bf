//! Agent adapters (spec agents): turn an [`AgentRunSpec`] into the [`SessionExecSpec`] that runs the
//! agent's CLI in a session, and the CLI's JSONL stdout into normalized [`AgentEvent`]s. Pure: no
//! I/O; the spawner's `agent-runs` route does the running and the streaming.
//!
//! Secrets: the gateway token travels in the exec's environment (never argv, which process lists
//! show); the prompt travels on stdin for Claude Code. OpenCode has no stdin prompt source, so its
//! prompt is the trailing argv element — the spec's one documented exception. Real provider keys
//! never enter a session: the session holds only the gateway's session-scoped virtual key.
pub mod claude_code;
pub mod codex;
pub mod events;
pub mod jsonl;
pub mod opencode;
pub mod request;
pub mod terminal;

pub use events::{AgentEvent, AgentResultStatus, AgentSlug, UsageTotals};
pub use jsonl::{AgentEventParser, EventMapper, LineReassembler, MAX_AGENT_LINE_BYTES};
pub use terminal::{ExecEnding, RunEnd};

use std::collections::BTreeMap;

/// `--max-turns` when the run does not say.
pub const DEFAULT_MAX_TURNS: u32 = 40;
/// Longest steer text (characters), as the original caps its steer payloads.
pub const MAX_STEER_TEXT_CHARS: usize = 16_000;
/// The Playwright MCP server of the runtime image (`@playwright/mcp`) and its flags: headless,
/// in-memory profile, Debian's Chromium, no Chromium sandbox (the session is the sandbox).
pub const PLAYWRIGHT_MCP_COMMAND: &str = "mcp-server-playwright";
pub const PLAYWRIGHT_MCP_ARGS: [&str; 6] = [
    "--headless",
    "--isolated",
    "--no-sandbox",
    "--ignore-https-errors",
    "--executable-path",
    "/usr/bin/chromium",
];
/// The agents this build can run.
pub const SUPPORTED_AGENTS: [AgentSlug; 3] =
    [AgentSlug::ClaudeCode, AgentSlug::OpenCode, AgentSlug::Codex];

/// Where the agent's model traffic goes: the LLM gateway's root (no trailing slash) and the
/// session-scoped virtual key the gateway meters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayTarget {
    pub base_url: String,
    pub token: String,
}

/// Plan mode (read-only exploration) or full autonomy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PermissionMode {
    #[default]
    BypassPermissions,
    Plan,
}

/// One agent run, as the platform asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRunSpec {
    /// The user prompt (never in argv for Claude Code).
    pub prompt: String,
    /// Gateway model id; pinned for every model role the CLI has.
    pub model: Option<String>,
    /// Resume handle from an earlier `run-started`/`result`.
    pub agent_session_id: Option<String>,
    /// `None` means [`DEFAULT_MAX_TURNS`].
    pub max_turns: Option<u32>,
    pub system_prompt_append: Option<String>,
    pub gateway: GatewayTarget,
    /// The exec's cwd inside the session (`None`: the workspace root). Relative paths are taken
    /// from the workspace root, absolute ones must lie beneath it (runnerd's cwd rule).
    pub workdir: Option<String>,
    /// Give the agent the Playwright MCP browser (off unless asked for: it needs the runtime
    /// image's Chromium).
    pub browser_mcp: bool,
    pub permission_mode: PermissionMode,
    pub exec_id: Option<String>,
}

impl AgentRunSpec {
    /// A spec with only the required fields set.
    pub fn new(prompt: impl Into<String>, gateway: GatewayTarget) -> AgentRunSpec {
        AgentRunSpec {
            prompt: prompt.into(),
            model: None,
            agent_session_id: None,
            max_turns: None,
            system_prompt_append: None,
            gateway,
            workdir: None,
            browser_mcp: false,
            permission_mode: PermissionMode::default(),
            exec_id: None,
        }
    }

    /// The gateway root without trailing slashes.
    pub fn gateway_root(&self) -> &str {
        self.gateway.base_url.trim_end_matches('/')
    }
}

/// Facts about the session the exec runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionContext {
    /// `HOME` of every exec (runnerd's `<workspace root>/.home`), as a path inside the session.
    pub exec_home: String,
}

/// What happens to stdin after the initial bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinMode {
    Close,
    /// Kept open for steer lines (`POST …/stdin`); the platform sends EOF when done.
    Hold,
}

/// A session exec, ready for `POST …/exec` (`command=argv`, `env`, `cwd`, `stdinBase64`,
/// `stdinMode`, `collectOutput:false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionExecSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<String>,
    pub stdin_mode: StdinMode,
}

/// One agent CLI.
pub trait AgentAdapter: Sync {
    fn slug(&self) -> AgentSlug;
    /// The exec that runs one turn of `spec`.
    fn build_exec(&self, spec: &AgentRunSpec, session: &SessionContext) -> SessionExecSpec;
    /// A fresh stateful mapper for one exec's stdout.
    fn mapper(&self) -> Box<dyn EventMapper>;
    /// The stdin line (ending in `\n`) that steers a running exec with `text`, or `None` when the
    /// CLI reads no stdin.
    fn steer_line(&self, text: &str) -> Option<String>;
    /// True when the prompt is an argv element (bounded by the kernel's per-argument limit).
    fn prompt_in_argv(&self) -> bool {
        false
    }
    /// A parser for one exec's stdout.
    fn parser(&self) -> AgentEventParser {
        AgentEventParser::new(self.mapper())
    }
}

/// The adapter of `slug` (`claude-code`, `opencode`, `codex`).
pub fn adapter(slug: &str) -> Option<&'static dyn AgentAdapter> {
    match slug {
        "claude-code" => Some(&claude_code::ClaudeCode),
        "opencode" => Some(&opencode::OpenCode),
        "codex" => Some(&codex::Codex),
        _ => None,
    }
}

/// A JSON number as a token count: non-numbers are 0, fractions are floored.
pub(crate) fn count(value: Option<&serde_json::Value>) -> u64 {
    match value {
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(|f| f as u64)
            })
            .unwrap_or(0),
        None => 0,
    }
}

/// A JSON string, owned.
pub(crate) fn string(value: Option<&serde_json::Value>) -> Option<String> {
    value.and_then(serde_json::Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry knows exactly the supported agents.
    #[test]
    fn registry() {
        for slug in SUPPORTED_AGENTS {
            assert_eq!(adapter(slug.as_str()).unwrap().slug(), slug);
        }
        assert!(adapter("cursor").is_none());
        assert!(adapter("").is_none());
    }

    /// Token counts tolerate junk.
    #[test]
    fn counts() {
        use serde_json::json;
        assert_eq!(count(Some(&json!(7))), 7);
        assert_eq!(count(Some(&json!(7.9))), 7);
        assert_eq!(count(Some(&json!("7"))), 0);
        assert_eq!(count(Some(&json!(-3))), 0);
        assert_eq!(count(None), 0);
    }
}

//! Claude Code (spec agents §2 era B, §6): `claude -p` speaking stream-json both ways, the prompt on
//! a held stdin, model traffic to `<gateway>/anthropic` with the gateway's virtual key as bearer.
//! The exec builder is here; the stream-json mapping is in [`parse`].
pub mod parse;

use super::events::AgentSlug;
use super::jsonl::EventMapper;
use super::{
    AgentAdapter, AgentRunSpec, PermissionMode, SessionContext, SessionExecSpec, StdinMode,
    DEFAULT_MAX_TURNS, PLAYWRIGHT_MCP_ARGS, PLAYWRIGHT_MCP_COMMAND,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// The CLI, found on the session's PATH.
pub const CLAUDE_BINARY: &str = "claude";
/// Tools the agent may never use: the session reaches the web only through the egress proxy's
/// allow-list, and these would bypass the platform's own browsing tools.
pub const DISALLOWED_TOOLS: &str = "WebSearch,WebFetch";
/// The Claude Code adapter.
pub struct ClaudeCode;

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct UserMessage<'a> {
    role: &'static str,
    content: [TextBlock<'a>; 1],
}

/// `{"type":"user","message":{"role":"user","content":[{"type":"text","text":…}]}}`.
#[derive(Serialize)]
struct UserLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: UserMessage<'a>,
}

/// One stream-json user message line, `\n`-terminated: the initial prompt and every steer.
pub fn user_line(text: &str) -> String {
    let line = UserLine {
        kind: "user",
        message: UserMessage {
            role: "user",
            content: [TextBlock { kind: "text", text }],
        },
    };
    let mut out = serde_json::to_string(&line).expect("a user line serializes");
    out.push('\n');
    out
}

/// The `--mcp-config` JSON giving the agent the Playwright browser.
pub fn mcp_config() -> String {
    serde_json::json!({"mcpServers": {"playwright": {
        "command": PLAYWRIGHT_MCP_COMMAND,
        "args": PLAYWRIGHT_MCP_ARGS,
    }}})
    .to_string()
}

impl AgentAdapter for ClaudeCode {
    fn slug(&self) -> AgentSlug {
        AgentSlug::ClaudeCode
    }

    fn build_exec(&self, spec: &AgentRunSpec, session: &SessionContext) -> SessionExecSpec {
        let mut argv: Vec<String> = [
            CLAUDE_BINARY,
            "-p",
            "--output-format",
            "stream-json",
            "--input-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-mode",
            match spec.permission_mode {
                PermissionMode::Plan => "plan",
                PermissionMode::BypassPermissions => "bypassPermissions",
            },
            "--max-turns",
        ]
        .map(str::to_owned)
        .into();
        argv.push(spec.max_turns.unwrap_or(DEFAULT_MAX_TURNS).to_string());
        let mut flag = |name: &str, value: &Option<String>| {
            if let Some(value) = value {
                argv.push(name.to_owned());
                argv.push(value.clone());
            }
        };
        flag("--resume", &spec.agent_session_id);
        flag("--model", &spec.model);
        flag("--append-system-prompt", &spec.system_prompt_append);
        if spec.browser_mcp {
            argv.extend([
                "--mcp-config".to_owned(),
                mcp_config(),
                "--strict-mcp-config".to_owned(),
            ]);
        }
        // Variadic in the CLI: it must come last so it swallows no other flag.
        argv.extend(["--disallowedTools".to_owned(), DISALLOWED_TOOLS.to_owned()]);

        let mut env = BTreeMap::from([
            (
                "ANTHROPIC_BASE_URL".to_owned(),
                format!("{}/anthropic", spec.gateway_root()),
            ),
            // Sent as `Authorization: Bearer`, which wins over x-api-key; the key is blanked so no
            // inherited provider key is ever sent alongside.
            (
                "ANTHROPIC_AUTH_TOKEN".to_owned(),
                spec.gateway.token.clone(),
            ),
            ("ANTHROPIC_API_KEY".to_owned(), String::new()),
            (
                "CLAUDE_CONFIG_DIR".to_owned(),
                format!("{}/.claude", session.exec_home.trim_end_matches('/')),
            ),
            // No telemetry, error reporting or update checks: sessions reach only the gateway.
            (
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(),
                "1".to_owned(),
            ),
        ]);
        if let Some(model) = &spec.model {
            for name in [
                "ANTHROPIC_MODEL",
                "ANTHROPIC_DEFAULT_OPUS_MODEL",
                "ANTHROPIC_DEFAULT_SONNET_MODEL",
                "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                "CLAUDE_CODE_SUBAGENT_MODEL",
            ] {
                env.insert(name.to_owned(), model.clone());
            }
        }
        SessionExecSpec {
            argv,
            env,
            cwd: spec.workdir.clone(),
            stdin: Some(user_line(&spec.prompt)),
            stdin_mode: StdinMode::Hold,
        }
    }

    fn mapper(&self) -> Box<dyn EventMapper> {
        Box::new(parse::ClaudeMapper::default())
    }

    fn steer_line(&self, text: &str) -> Option<String> {
        Some(user_line(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::spawner::agents::GatewayTarget;
    use serde_json::{json, Value};

    fn session() -> SessionContext {
        SessionContext {
            exec_home: "/workspace/.home".into(),
        }
    }

    fn spec() -> AgentRunSpec {
        AgentRunSpec::new(
            "fix the bug; secret plan",
            GatewayTarget {
                base_url: "http://gw:8080/".into(),
                token: "vk-123".into(),
            },
        )
    }

    /// The minimal run: exact argv in order, exact env, the prompt only on stdin, stdin held.
    #[test]
    fn build_exec_minimal() {
        let exec = ClaudeCode.build_exec(&spec(), &session());
        assert_eq!(
            exec.argv,
            [
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--input-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
                "--permission-mode",
                "bypassPermissions",
                "--max-turns",
                "40",
                "--disallowedTools",
                "WebSearch,WebFetch"
            ]
        );
        let env: Vec<(&str, &str)> = exec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("ANTHROPIC_API_KEY", ""),
                ("ANTHROPIC_AUTH_TOKEN", "vk-123"),
                ("ANTHROPIC_BASE_URL", "http://gw:8080/anthropic"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("CLAUDE_CONFIG_DIR", "/workspace/.home/.claude"),
            ]
        );
        assert_eq!(
            exec.stdin.as_deref(),
            Some("{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"fix the bug; secret plan\"}]}}\n")
        );
        assert_eq!(exec.stdin_mode, StdinMode::Hold);
        assert_eq!(exec.cwd, None);
        assert!(exec.argv.iter().all(|a| !a.contains("secret plan")));
        assert!(exec.argv.iter().all(|a| !a.contains("vk-123")));
    }

    /// Every optional field lands where the spec puts it; the model is pinned for every role.
    #[test]
    fn build_exec_full() {
        let mut spec = spec();
        spec.model = Some("gw-sonnet".into());
        spec.agent_session_id = Some("sess-1".into());
        spec.max_turns = Some(7);
        spec.system_prompt_append = Some("be brief".into());
        spec.workdir = Some("repo".into());
        spec.browser_mcp = true;
        spec.permission_mode = PermissionMode::Plan;
        let exec = ClaudeCode.build_exec(&spec, &session());
        let mcp = mcp_config();
        assert_eq!(
            exec.argv,
            [
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--input-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
                "--permission-mode",
                "plan",
                "--max-turns",
                "7",
                "--resume",
                "sess-1",
                "--model",
                "gw-sonnet",
                "--append-system-prompt",
                "be brief",
                "--mcp-config",
                mcp.as_str(),
                "--strict-mcp-config",
                "--disallowedTools",
                "WebSearch,WebFetch"
            ]
        );
        assert_eq!(
            serde_json::from_str::<Value>(&mcp).unwrap(),
            json!({"mcpServers": {"playwright": {"command": "mcp-server-playwright",
                "args": ["--headless", "--isolated", "--no-sandbox", "--ignore-https-errors", "--executable-path", "/usr/bin/chromium"]}}})
        );
        for name in [
            "ANTHROPIC_MODEL",
            "ANTHROPIC_DEFAULT_OPUS_MODEL",
            "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL",
            "CLAUDE_CODE_SUBAGENT_MODEL",
        ] {
            assert_eq!(exec.env[name], "gw-sonnet", "{name}");
        }
        assert_eq!(exec.env.len(), 10);
        assert_eq!(exec.cwd.as_deref(), Some("repo"));
    }

    /// Steer lines are single JSON lines, whatever the text holds.
    #[test]
    fn steer_line_is_one_json_line() {
        let line = ClaudeCode.steer_line("two\nlines \"quoted\" é").unwrap();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": "two\nlines \"quoted\" é"}]}})
        );
    }
}

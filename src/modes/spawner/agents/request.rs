//! The spawner's agent-run contract (additive to spec era B): `POST /v1/sessions/:id/agent-runs`
//! and `POST …/agent-runs/:execId/steer` bodies, parsed into typed values at the edge, and the
//! resume position of an agent stream.
//!
//! ```text
//! { agent: "claude-code"|"opencode"|"codex", execId,
//!   run: { prompt, model?, agentSessionId?, maxTurns?, systemPromptAppend?, workdir?,
//!          browserMcp?, permissionMode?: "bypassPermissions"|"plan" },
//!   gateway: { baseUrl?, token },      // baseUrl defaults to SANDBOX_LLM_GATEWAY_URL
//!   timeoutMs? }
//! ```
use super::{
    adapter, AgentAdapter, AgentRunSpec, GatewayTarget, PermissionMode, MAX_STEER_TEXT_CHARS,
};
use crate::shared::protocol::runnerd::is_valid_id;
use crate::shared::protocol::spawner::{BadRequest, RequestLimits};
use serde_json::{Map, Value};

/// Highest `run.maxTurns` accepted.
pub const MAX_AGENT_MAX_TURNS: u32 = 10_000;
/// Longest `run.model` / `run.agentSessionId` (they become argv elements).
pub const MAX_AGENT_ARG_BYTES: usize = 256;
/// Longest `run.systemPromptAppend` and, for OpenCode, `run.prompt` — both are argv elements, and
/// Linux refuses a single argument over 128 KiB (`MAX_ARG_STRLEN`).
pub const MAX_AGENT_ARGV_TEXT_BYTES: usize = 128 * 1024 - 1;
/// Longest `gateway.token` / `gateway.baseUrl`.
pub const MAX_GATEWAY_FIELD_BYTES: usize = 4096;

/// A validated `POST …/agent-runs`.
pub struct AgentRunRequest {
    pub adapter: &'static dyn AgentAdapter,
    pub exec_id: String,
    pub spec: AgentRunSpec,
    pub timeout_ms: u64,
}

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

fn agent_field(body: &Map<String, Value>) -> Result<&'static dyn AgentAdapter, BadRequest> {
    body.get("agent")
        .and_then(Value::as_str)
        .and_then(adapter)
        .ok_or_else(|| bad("agent must be one of \"claude-code\", \"opencode\", \"codex\""))
}

fn exec_id_field(body: &Map<String, Value>) -> Result<String, BadRequest> {
    body.get("execId")
        .and_then(Value::as_str)
        .filter(|id| is_valid_id(id))
        .map(str::to_owned)
        .ok_or_else(|| bad("execId must match ^[A-Za-z0-9_-]{1,64}$"))
}

fn optional_string<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    field: &str,
) -> Result<Option<&'a str>, BadRequest> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{path}.{field} must be a string"))),
    }
}

/// A value that becomes one argv element after a flag: short, printable, and not flag-like.
fn argument(object: &Map<String, Value>, field: &str) -> Result<Option<String>, BadRequest> {
    let Some(value) = optional_string(object, "run", field)? else {
        return Ok(None);
    };
    let fine = !value.is_empty()
        && value.len() <= MAX_AGENT_ARG_BYTES
        && !value.starts_with('-')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if fine {
        Ok(Some(value.to_owned()))
    } else {
        Err(bad(format!(
            "run.{field} must be 1..={MAX_AGENT_ARG_BYTES} bytes without whitespace, not starting with '-'"
        )))
    }
}

fn clamped(value: Option<&Value>, default: u64, max: u64) -> u64 {
    match value.and_then(Value::as_f64) {
        Some(v) if v.is_finite() && v > 0.0 => (v as u64).clamp(1, max),
        _ => default.min(max),
    }
}

fn gateway(body: &Map<String, Value>, default_base_url: &str) -> Result<GatewayTarget, BadRequest> {
    const MISSING: &str = "gateway.token is required: the session's gateway virtual key";
    let gateway = match body.get("gateway") {
        None | Some(Value::Null) => return Err(bad(MISSING)),
        Some(Value::Object(g)) => g,
        Some(_) => return Err(bad("gateway must be an object")),
    };
    let token = optional_string(gateway, "gateway", "token")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad(MISSING))?;
    if token.len() > MAX_GATEWAY_FIELD_BYTES
        || token.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad(format!(
            "gateway.token must be at most {MAX_GATEWAY_FIELD_BYTES} bytes without whitespace"
        )));
    }
    let base_url = optional_string(gateway, "gateway", "baseUrl")?.unwrap_or(default_base_url);
    let well_formed = (base_url.starts_with("http://") || base_url.starts_with("https://"))
        && base_url.len() <= MAX_GATEWAY_FIELD_BYTES
        && !base_url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace());
    if !well_formed {
        return Err(bad("gateway.baseUrl must be an http:// or https:// URL"));
    }
    Ok(GatewayTarget {
        base_url: base_url.trim_end_matches('/').to_owned(),
        token: token.to_owned(),
    })
}

impl AgentRunRequest {
    pub fn parse(
        body: &Value,
        limits: &RequestLimits,
        default_gateway_url: &str,
    ) -> Result<AgentRunRequest, BadRequest> {
        let body = body
            .as_object()
            .ok_or_else(|| bad("body must be a JSON object"))?;
        let adapter = agent_field(body)?;
        let exec_id = exec_id_field(body)?;
        let run = match body.get("run") {
            Some(Value::Object(run)) => run,
            _ => return Err(bad("run must be an object")),
        };
        let prompt = optional_string(run, "run", "prompt")?
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| bad("run.prompt must be a non-empty string"))?;
        if adapter.prompt_in_argv() && prompt.len() > MAX_AGENT_ARGV_TEXT_BYTES {
            return Err(bad(format!(
                "run.prompt is an argv element for {} and may be at most {MAX_AGENT_ARGV_TEXT_BYTES} bytes",
                adapter.slug().as_str()
            )));
        }
        let max_turns = match run.get("maxTurns") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| (1..=u64::from(MAX_AGENT_MAX_TURNS)).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "run.maxTurns must be an integer in 1..={MAX_AGENT_MAX_TURNS}"
                        ))
                    })? as u32,
            ),
        };
        let system_prompt_append = optional_string(run, "run", "systemPromptAppend")?;
        if system_prompt_append.is_some_and(|s| s.len() > MAX_AGENT_ARGV_TEXT_BYTES) {
            return Err(bad(format!(
                "run.systemPromptAppend may be at most {MAX_AGENT_ARGV_TEXT_BYTES} bytes"
            )));
        }
        let workdir = optional_string(run, "run", "workdir")?;
        if workdir.is_some_and(|w| w.contains('\0')) {
            return Err(bad("run.workdir must not contain NUL"));
        }
        let browser_mcp = match run.get("browserMcp") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("run.browserMcp must be a boolean")),
        };
        let permission_mode = match optional_string(run, "run", "permissionMode")? {
            None | Some("bypassPermissions") => PermissionMode::BypassPermissions,
            Some("plan") => PermissionMode::Plan,
            Some(_) => {
                return Err(bad(
                    "run.permissionMode must be \"bypassPermissions\" or \"plan\"",
                ))
            }
        };
        let spec = AgentRunSpec {
            prompt: prompt.to_owned(),
            model: argument(run, "model")?,
            agent_session_id: argument(run, "agentSessionId")?,
            max_turns,
            system_prompt_append: system_prompt_append.map(str::to_owned),
            gateway: gateway(body, default_gateway_url)?,
            workdir: workdir.filter(|w| !w.is_empty()).map(str::to_owned),
            browser_mcp,
            permission_mode,
            exec_id: Some(exec_id.clone()),
        };
        Ok(AgentRunRequest {
            adapter,
            exec_id,
            spec,
            timeout_ms: clamped(
                body.get("timeoutMs"),
                limits.exec_default_timeout_ms,
                limits.exec_max_timeout_ms,
            ),
        })
    }
}

/// A validated `POST …/agent-runs/:execId/steer`: `{agent, text?, eof?}`, at least one of them.
pub struct SteerRequest {
    /// The stdin line to write (already in the agent's format, `\n`-terminated).
    pub line: Option<String>,
    pub eof: bool,
}

impl SteerRequest {
    /// `max_line_bytes` is runnerd's stdin line cap.
    pub fn parse(body: &Value, max_line_bytes: usize) -> Result<SteerRequest, BadRequest> {
        let body = body
            .as_object()
            .ok_or_else(|| bad("body must be a JSON object"))?;
        let adapter = agent_field(body)?;
        let eof = match body.get("eof") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("eof must be a boolean")),
        };
        let text = match body.get("text") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if !t.is_empty() => Some(t.as_str()),
            Some(_) => return Err(bad("text must be a non-empty string")),
        };
        if text.is_none() && !eof {
            return Err(bad("one of text or eof is required"));
        }
        let line = match text {
            None => None,
            Some(text) => {
                if text.chars().count() > MAX_STEER_TEXT_CHARS {
                    return Err(bad(format!(
                        "text may be at most {MAX_STEER_TEXT_CHARS} characters"
                    )));
                }
                let line = adapter.steer_line(text).ok_or_else(|| {
                    bad(format!(
                        "{} reads no stdin and cannot be steered",
                        adapter.slug().as_str()
                    ))
                })?;
                if line.len() > max_line_bytes {
                    return Err(bad(format!(
                        "text encodes to a {}-byte stdin line, over the {max_line_bytes}-byte cap",
                        line.len()
                    )));
                }
                Some(line)
            }
        };
        Ok(SteerRequest { line, eof })
    }
}

/// Where an agent stream resumes: `stdout` event `N` is position `N.0`, the agent events parsed
/// from that chunk are `N.1`, `N.2`, …; an event is sent only when its position is after the
/// cursor. Written `N` or `N.k` (SSE ids, `sinceSeq`, `Last-Event-ID`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPosition {
    pub seq: u64,
    pub sub: u32,
}

impl StreamPosition {
    pub const START: StreamPosition = StreamPosition { seq: 0, sub: 0 };

    /// `N` or `N.k`; anything else is `None`.
    pub fn parse(text: &str) -> Option<StreamPosition> {
        let text = text.trim();
        let (seq, sub) = match text.split_once('.') {
            Some((seq, sub)) => (seq, sub.parse().ok()?),
            None => (text, 0),
        };
        Some(StreamPosition {
            seq: seq.parse().ok()?,
            sub,
        })
    }

    /// The SSE id of an agent event (`sub` ≥ 1).
    pub fn id(&self) -> String {
        format!("{}.{}", self.seq, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::spawner::agents::AgentSlug;
    use serde_json::json;

    const LIMITS: RequestLimits = crate::shared::protocol::spawner::TEST_LIMITS;
    const GW: &str = "http://sandbox-llm-gateway:8080";

    fn parse(body: Value) -> Result<AgentRunRequest, String> {
        AgentRunRequest::parse(&body, &LIMITS, GW).map_err(|e| e.0)
    }

    fn base() -> Value {
        json!({"agent": "claude-code", "execId": "run-1", "run": {"prompt": "hi"}, "gateway": {"token": "vk"}})
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut body = base();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body
    }

    /// Defaults: the configured gateway, 40 turns (unset), bypassPermissions, no MCP, exec timeout.
    #[test]
    fn minimal_request() {
        let run = parse(base()).unwrap();
        assert_eq!(run.adapter.slug(), AgentSlug::ClaudeCode);
        assert_eq!(run.exec_id, "run-1");
        assert_eq!(
            run.spec.gateway,
            GatewayTarget {
                base_url: GW.into(),
                token: "vk".into()
            }
        );
        assert_eq!((run.spec.max_turns, run.spec.browser_mcp), (None, false));
        assert_eq!(run.spec.permission_mode, PermissionMode::BypassPermissions);
        assert_eq!(run.timeout_ms, 600_000);
        assert_eq!(run.spec.exec_id.as_deref(), Some("run-1"));
        let full = parse(json!({"agent": "opencode", "execId": "r", "timeoutMs": 9e12,
            "run": {"prompt": "p", "model": "gpt-4o:latest", "agentSessionId": "ses_1", "maxTurns": 3,
                    "systemPromptAppend": "- be brief", "workdir": "repo", "browserMcp": true, "permissionMode": "plan"},
            "gateway": {"baseUrl": "https://gw.example/", "token": "vk"}}))
        .unwrap();
        assert_eq!(full.adapter.slug(), AgentSlug::OpenCode);
        assert_eq!(full.timeout_ms, 7_200_000);
        assert_eq!(full.spec.gateway.base_url, "https://gw.example");
        assert_eq!(full.spec.model.as_deref(), Some("gpt-4o:latest"));
        assert_eq!(full.spec.max_turns, Some(3));
        assert_eq!(full.spec.permission_mode, PermissionMode::Plan);
        assert!(full.spec.browser_mcp);
    }

    /// Every refusal names the field.
    #[test]
    fn bad_input_table() {
        let cases = [
            (json!([1]), "body must be a JSON object"),
            (with(&["agent"], json!("cursor")), "agent must be one of \"claude-code\", \"opencode\", \"codex\""),
            (with(&["execId"], json!("a/b")), "execId must match ^[A-Za-z0-9_-]{1,64}$"),
            (with(&["run"], json!("hi")), "run must be an object"),
            (with(&["run", "prompt"], json!("  ")), "run.prompt must be a non-empty string"),
            (with(&["run", "prompt"], json!(5)), "run.prompt must be a string"),
            (with(&["run", "model"], json!("--dangerous")), "run.model must be 1..=256 bytes without whitespace, not starting with '-'"),
            (with(&["run", "agentSessionId"], json!("a b")), "run.agentSessionId must be 1..=256 bytes without whitespace, not starting with '-'"),
            (with(&["run", "maxTurns"], json!(0)), "run.maxTurns must be an integer in 1..=10000"),
            (with(&["run", "maxTurns"], json!(2.5)), "run.maxTurns must be an integer in 1..=10000"),
            (with(&["run", "browserMcp"], json!("yes")), "run.browserMcp must be a boolean"),
            (with(&["run", "permissionMode"], json!("acceptEdits")), "run.permissionMode must be \"bypassPermissions\" or \"plan\""),
            (with(&["run", "workdir"], json!("a\u{0}b")), "run.workdir must not contain NUL"),
            (with(&["gateway"], Value::Null), "gateway.token is required: the session's gateway virtual key"),
            (with(&["gateway"], json!({"baseUrl": "http://x"})), "gateway.token is required: the session's gateway virtual key"),
            (with(&["gateway"], json!("vk")), "gateway must be an object"),
            (with(&["gateway", "token"], json!("a\nb")), "gateway.token must be at most 4096 bytes without whitespace"),
            (with(&["gateway", "baseUrl"], json!("file:///etc")), "gateway.baseUrl must be an http:// or https:// URL"),
        ];
        for (body, message) in cases {
            assert_eq!(
                parse(body.clone()).err().as_deref(),
                Some(message),
                "{body}"
            );
        }
        let long = "x".repeat(MAX_AGENT_ARGV_TEXT_BYTES + 1);
        let mut body = with(&["run", "prompt"], json!(long));
        assert!(
            parse(body.clone()).is_ok(),
            "Claude Code's prompt goes on stdin: no argv cap"
        );
        body["agent"] = json!("opencode");
        assert!(parse(body)
            .err()
            .unwrap()
            .contains("argv element for opencode"));
        assert!(parse(with(&["run", "systemPromptAppend"], json!(long)))
            .err()
            .unwrap()
            .contains("at most"));
    }

    /// Steer: text becomes the agent's stdin line; caps in characters and in line bytes.
    #[test]
    fn steer_requests() {
        let steer = |body: Value| SteerRequest::parse(&body, 65_536).map_err(|e| e.0);
        let s = steer(json!({"agent": "claude-code", "text": "also add tests"})).unwrap();
        assert_eq!(
            s.line.as_deref(),
            Some("{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"also add tests\"}]}}\n")
        );
        assert!(!s.eof);
        let s = steer(json!({"agent": "claude-code", "eof": true})).unwrap();
        assert!(s.line.is_none() && s.eof);
        assert_eq!(
            steer(json!({"agent": "claude-code"})).err().as_deref(),
            Some("one of text or eof is required")
        );
        assert_eq!(
            steer(json!({"agent": "opencode", "text": "x"}))
                .err()
                .as_deref(),
            Some("opencode reads no stdin and cannot be steered")
        );
        assert_eq!(
            steer(json!({"agent": "claude-code", "text": "é".repeat(MAX_STEER_TEXT_CHARS)}))
                .map(|s| s.line.is_some()),
            Ok(true),
            "16 000 two-byte characters fit the 64 KiB line"
        );
        assert_eq!(
            steer(json!({"agent": "claude-code", "text": "x".repeat(MAX_STEER_TEXT_CHARS + 1)}))
                .err()
                .as_deref(),
            Some("text may be at most 16000 characters")
        );
        assert!(steer(
            json!({"agent": "claude-code", "text": "\u{1}".repeat(MAX_STEER_TEXT_CHARS)})
        )
        .err()
        .unwrap()
        .contains("over the 65536-byte cap"));
        assert_eq!(
            steer(json!({"agent": "claude-code", "eof": 1}))
                .err()
                .as_deref(),
            Some("eof must be a boolean")
        );
    }

    /// Positions order stdout before the agent events of its chunk; ids read back.
    #[test]
    fn stream_positions() {
        let p = |s: &str| StreamPosition::parse(s);
        assert_eq!(p("12"), Some(StreamPosition { seq: 12, sub: 0 }));
        assert_eq!(p(" 12.3 "), Some(StreamPosition { seq: 12, sub: 3 }));
        for junk in ["", "x", "1.x", "-1", "1.2.3"] {
            assert_eq!(p(junk), None, "{junk}");
        }
        assert!(p("12").unwrap() < p("12.1").unwrap());
        assert!(p("12.9").unwrap() < p("13").unwrap());
        assert_eq!(
            p(&StreamPosition { seq: 4, sub: 2 }.id()),
            Some(StreamPosition { seq: 4, sub: 2 })
        );
        assert_eq!(StreamPosition::START, StreamPosition::default());
    }
}

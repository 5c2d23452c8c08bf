//! The normalized agent event union (spec agents §4): what every adapter's parser turns its CLI's
//! native JSONL into, and what the spawner streams as `event: agent`. JSON is `{"type": <kebab-case
//! tag>, <camelCase fields>}`; optional fields are omitted when absent.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which agent CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentSlug {
    #[serde(rename = "claude-code")]
    ClaudeCode,
    #[serde(rename = "opencode")]
    OpenCode,
    #[serde(rename = "codex")]
    Codex,
}

impl AgentSlug {
    /// The wire name (`claude-code`, `opencode`, `codex`).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentSlug::ClaudeCode => "claude-code",
            AgentSlug::OpenCode => "opencode",
            AgentSlug::Codex => "codex",
        }
    }
}

/// How a run (one turn of the agent) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentResultStatus {
    Completed,
    Error,
    MaxTurns,
    Cancelled,
    /// The run's deadline (`timeoutMs`) ended it.
    TimedOut,
}

/// `usageTotals` of a `result`: the cost is a client-side estimate; the gateway meters
/// authoritatively.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_estimate_usd: Option<f64>,
}

/// One normalized event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum AgentEvent {
    /// The CLI started (or resumed) a conversation; `agentSessionId` resumes it later.
    RunStarted {
        agent: AgentSlug,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_session_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// A piece of assistant text as it streams.
    TextDelta {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_tool_use_id: Option<String>,
    },
    /// A completed assistant text block.
    Text {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_tool_use_id: Option<String>,
    },
    /// The model called a tool.
    ToolUse {
        tool_use_id: String,
        tool_name: String,
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_tool_use_id: Option<String>,
    },
    /// A tool call's outcome.
    ToolResult {
        tool_use_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_tool_use_id: Option<String>,
    },
    /// Tokens of one model response (de-duplicated by message id for Claude Code).
    Usage {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        input_tokens: u64,
        output_tokens: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_read_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_write_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_estimate_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_tool_use_id: Option<String>,
    },
    /// The turn ended.
    Result {
        status: AgentResultStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_session_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        final_text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage_totals: Option<UsageTotals>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_error_status: Option<Value>,
        /// Why a run did not complete: the CLI's error, its last stderr line, or how the exec
        /// ended; at most [`MAX_RESULT_REASON_BYTES`](super::terminal::MAX_RESULT_REASON_BYTES).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The CLI reported an error, or its output could not be read (an oversized line).
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    /// A native event with no mapping, passed through.
    Raw { agent: AgentSlug, payload: Value },
}

/// Which adapters emit each event type (the README's event table is checked against it). The
/// spawner itself adds a `result` for every adapter when a run ends without one.
pub const EMITTED_BY: [(&str, &[AgentSlug]); 9] = {
    use AgentSlug::{ClaudeCode as C, Codex as X, OpenCode as O};
    [
        ("run-started", &[C, O, X]),
        ("text-delta", &[C]),
        ("text", &[C, O, X]),
        ("tool-use", &[C, O, X]),
        ("tool-result", &[C, O, X]),
        ("usage", &[C, O, X]),
        ("result", &[C, O, X]),
        ("error", &[C, O, X]),
        ("raw", &[C, O, X]),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One event of each type with every field set, to read the wire field names off serde.
    fn every_variant_full() -> Vec<AgentEvent> {
        let s = || Some("x".to_owned());
        vec![
            AgentEvent::RunStarted {
                agent: AgentSlug::Codex,
                agent_session_id: s(),
                model: s(),
            },
            AgentEvent::TextDelta {
                text: "x".into(),
                parent_tool_use_id: s(),
            },
            AgentEvent::Text {
                text: "x".into(),
                parent_tool_use_id: s(),
            },
            AgentEvent::ToolUse {
                tool_use_id: "x".into(),
                tool_name: "x".into(),
                input: json!(1),
                parent_tool_use_id: s(),
            },
            AgentEvent::ToolResult {
                tool_use_id: "x".into(),
                output: Some(json!(1)),
                is_error: Some(true),
                parent_tool_use_id: s(),
            },
            AgentEvent::Usage {
                model: s(),
                input_tokens: 1,
                output_tokens: 1,
                cache_read_tokens: Some(1),
                cache_write_tokens: Some(1),
                cost_estimate_usd: Some(1.0),
                parent_tool_use_id: s(),
            },
            AgentEvent::Result {
                status: AgentResultStatus::Completed,
                agent_session_id: s(),
                final_text: s(),
                duration_ms: Some(1),
                usage_totals: Some(UsageTotals {
                    input_tokens: 1,
                    output_tokens: 1,
                    cost_estimate_usd: None,
                }),
                is_error: Some(true),
                api_error_status: Some(json!(529)),
                reason: s(),
            },
            AgentEvent::Error {
                message: "x".into(),
                raw: Some(json!(1)),
            },
            AgentEvent::Raw {
                agent: AgentSlug::Codex,
                payload: json!(1),
            },
        ]
    }

    /// The README's event table lists exactly the union: every type, every field (`?` when it may
    /// be absent: the ones serde omits when `None`), and the adapters of [`EMITTED_BY`].
    #[test]
    fn readme_event_table_matches_the_code() {
        let readme = include_str!("../../../../README.md");
        let table = readme
            .split("<!-- agent-events:start -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- agent-events:end -->").next())
            .expect("README has the agent event table between its markers");
        let slugs = [AgentSlug::ClaudeCode, AgentSlug::OpenCode, AgentSlug::Codex];
        let mut rows = Vec::new();
        for line in table
            .lines()
            .filter(|l| l.starts_with("| `") && !l.starts_with("| `type`"))
        {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 2 + slugs.len(), "{line}");
            let kind = cells[0].trim_matches('`').to_owned();
            let fields: Vec<String> = cells[1]
                .split(", ")
                .map(|f| f.trim().trim_matches('`').to_owned())
                .collect();
            let emitters: Vec<AgentSlug> = slugs
                .iter()
                .zip(&cells[2..])
                .filter(|(_, cell)| **cell == "yes")
                .map(|(slug, _)| *slug)
                .collect();
            rows.push((kind, fields, emitters));
        }
        let mut expected = Vec::new();
        for (full, (kind, emitters)) in every_variant_full().into_iter().zip(EMITTED_BY) {
            let wire = serde_json::to_value(&full).unwrap();
            assert_eq!(wire["type"], kind);
            let mut minimal_keys = Vec::new();
            // The same event with every Option cleared shows which fields may be absent.
            let minimal = serde_json::to_value(match full {
                AgentEvent::RunStarted { agent, .. } => AgentEvent::RunStarted {
                    agent,
                    agent_session_id: None,
                    model: None,
                },
                AgentEvent::TextDelta { text, .. } => AgentEvent::TextDelta {
                    text,
                    parent_tool_use_id: None,
                },
                AgentEvent::Text { text, .. } => AgentEvent::Text {
                    text,
                    parent_tool_use_id: None,
                },
                AgentEvent::ToolUse {
                    tool_use_id,
                    tool_name,
                    input,
                    ..
                } => AgentEvent::ToolUse {
                    tool_use_id,
                    tool_name,
                    input,
                    parent_tool_use_id: None,
                },
                AgentEvent::ToolResult { tool_use_id, .. } => AgentEvent::ToolResult {
                    tool_use_id,
                    output: None,
                    is_error: None,
                    parent_tool_use_id: None,
                },
                AgentEvent::Usage {
                    input_tokens,
                    output_tokens,
                    ..
                } => AgentEvent::Usage {
                    model: None,
                    input_tokens,
                    output_tokens,
                    cache_read_tokens: None,
                    cache_write_tokens: None,
                    cost_estimate_usd: None,
                    parent_tool_use_id: None,
                },
                AgentEvent::Result { status, .. } => AgentEvent::Result {
                    status,
                    agent_session_id: None,
                    final_text: None,
                    duration_ms: None,
                    usage_totals: None,
                    is_error: None,
                    api_error_status: None,
                    reason: None,
                },
                AgentEvent::Error { message, .. } => AgentEvent::Error { message, raw: None },
                raw @ AgentEvent::Raw { .. } => raw,
            })
            .unwrap();
            for key in minimal.as_object().unwrap().keys() {
                minimal_keys.push(key.clone());
            }
            let fields: Vec<String> = wire
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "type")
                .map(|k| {
                    if minimal_keys.contains(k) {
                        k.clone()
                    } else {
                        format!("{k}?")
                    }
                })
                .collect();
            expected.push((kind.to_owned(), fields, emitters.to_vec()));
        }
        // Field order in the README is free; compare sorted.
        let sorted = |rows: Vec<(String, Vec<String>, Vec<AgentSlug>)>| {
            rows.into_iter()
                .map(|(k, mut f, e)| {
                    f.sort();
                    (k, f, e)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sorted(rows), sorted(expected));
    }

    /// Tags are kebab-case, fields camelCase, absent options omitted; the JSON reads back.
    #[test]
    fn wire_shape() {
        let cases = [
            (
                AgentEvent::RunStarted {
                    agent: AgentSlug::ClaudeCode,
                    agent_session_id: Some("s".into()),
                    model: None,
                },
                json!({"type": "run-started", "agent": "claude-code", "agentSessionId": "s"}),
            ),
            (
                AgentEvent::TextDelta {
                    text: "a".into(),
                    parent_tool_use_id: Some("tu".into()),
                },
                json!({"type": "text-delta", "text": "a", "parentToolUseId": "tu"}),
            ),
            (
                AgentEvent::ToolUse {
                    tool_use_id: "t".into(),
                    tool_name: "Bash".into(),
                    input: json!({"command": "ls"}),
                    parent_tool_use_id: None,
                },
                json!({"type": "tool-use", "toolUseId": "t", "toolName": "Bash", "input": {"command": "ls"}}),
            ),
            (
                AgentEvent::ToolResult {
                    tool_use_id: "t".into(),
                    output: Some(json!("ok")),
                    is_error: Some(false),
                    parent_tool_use_id: None,
                },
                json!({"type": "tool-result", "toolUseId": "t", "output": "ok", "isError": false}),
            ),
            (
                AgentEvent::Usage {
                    model: Some("m".into()),
                    input_tokens: 1,
                    output_tokens: 2,
                    cache_read_tokens: Some(3),
                    cache_write_tokens: Some(0),
                    cost_estimate_usd: None,
                    parent_tool_use_id: None,
                },
                json!({"type": "usage", "model": "m", "inputTokens": 1, "outputTokens": 2, "cacheReadTokens": 3, "cacheWriteTokens": 0}),
            ),
            (
                AgentEvent::Result {
                    status: AgentResultStatus::MaxTurns,
                    agent_session_id: None,
                    final_text: None,
                    duration_ms: Some(5),
                    usage_totals: Some(UsageTotals {
                        input_tokens: 0,
                        output_tokens: 0,
                        cost_estimate_usd: Some(0.5),
                    }),
                    is_error: None,
                    api_error_status: None,
                    reason: Some("r".into()),
                },
                json!({"type": "result", "status": "max-turns", "durationMs": 5, "reason": "r",
                       "usageTotals": {"inputTokens": 0, "outputTokens": 0, "costEstimateUsd": 0.5}}),
            ),
            (
                AgentEvent::Error {
                    message: "m".into(),
                    raw: None,
                },
                json!({"type": "error", "message": "m"}),
            ),
            (
                AgentEvent::Raw {
                    agent: AgentSlug::OpenCode,
                    payload: json!({"type": "x"}),
                },
                json!({"type": "raw", "agent": "opencode", "payload": {"type": "x"}}),
            ),
        ];
        for (event, wire) in cases {
            assert_eq!(serde_json::to_value(&event).unwrap(), wire);
            assert_eq!(serde_json::from_value::<AgentEvent>(wire).unwrap(), event);
        }
    }
}

//! Claude Code's stream-json output → normalized events (spec agents §6), with usage counted once
//! per assistant message id.
use super::super::events::{AgentEvent, AgentResultStatus, AgentSlug, UsageTotals};
use super::super::jsonl::EventMapper;
use super::super::terminal::{bounded, MAX_RESULT_REASON_BYTES};
use super::super::{count, string};
use serde_json::{Map, Value};
use std::collections::{HashSet, VecDeque};

/// How many assistant message ids a parser remembers for usage de-duplication; repeats are
/// adjacent (one message split over several lines), so forgetting the oldest is harmless.
pub const MAX_REMEMBERED_MESSAGE_IDS: usize = 4096;

/// Maps stream-json events (spec §6), de-duplicating usage by assistant message id.
#[derive(Default)]
pub struct ClaudeMapper {
    seen_ids: HashSet<String>,
    seen_order: VecDeque<String>,
}

impl ClaudeMapper {
    /// True the first time `id` is seen.
    fn first_sighting(&mut self, id: &str) -> bool {
        if self.seen_ids.contains(id) {
            return false;
        }
        if self.seen_order.len() == MAX_REMEMBERED_MESSAGE_IDS {
            if let Some(oldest) = self.seen_order.pop_front() {
                self.seen_ids.remove(&oldest);
            }
        }
        self.seen_ids.insert(id.to_owned());
        self.seen_order.push_back(id.to_owned());
        true
    }

    fn assistant(&mut self, event: &Map<String, Value>, parent: Option<String>) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        let Some(message) = event.get("message").and_then(Value::as_object) else {
            return out;
        };
        for block in message
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(text) = string(block.get("text")).filter(|t| !t.is_empty()) {
                        out.push(AgentEvent::Text {
                            text,
                            parent_tool_use_id: parent.clone(),
                        });
                    }
                }
                Some("tool_use") => out.push(AgentEvent::ToolUse {
                    tool_use_id: string(block.get("id")).unwrap_or_default(),
                    tool_name: string(block.get("name")).unwrap_or_default(),
                    input: block.get("input").cloned().unwrap_or(Value::Null),
                    parent_tool_use_id: parent.clone(),
                }),
                _ => {}
            }
        }
        if let Some(usage) = message.get("usage").and_then(Value::as_object) {
            let first = match message.get("id").and_then(Value::as_str) {
                Some(id) => self.first_sighting(id),
                None => true,
            };
            if first {
                out.push(AgentEvent::Usage {
                    model: string(message.get("model")),
                    input_tokens: count(usage.get("input_tokens")),
                    output_tokens: count(usage.get("output_tokens")),
                    cache_read_tokens: Some(count(usage.get("cache_read_input_tokens"))),
                    cache_write_tokens: Some(count(usage.get("cache_creation_input_tokens"))),
                    cost_estimate_usd: None,
                    parent_tool_use_id: parent,
                });
            }
        }
        out
    }
}

fn tool_results(event: &Map<String, Value>, parent: Option<String>) -> Vec<AgentEvent> {
    event
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|block| AgentEvent::ToolResult {
            tool_use_id: string(block.get("tool_use_id")).unwrap_or_default(),
            output: block.get("content").cloned(),
            is_error: block.get("is_error").and_then(Value::as_bool),
            parent_tool_use_id: parent.clone(),
        })
        .collect()
}

fn result(event: &Map<String, Value>) -> AgentEvent {
    let is_error = event.get("is_error").and_then(Value::as_bool);
    let status = match event.get("subtype").and_then(Value::as_str) {
        // An API failure after the CLI's retries (e.g. HTTP 529) is reported as `success` with
        // `is_error: true` and the error text as `result`.
        _ if is_error == Some(true) => AgentResultStatus::Error,
        None | Some("") | Some("success") => AgentResultStatus::Completed,
        Some("error_max_turns") => AgentResultStatus::MaxTurns,
        Some(_) => AgentResultStatus::Error,
    };
    let cost = event.get("total_cost_usd").and_then(Value::as_f64);
    let final_text = string(event.get("result"));
    let reason = match status {
        AgentResultStatus::Completed => None,
        _ => final_text
            .clone()
            .filter(|t| !t.trim().is_empty())
            .map(|t| bounded(&t, MAX_RESULT_REASON_BYTES)),
    };
    AgentEvent::Result {
        status,
        agent_session_id: string(event.get("session_id")),
        final_text,
        duration_ms: event
            .get("duration_ms")
            .filter(|v| v.is_number())
            .map(|v| count(Some(v))),
        usage_totals: cost.map(|cost| UsageTotals {
            input_tokens: 0,
            output_tokens: 0,
            cost_estimate_usd: Some(cost),
        }),
        is_error,
        api_error_status: event
            .get("api_error_status")
            .filter(|v| !v.is_null())
            .cloned(),
        reason,
    }
}

impl EventMapper for ClaudeMapper {
    fn map(&mut self, event: Map<String, Value>) -> Vec<AgentEvent> {
        let parent = string(event.get("parent_tool_use_id"));
        let kind = event.get("type").and_then(Value::as_str);
        let subtype = event.get("subtype").and_then(Value::as_str);
        match (kind, subtype) {
            (Some("system"), Some("init")) => vec![AgentEvent::RunStarted {
                agent: AgentSlug::ClaudeCode,
                agent_session_id: string(event.get("session_id")),
                // The spec's recordings carry it in `data`; CLI 2.1 prints it at the top level.
                model: string(event.get("data").and_then(|d| d.get("model")))
                    .or_else(|| string(event.get("model"))),
            }],
            (Some("stream_event"), _) => {
                let delta = event.get("event").and_then(|e| e.get("delta"));
                match delta {
                    Some(d) if d.get("type").and_then(Value::as_str) == Some("text_delta") => {
                        string(d.get("text"))
                            .filter(|t| !t.is_empty())
                            .map(|text| AgentEvent::TextDelta {
                                text,
                                parent_tool_use_id: parent,
                            })
                            .into_iter()
                            .collect()
                    }
                    _ => Vec::new(),
                }
            }
            (Some("assistant"), _) => self.assistant(&event, parent),
            (Some("user"), _) => tool_results(&event, parent),
            (Some("result"), _) => vec![result(&event)],
            _ => vec![AgentEvent::Raw {
                agent: AgentSlug::ClaudeCode,
                payload: Value::Object(event),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClaudeCode;
    use super::*;
    use crate::modes::spawner::agents::{AgentAdapter, AgentEventParser};
    use serde_json::json;

    const FIXTURE: &str =
        include_str!("../../../../../tests/fixtures/claude_code/issue-to-pr.jsonl");

    fn parse_all(chunks: &[&str]) -> Vec<AgentEvent> {
        let mut parser = ClaudeCode.parser();
        let mut events: Vec<AgentEvent> = chunks.iter().flat_map(|c| parser.feed(c)).collect();
        events.extend(parser.end());
        events
    }

    fn kinds(events: &[AgentEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// The spec's 8-line fixture: run-started, 2 text-deltas, text, 3 tool-uses, 1 tool-result,
    /// exactly 2 usage events (msg_1 repeated is counted once), result completed.
    #[test]
    fn fixture_yields_the_specified_events() {
        assert_eq!(FIXTURE.lines().count(), 8);
        let events = parse_all(&[FIXTURE]);
        assert_eq!(
            kinds(&events),
            [
                "run-started",
                "text-delta",
                "text-delta",
                "text",
                "tool-use",
                "usage",
                "tool-use",
                "tool-result",
                "tool-use",
                "usage",
                "result"
            ]
        );
        assert_eq!(
            events[0],
            AgentEvent::RunStarted {
                agent: AgentSlug::ClaudeCode,
                agent_session_id: Some("sess-abc".into()),
                model: Some("claude-sonnet-4-6".into())
            }
        );
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Reading the issue.");
        assert_eq!(
            events[4],
            AgentEvent::ToolUse {
                tool_use_id: "tu_1".into(),
                tool_name: "Bash".into(),
                input: json!({"command": "git checkout -b fix/issue-1"}),
                parent_tool_use_id: None
            }
        );
        assert_eq!(
            events[5],
            AgentEvent::Usage {
                model: Some("claude-sonnet-4-6".into()),
                input_tokens: 1200,
                output_tokens: 45,
                cache_read_tokens: Some(800),
                cache_write_tokens: Some(0),
                cost_estimate_usd: None,
                parent_tool_use_id: None
            }
        );
        assert_eq!(
            events[7],
            AgentEvent::ToolResult {
                tool_use_id: "tu_1".into(),
                output: Some(json!("Switched to a new branch 'fix/issue-1'")),
                is_error: Some(false),
                parent_tool_use_id: None
            }
        );
        assert!(matches!(
            &events[9],
            AgentEvent::Usage {
                input_tokens: 1500,
                output_tokens: 30,
                cache_read_tokens: Some(1200),
                ..
            }
        ));
        assert_eq!(
            events[10],
            AgentEvent::Result {
                status: AgentResultStatus::Completed,
                agent_session_id: Some("sess-abc".into()),
                final_text: Some("Opened PR https://github.com/org/repo/pull/7".into()),
                duration_ms: Some(42000),
                usage_totals: Some(UsageTotals {
                    input_tokens: 0,
                    output_tokens: 0,
                    cost_estimate_usd: Some(0.0123)
                }),
                is_error: Some(false),
                api_error_status: None,
                reason: None
            }
        );
    }

    /// Byte-sized, line-sized and pseudo-random chunkings all give the same events.
    #[test]
    fn fixture_in_every_chunking() {
        let whole = parse_all(&[FIXTURE]);
        let chars: Vec<char> = FIXTURE.chars().collect();
        let piece = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
        let one_by_one: Vec<String> = (0..chars.len()).map(|i| piece(i, i + 1)).collect();
        let refs: Vec<&str> = one_by_one.iter().map(String::as_str).collect();
        assert_eq!(parse_all(&refs), whole, "character by character");
        let lines: Vec<&str> = FIXTURE.split_inclusive('\n').collect();
        assert_eq!(parse_all(&lines), whole, "line by line");
        // Without its final newline the last line still counts (flushed by `end`).
        assert_eq!(parse_all(&[FIXTURE.trim_end()]), whole, "no final newline");
        // xorshift: deterministic "random" split points.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < chars.len() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let len = 1 + (state % 97) as usize;
                let end = (at + len).min(chars.len());
                chunks.push(piece(at, end));
                at = end;
            }
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            assert_eq!(parse_all(&refs), whole, "random round {round}");
        }
    }

    /// Byte-by-byte at the UTF-8 level, through the same decoder the spawner uses.
    #[test]
    fn fixture_byte_by_byte_through_the_utf8_decoder() {
        let mut text = FIXTURE.replace("Reading ", "Lisons é€😀 ");
        text.push('\n');
        let whole = parse_all(&[&text]);
        let mut decoder = crate::shared::sse::Utf8StreamDecoder::default();
        let mut parser = ClaudeCode.parser();
        let mut events = Vec::new();
        for byte in text.as_bytes() {
            events.extend(parser.feed(&decoder.feed(std::slice::from_ref(byte))));
        }
        events.extend(parser.feed(&decoder.finish()));
        events.extend(parser.end());
        assert_eq!(events, whole);
        assert!(events.contains(&AgentEvent::TextDelta {
            text: "Lisons é€😀 ".into(),
            parent_tool_use_id: None
        }));
    }

    fn map(line: Value) -> Vec<AgentEvent> {
        let mut parser: AgentEventParser = ClaudeCode.parser();
        parser.feed(&format!("{line}\n"))
    }

    /// The rest of the table: other system subtypes and unknown types are raw, other stream events
    /// and empty deltas are nothing, subagent events carry parentToolUseId, result statuses.
    #[test]
    fn mapping_table() {
        let retry = json!({"type": "system", "subtype": "api_retry", "attempt": 1});
        assert_eq!(
            map(retry.clone()),
            [AgentEvent::Raw {
                agent: AgentSlug::ClaudeCode,
                payload: retry
            }]
        );
        assert!(matches!(
            &map(json!({"type": "control_request"}))[..],
            [AgentEvent::Raw { .. }]
        ));
        assert!(
            map(json!({"type": "stream_event", "event": {"type": "message_start"}})).is_empty()
        );
        assert!(map(
            json!({"type": "stream_event", "event": {"delta": {"type": "text_delta", "text": ""}}})
        )
        .is_empty());
        assert!(map(json!({"type": "stream_event", "event": {"delta": {"type": "input_json_delta", "partial_json": "{"}}})).is_empty());
        let sub = map(json!({"type": "stream_event", "parent_tool_use_id": "tu_9",
            "event": {"delta": {"type": "text_delta", "text": "x"}}}));
        assert_eq!(
            sub,
            [AgentEvent::TextDelta {
                text: "x".into(),
                parent_tool_use_id: Some("tu_9".into())
            }]
        );
        let tool = map(json!({"type": "assistant", "parent_tool_use_id": "tu_9",
            "message": {"content": [{"type": "tool_use"}, {"type": "text", "text": ""}, {"type": "thinking"}]}}));
        assert_eq!(
            tool,
            [AgentEvent::ToolUse {
                tool_use_id: String::new(),
                tool_name: String::new(),
                input: Value::Null,
                parent_tool_use_id: Some("tu_9".into())
            }]
        );
        let usage = map(json!({"type": "assistant", "message": {"usage": {"input_tokens": "x"}}}));
        assert!(
            matches!(
                &usage[..],
                [AgentEvent::Usage {
                    input_tokens: 0,
                    output_tokens: 0,
                    cache_read_tokens: Some(0),
                    ..
                }]
            ),
            "no id: always counted; junk counts are 0"
        );
        let results = map(json!({"type": "user", "message": {"content": [
            {"type": "text", "text": "hi"},
            {"type": "tool_result", "tool_use_id": "a", "content": [{"type": "text", "text": "out"}], "is_error": true},
            {"type": "tool_result", "is_error": "yes"}]}}));
        assert_eq!(
            results,
            [
                AgentEvent::ToolResult {
                    tool_use_id: "a".into(),
                    output: Some(json!([{"type": "text", "text": "out"}])),
                    is_error: Some(true),
                    parent_tool_use_id: None
                },
                AgentEvent::ToolResult {
                    tool_use_id: String::new(),
                    output: None,
                    is_error: None,
                    parent_tool_use_id: None
                }
            ]
        );
        let status = |line: Value| match &map(line)[..] {
            [AgentEvent::Result { status, .. }] => *status,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(json!({"type": "result", "subtype": "success"})),
            AgentResultStatus::Completed
        );
        assert_eq!(
            status(json!({"type": "result"})),
            AgentResultStatus::Completed
        );
        assert_eq!(
            status(json!({"type": "result", "subtype": "error_max_turns"})),
            AgentResultStatus::MaxTurns
        );
        assert_eq!(
            status(json!({"type": "result", "subtype": "error_during_execution"})),
            AgentResultStatus::Error
        );
        // HTTP 529 after the CLI's retries, as 2.1.173 reports it: `success` yet `is_error`.
        let overloaded = map(
            json!({"type": "result", "subtype": "success", "is_error": true,
            "api_error_status": 529, "result": "API Error: Repeated 529 Overloaded errors"}),
        );
        assert!(
            matches!(&overloaded[..], [AgentEvent::Result { status: AgentResultStatus::Error,
                api_error_status: Some(s), reason: Some(r), .. }] if s == &json!(529) && r.contains("529")),
            "{overloaded:?}"
        );
        let errored = map(
            json!({"type": "result", "subtype": "error_during_execution", "is_error": true,
            "api_error_status": 529, "total_cost_usd": "n/a"}),
        );
        assert!(
            matches!(&errored[..], [AgentEvent::Result { is_error: Some(true), api_error_status: Some(s), usage_totals: None, .. }] if s == &json!(529))
        );
    }

    /// The init line as Claude Code 2.1.173 prints it (model at the top level), trimmed.
    #[test]
    fn real_cli_init_line() {
        let events = map(
            json!({"type": "system", "subtype": "init", "cwd": "/workspace",
            "session_id": "9cf85957-5237-45a4-9f16-5b456ef9a57e", "tools": ["Bash"],
            "model": "claude-opus-4-8[1m]", "permissionMode": "bypassPermissions",
            "apiKeySource": "none", "claude_code_version": "2.1.173"}),
        );
        assert_eq!(
            events,
            [AgentEvent::RunStarted {
                agent: AgentSlug::ClaudeCode,
                agent_session_id: Some("9cf85957-5237-45a4-9f16-5b456ef9a57e".into()),
                model: Some("claude-opus-4-8[1m]".into())
            }]
        );
    }

    /// Usage de-dup remembers a bounded number of ids, forgetting the oldest.
    #[test]
    fn message_id_memory_is_bounded() {
        let mut mapper = ClaudeMapper::default();
        for i in 0..MAX_REMEMBERED_MESSAGE_IDS + 10 {
            assert!(mapper.first_sighting(&format!("m{i}")));
        }
        assert_eq!(mapper.seen_ids.len(), MAX_REMEMBERED_MESSAGE_IDS);
        assert!(!mapper.first_sighting(&format!("m{}", MAX_REMEMBERED_MESSAGE_IDS + 9)));
        assert!(mapper.first_sighting("m0"), "the oldest was forgotten");
    }
}

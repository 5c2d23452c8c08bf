//! OpenAI Codex CLI: `codex exec --json`, the prompt on stdin, the gateway as its only model
//! endpoint through one custom provider, `tale`, speaking the streaming Responses API at
//! `<gateway>/openai/v1/responses`; the key is read from `TALE_GATEWAY_TOKEN` (`env_key`), so no
//! provider key and no login exist in the session. `CODEX_HOME` lies under the exec's HOME, on the
//! workspace volume: the session files `codex exec resume <thread>` needs survive a stopped session.
//!
//! Flags measured with codex-cli 0.169.0: without `--dangerously-bypass-approvals-and-sandbox` its
//! shell tool cannot run inside a container (the session is the sandbox); without
//! `analytics.enabled=false` it looks up an analytics host; without `--disable plugins` it starts
//! git to fetch a plugins repository. With them it contacts nothing but the provider.
use super::events::{AgentEvent, AgentResultStatus, AgentSlug, UsageTotals};
use super::jsonl::EventMapper;
use super::{
    count, string, AgentAdapter, AgentRunSpec, SessionContext, SessionExecSpec, StdinMode,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

/// The CLI, found on the session's PATH.
pub const CODEX_BINARY: &str = "codex";
/// The provider id in the generated config.
pub const PROVIDER_ID: &str = "tale";
/// The environment variable that holds the gateway key (the provider's `env_key`).
pub const TOKEN_ENV: &str = "TALE_GATEWAY_TOKEN";

/// Codex refuses a `CODEX_HOME` that does not exist, and a fresh workspace has none: the exec
/// creates it, then becomes the CLI (`$0` is `codex`, the CLI's arguments follow).
pub const LAUNCH_SCRIPT: &str = "mkdir -p \"$CODEX_HOME\" && exec codex \"$@\"";

/// The Codex adapter.
pub struct Codex;

/// A `-c key=value` override, the value as a TOML string.
fn config(key: &str, value: &str) -> [String; 2] {
    // A JSON string of printable text is a valid TOML basic string.
    let quoted = serde_json::to_string(value).expect("a string serializes");
    ["-c".to_owned(), format!("{key}={quoted}")]
}

impl AgentAdapter for Codex {
    fn slug(&self) -> AgentSlug {
        AgentSlug::Codex
    }

    fn build_exec(&self, spec: &AgentRunSpec, session: &SessionContext) -> SessionExecSpec {
        let mut argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            LAUNCH_SCRIPT.into(),
            CODEX_BINARY.into(),
            "exec".into(),
        ];
        if spec.agent_session_id.is_some() {
            argv.push("resume".into());
        }
        argv.extend(
            [
                "--json",
                "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox",
                "--disable",
                "plugins",
                "-c",
                "analytics.enabled=false",
            ]
            .map(str::to_owned),
        );
        argv.extend(config("model_provider", PROVIDER_ID));
        let provider = format!("model_providers.{PROVIDER_ID}");
        argv.extend(config(&format!("{provider}.name"), "Tale Gateway"));
        argv.extend(config(
            &format!("{provider}.base_url"),
            &format!("{}/openai/v1", spec.gateway_root()),
        ));
        argv.extend(config(&format!("{provider}.env_key"), TOKEN_ENV));
        argv.extend(config(&format!("{provider}.wire_api"), "responses"));
        if let Some(text) = &spec.system_prompt_append {
            argv.extend(config("developer_instructions", text));
        }
        if let Some(model) = &spec.model {
            argv.extend(["-m".into(), model.clone()]);
        }
        if let Some(thread) = &spec.agent_session_id {
            argv.push(thread.clone());
        }
        // `-`: the prompt is read from stdin, never argv.
        argv.push("-".into());
        SessionExecSpec {
            argv,
            env: BTreeMap::from([
                (
                    "CODEX_HOME".to_owned(),
                    format!("{}/.codex", session.exec_home.trim_end_matches('/')),
                ),
                (TOKEN_ENV.to_owned(), spec.gateway.token.clone()),
            ]),
            cwd: spec.workdir.clone(),
            stdin: Some(spec.prompt.clone()),
            stdin_mode: StdinMode::Close,
        }
    }

    fn mapper(&self) -> Box<dyn EventMapper> {
        Box::new(CodexMapper::default())
    }

    fn steer_line(&self, _text: &str) -> Option<String> {
        None
    }
}

/// Maps `codex exec --json` events: `thread.started` → `run-started`; tool items (commands, file
/// changes, MCP calls, web searches) → `tool-use` when started and `tool-result` when completed,
/// both under Codex's item id (the model's call id is not in the JSON stream); agent messages →
/// `text`; `turn.completed` → `usage` and `result`; `turn.failed` → `result` with the reason.
#[derive(Default)]
pub struct CodexMapper {
    thread_id: Option<String>,
    announced: HashSet<String>,
    last_message: Option<String>,
}

/// `(toolName, input)` of a tool item, or `None` for items that are not tool calls.
fn tool(item: &Value) -> Option<(String, Value)> {
    let kind = item.get("type").and_then(Value::as_str)?;
    match kind {
        "command_execution" => Some((kind.to_owned(), json!({"command": item["command"]}))),
        "file_change" => Some((kind.to_owned(), json!({"changes": item["changes"]}))),
        "web_search" => Some((kind.to_owned(), json!({"query": item["query"]}))),
        "mcp_tool_call" => Some((
            format!(
                "{}/{}",
                item["server"].as_str().unwrap_or(""),
                item["tool"].as_str().unwrap_or("")
            ),
            item.get("arguments").cloned().unwrap_or(Value::Null),
        )),
        _ => None,
    }
}

/// `(output, isError)` of a completed tool item.
fn outcome(item: &Value) -> (Option<Value>, bool) {
    let failed = item["status"] == "failed"
        || item
            .get("exit_code")
            .and_then(Value::as_i64)
            .is_some_and(|c| c != 0)
        || item.get("error").is_some_and(|e| !e.is_null());
    let output = match item["type"].as_str() {
        Some("command_execution") => item.get("aggregated_output").cloned(),
        Some("mcp_tool_call") => item
            .get("result")
            .filter(|r| !r.is_null())
            .or_else(|| item.get("error"))
            .cloned(),
        _ => item.get("status").cloned(),
    };
    (output, failed)
}

impl CodexMapper {
    fn item(&mut self, event_type: &str, item: &Value) -> Vec<AgentEvent> {
        let id = string(item.get("id")).unwrap_or_default();
        let mut out = Vec::new();
        if let Some((tool_name, input)) = tool(item) {
            if self.announced.insert(id.clone()) {
                out.push(AgentEvent::ToolUse {
                    tool_use_id: id.clone(),
                    tool_name,
                    input,
                    parent_tool_use_id: None,
                });
            }
            if event_type == "item.completed" {
                let (output, failed) = outcome(item);
                out.push(AgentEvent::ToolResult {
                    tool_use_id: id,
                    output,
                    is_error: Some(failed),
                    parent_tool_use_id: None,
                });
            }
            return out;
        }
        match (event_type, item.get("type").and_then(Value::as_str)) {
            ("item.completed", Some("agent_message")) => {
                if let Some(text) = string(item.get("text")).filter(|t| !t.is_empty()) {
                    self.last_message = Some(text.clone());
                    out.push(AgentEvent::Text {
                        text,
                        parent_tool_use_id: None,
                    });
                }
            }
            ("item.completed", Some("error")) => out.push(AgentEvent::Error {
                message: string(item.get("message")).unwrap_or_else(|| "codex error".into()),
                raw: Some(item.clone()),
            }),
            _ => out.push(AgentEvent::Raw {
                agent: AgentSlug::Codex,
                payload: json!({"type": event_type, "item": item}),
            }),
        }
        out
    }

    fn result(
        &mut self,
        status: AgentResultStatus,
        usage: Option<UsageTotals>,
        reason: Option<String>,
    ) -> AgentEvent {
        AgentEvent::Result {
            status,
            agent_session_id: self.thread_id.clone(),
            final_text: self.last_message.take(),
            duration_ms: None,
            usage_totals: usage,
            is_error: Some(status != AgentResultStatus::Completed),
            api_error_status: None,
            reason,
        }
    }
}

impl EventMapper for CodexMapper {
    fn map(&mut self, event: Map<String, Value>) -> Vec<AgentEvent> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "thread.started" => {
                self.thread_id = string(event.get("thread_id"));
                vec![AgentEvent::RunStarted {
                    agent: AgentSlug::Codex,
                    agent_session_id: self.thread_id.clone(),
                    model: None,
                }]
            }
            "turn.started" => Vec::new(),
            "item.started" | "item.updated" | "item.completed" => {
                let item = event.get("item").cloned().unwrap_or(Value::Null);
                if kind == "item.updated" && tool(&item).is_none() {
                    return Vec::new();
                }
                self.item(kind, &item)
            }
            "turn.completed" => {
                let usage = event.get("usage").cloned().unwrap_or(Value::Null);
                let input = count(usage.get("input_tokens"));
                let output = count(usage.get("output_tokens"));
                vec![
                    AgentEvent::Usage {
                        model: None,
                        input_tokens: input,
                        output_tokens: output,
                        cache_read_tokens: Some(count(usage.get("cached_input_tokens"))),
                        cache_write_tokens: Some(count(usage.get("cache_write_input_tokens"))),
                        cost_estimate_usd: None,
                        parent_tool_use_id: None,
                    },
                    self.result(
                        AgentResultStatus::Completed,
                        Some(UsageTotals {
                            input_tokens: input,
                            output_tokens: output,
                            cost_estimate_usd: None,
                        }),
                        None,
                    ),
                ]
            }
            "turn.failed" => {
                let message = string(event.get("error").and_then(|e| e.get("message")))
                    .unwrap_or_else(|| "codex turn failed".into());
                vec![self.result(AgentResultStatus::Error, None, Some(message))]
            }
            "error" => vec![AgentEvent::Error {
                message: string(event.get("message")).unwrap_or_else(|| "codex error".into()),
                raw: Some(Value::Object(event)),
            }],
            _ => vec![AgentEvent::Raw {
                agent: AgentSlug::Codex,
                payload: Value::Object(event),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::spawner::agents::GatewayTarget;

    fn spec() -> AgentRunSpec {
        AgentRunSpec::new(
            "write the proof; secret plan",
            GatewayTarget {
                base_url: "http://gw:8080/".into(),
                token: "vk-7".into(),
            },
        )
    }

    fn session() -> SessionContext {
        SessionContext {
            exec_home: "/workspace/.home".into(),
        }
    }

    const FIXED: [&str; 17] = [
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "--disable",
        "plugins",
        "-c",
        "analytics.enabled=false",
        "-c",
        "model_provider=\"tale\"",
        "-c",
        "model_providers.tale.name=\"Tale Gateway\"",
        "-c",
        "model_providers.tale.base_url=\"http://gw:8080/openai/v1\"",
        "-c",
        "model_providers.tale.env_key=\"TALE_GATEWAY_TOKEN\"",
        "-c",
        "model_providers.tale.wire_api=\"responses\"",
    ];

    /// A new thread: exact argv, the prompt only on stdin (closed), CODEX_HOME under HOME.
    #[test]
    fn build_exec_new_thread() {
        let exec = Codex.build_exec(&spec(), &session());
        let mut expected = vec!["sh", "-c", LAUNCH_SCRIPT, "codex", "exec"];
        expected.extend(FIXED);
        expected.push("-");
        assert_eq!(exec.argv, expected);
        assert_eq!(
            exec.env,
            BTreeMap::from([
                ("CODEX_HOME".into(), "/workspace/.home/.codex".into()),
                ("TALE_GATEWAY_TOKEN".into(), "vk-7".into())
            ])
        );
        assert_eq!(exec.stdin.as_deref(), Some("write the proof; secret plan"));
        assert_eq!(exec.stdin_mode, StdinMode::Close);
        assert!(exec
            .argv
            .iter()
            .all(|a| !a.contains("secret") && !a.contains("vk-7")));
        assert!(Codex.steer_line("x").is_none());
    }

    /// Resume: `exec resume … <thread> -`, with the model and the appended instructions.
    #[test]
    fn build_exec_resume() {
        let mut spec = spec();
        spec.agent_session_id = Some("0199-thread".into());
        spec.model = Some("gw-gpt".into());
        spec.system_prompt_append = Some("be \"brief\"".into());
        spec.workdir = Some("repo".into());
        let exec = Codex.build_exec(&spec, &session());
        let mut expected = vec!["sh", "-c", LAUNCH_SCRIPT, "codex", "exec", "resume"];
        expected.extend(FIXED);
        expected.extend([
            "-c",
            "developer_instructions=\"be \\\"brief\\\"\"",
            "-m",
            "gw-gpt",
            "0199-thread",
            "-",
        ]);
        assert_eq!(exec.argv, expected);
        assert_eq!(exec.cwd.as_deref(), Some("repo"));
    }

    fn parse(lines: &[Value]) -> Vec<Value> {
        let mut parser = Codex.parser();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut events = parser.feed(&text);
        events.extend(parser.end());
        events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    /// The lines codex-cli 0.169.0 printed here for one tool call and a final message.
    #[test]
    fn real_cli_run() {
        let wire = parse(&[
            json!({"type":"thread.started","thread_id":"01a23386-a38f-7ed3-9cad-7e4506b8209d"}),
            json!({"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `gw-model` not found."}}),
            json!({"type":"turn.started"}),
            json!({"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"","exit_code":null,"status":"in_progress"}}),
            json!({"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"hi\n","exit_code":0,"status":"completed"}}),
            json!({"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"done"}}),
            json!({"type":"turn.completed","usage":{"input_tokens":84,"cached_input_tokens":3,"cache_write_input_tokens":0,"output_tokens":14,"reasoning_output_tokens":0}}),
        ]);
        assert_eq!(
            wire,
            [
                json!({"type": "run-started", "agent": "codex", "agentSessionId": "01a23386-a38f-7ed3-9cad-7e4506b8209d"}),
                json!({"type": "error", "message": "Model metadata for `gw-model` not found.",
                    "raw": {"id":"item_0","type":"error","message":"Model metadata for `gw-model` not found."}}),
                json!({"type": "tool-use", "toolUseId": "item_1", "toolName": "command_execution",
                    "input": {"command": "/bin/bash -lc 'echo hi'"}}),
                json!({"type": "tool-result", "toolUseId": "item_1", "output": "hi\n", "isError": false}),
                json!({"type": "text", "text": "done"}),
                json!({"type": "usage", "inputTokens": 84, "outputTokens": 14, "cacheReadTokens": 3, "cacheWriteTokens": 0}),
                json!({"type": "result", "status": "completed", "agentSessionId": "01a23386-a38f-7ed3-9cad-7e4506b8209d",
                    "finalText": "done", "usageTotals": {"inputTokens": 84, "outputTokens": 14}, "isError": false}),
            ]
        );
    }

    /// A failed command, an MCP call, a failed turn with its reason, errors and unknown lines.
    #[test]
    fn mapping_table() {
        let wire = parse(&[
            json!({"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}),
            json!({"type":"item.started","item":{"id":"item_4","type":"mcp_tool_call","server":"pw","tool":"navigate","arguments":{"url":"x"},"status":"in_progress"}}),
            json!({"type":"item.updated","item":{"id":"item_4","type":"mcp_tool_call","server":"pw","tool":"navigate","arguments":{"url":"x"},"status":"in_progress"}}),
            json!({"type":"item.completed","item":{"id":"item_4","type":"mcp_tool_call","server":"pw","tool":"navigate","arguments":{"url":"x"},"result":null,"error":{"message":"no browser"},"status":"failed"}}),
            json!({"type":"item.completed","item":{"id":"item_5","type":"reasoning","text":"hmm"}}),
            json!({"type":"error","message":"stream disconnected before completion"}),
            json!({"type":"turn.failed","error":{"message":"stream disconnected before completion"}}),
            json!({"type":"something.new"}),
        ]);
        let kinds: Vec<&str> = wire.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "tool-use",
                "tool-result",
                "tool-use",
                "tool-result",
                "raw",
                "error",
                "result",
                "raw"
            ]
        );
        assert_eq!(
            wire[1],
            json!({"type": "tool-result", "toolUseId": "item_3", "output": "", "isError": true})
        );
        assert_eq!(wire[2]["toolName"], "pw/navigate");
        assert_eq!(wire[3]["output"], json!({"message": "no browser"}));
        assert_eq!(wire[3]["isError"], true);
        assert_eq!(
            wire[6],
            json!({"type": "result", "status": "error", "isError": true,
                "reason": "stream disconnected before completion"})
        );
    }
}

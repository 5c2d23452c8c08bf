//! OpenCode (spec agents §3, §7): `opencode run --format json`, configured entirely through
//! `OPENCODE_CONFIG_CONTENT` with one provider, `tale`, that is the gateway's OpenAI-compatible
//! endpoint; the gateway key is read from `TALE_GATEWAY_TOKEN` by the config's `{env:…}` reference.
//!
//! The prompt is the trailing argv element: `opencode run` has no stdin prompt source (the spec's one
//! exception to "prompts never in argv"). It follows a `--` so a prompt starting with `-` is not
//! read as a flag (checked with opencode 1.18.33: `run … -- --help` sends "--help" to the model).
use super::events::{AgentEvent, AgentResultStatus, AgentSlug, UsageTotals};
use super::jsonl::EventMapper;
use super::{
    count, string, AgentAdapter, AgentRunSpec, SessionContext, SessionExecSpec, StdinMode,
    PLAYWRIGHT_MCP_ARGS, PLAYWRIGHT_MCP_COMMAND,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

/// The CLI, found on the session's PATH.
pub const OPENCODE_BINARY: &str = "opencode";
/// The provider id in the generated config (models are `tale/<id>`).
pub const PROVIDER_ID: &str = "tale";
/// Model id when the run names none.
pub const DEFAULT_MODEL_ID: &str = "default";

/// Keeps OpenCode from fetching its model catalogue: measured with 1.18.33 in a Docker session (a
/// packet record of its network namespace), a run without it resolves `models.opencode.ai`. The
/// provider's models are in the generated config, so the catalogue is not needed.
pub const OFFLINE_ENV: [(&str, &str); 1] = [("OPENCODE_DISABLE_MODELS_FETCH", "1")];

/// The OpenCode adapter.
pub struct OpenCode;

/// The `OPENCODE_CONFIG_CONTENT` document.
pub fn config(spec: &AgentRunSpec) -> Value {
    let model = spec.model.as_deref().unwrap_or(DEFAULT_MODEL_ID);
    let mut config = json!({
        "$schema": "https://opencode.ai/config.json",
        "provider": {PROVIDER_ID: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Tale Gateway",
            "options": {
                "baseURL": format!("{}/openai/v1", spec.gateway_root()),
                "apiKey": "{env:TALE_GATEWAY_TOKEN}",
            },
            "models": {model: {"name": model}},
        }},
        "model": format!("{PROVIDER_ID}/{model}"),
        "permission": "allow",
        "share": "disabled",
        "autoupdate": false,
    });
    if spec.browser_mcp {
        let mut command = vec![PLAYWRIGHT_MCP_COMMAND];
        command.extend(PLAYWRIGHT_MCP_ARGS);
        config["mcp"] =
            json!({"playwright": {"type": "local", "command": command, "enabled": true}});
    }
    config
}

impl AgentAdapter for OpenCode {
    fn slug(&self) -> AgentSlug {
        AgentSlug::OpenCode
    }

    fn build_exec(&self, spec: &AgentRunSpec, _session: &SessionContext) -> SessionExecSpec {
        let model = spec.model.as_deref().unwrap_or(DEFAULT_MODEL_ID);
        // runnerd resolves a relative workdir from the workspace root into the cwd; `--dir` is read
        // from that cwd, so only an absolute workdir is repeated there.
        let dir = match &spec.workdir {
            Some(dir) if dir.starts_with('/') => dir.clone(),
            _ => ".".to_owned(),
        };
        let mut argv: Vec<String> = vec![
            OPENCODE_BINARY.into(),
            "run".into(),
            "--format".into(),
            "json".into(),
            "--dir".into(),
            dir,
        ];
        if let Some(session) = &spec.agent_session_id {
            argv.extend(["-s".into(), session.clone()]);
        }
        argv.extend([
            "-m".into(),
            format!("{PROVIDER_ID}/{model}"),
            "--".into(),
            spec.prompt.clone(),
        ]);
        SessionExecSpec {
            argv,
            env: [
                (
                    "OPENCODE_CONFIG_CONTENT".to_owned(),
                    config(spec).to_string(),
                ),
                ("TALE_GATEWAY_TOKEN".to_owned(), spec.gateway.token.clone()),
            ]
            .into_iter()
            .chain(OFFLINE_ENV.map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<BTreeMap<_, _>>(),
            cwd: spec.workdir.clone(),
            stdin: None,
            stdin_mode: StdinMode::Close,
        }
    }

    fn mapper(&self) -> Box<dyn EventMapper> {
        Box::new(OpenCodeMapper::default())
    }

    fn steer_line(&self, _text: &str) -> Option<String> {
        None
    }

    fn prompt_in_argv(&self) -> bool {
        true
    }
}

/// Maps `--format json` events (spec §7, extended): one `run-started` as soon as a line names the
/// session, text, each tool call as `tool-use` then `tool-result` under the model's call id,
/// per-step usage, and a `result` (with the last step's text) when a step finishes with `stop`.
#[derive(Default)]
pub struct OpenCodeMapper {
    started: bool,
    session_id: Option<String>,
    /// Running totals over the steps so far, reported in `result.usageTotals`.
    totals: Option<UsageTotals>,
    /// Call ids whose `tool-use` was sent (a call may be printed running, then finished).
    announced: HashSet<String>,
    /// Text parts of the current step: the final answer when the step ends the run.
    step_text: Vec<String>,
}

impl OpenCodeMapper {
    fn add_to_totals(&mut self, input: u64, output: u64, cost: Option<f64>) {
        let totals = self.totals.get_or_insert(UsageTotals {
            input_tokens: 0,
            output_tokens: 0,
            cost_estimate_usd: None,
        });
        totals.input_tokens += input;
        totals.output_tokens += output;
        if let Some(cost) = cost {
            totals.cost_estimate_usd = Some(totals.cost_estimate_usd.unwrap_or(0.0) + cost);
        }
    }

    fn step_finish(&mut self, part: Option<&Value>) -> Vec<AgentEvent> {
        let part = part.cloned().unwrap_or(Value::Null);
        let tokens = &part["tokens"];
        let input = count(tokens.get("input"));
        let output = count(tokens.get("output")) + count(tokens.get("reasoning"));
        let cost = part.get("cost").and_then(Value::as_f64);
        self.add_to_totals(input, output, cost);
        let mut out = vec![AgentEvent::Usage {
            model: None,
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: Some(count(tokens["cache"].get("read"))),
            cache_write_tokens: Some(count(tokens["cache"].get("write"))),
            cost_estimate_usd: cost,
            parent_tool_use_id: None,
        }];
        if part.get("reason").and_then(Value::as_str) == Some("stop") {
            let text = self.step_text.join("\n");
            out.push(AgentEvent::Result {
                status: AgentResultStatus::Completed,
                agent_session_id: self.session_id.clone(),
                final_text: (!text.is_empty()).then_some(text),
                duration_ms: None,
                usage_totals: self.totals.clone(),
                is_error: None,
                api_error_status: None,
                reason: None,
            });
        }
        out
    }

    /// `tool-use` once per call, then `tool-result` when the call finished. The id is the
    /// model's `callID` (what the model's next request refers to); OpenCode's part id only when
    /// the call id is missing.
    fn tool_call(&mut self, part: Option<&Value>) -> Vec<AgentEvent> {
        let part = part.cloned().unwrap_or(Value::Null);
        let tool_use_id = string(part.get("callID"))
            .or_else(|| string(part.get("id")))
            .unwrap_or_default();
        let state = &part["state"];
        let mut out = Vec::new();
        if self.announced.insert(tool_use_id.clone()) {
            out.push(AgentEvent::ToolUse {
                tool_use_id: tool_use_id.clone(),
                tool_name: string(part.get("tool")).unwrap_or_default(),
                input: state.get("input").cloned().unwrap_or(Value::Null),
                parent_tool_use_id: None,
            });
        }
        if let Some(status @ ("completed" | "error")) = state.get("status").and_then(Value::as_str)
        {
            let failed = status == "error";
            out.push(AgentEvent::ToolResult {
                tool_use_id,
                // A failed call carries its message in `error`, not `output`.
                output: state.get("output").or_else(|| state.get("error")).cloned(),
                is_error: Some(failed),
                parent_tool_use_id: None,
            });
        }
        out
    }
}

impl EventMapper for OpenCodeMapper {
    fn map(&mut self, event: Map<String, Value>) -> Vec<AgentEvent> {
        if let Some(id) = string(event.get("sessionID")) {
            self.session_id = Some(id);
        }
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let mut out = Vec::new();
        let starts = self.session_id.is_some()
            || matches!(kind, "step_start" | "text" | "tool_use" | "step_finish");
        if starts && !self.started {
            self.started = true;
            out.push(AgentEvent::RunStarted {
                agent: AgentSlug::OpenCode,
                agent_session_id: self.session_id.clone(),
                model: None,
            });
        }
        let part = event.get("part");
        match kind {
            "step_start" => self.step_text.clear(),
            "text" => {
                if let Some(text) =
                    string(part.and_then(|p| p.get("text"))).filter(|t| !t.is_empty())
                {
                    self.step_text.push(text.clone());
                    out.push(AgentEvent::Text {
                        text,
                        parent_tool_use_id: None,
                    });
                }
            }
            "tool_use" => out.extend(self.tool_call(part)),
            "step_finish" => out.extend(self.step_finish(part)),
            "error" => {
                let error = event.get("error");
                let message = string(
                    error
                        .and_then(|e| e.get("data"))
                        .and_then(|d| d.get("message")),
                )
                .or_else(|| string(error.and_then(|e| e.get("name"))))
                .unwrap_or_else(|| "opencode error".to_owned());
                out.push(AgentEvent::Error {
                    message,
                    raw: Some(Value::Object(event)),
                });
            }
            _ => out.push(AgentEvent::Raw {
                agent: AgentSlug::OpenCode,
                payload: Value::Object(event),
            }),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::spawner::agents::GatewayTarget;

    fn spec() -> AgentRunSpec {
        AgentRunSpec::new(
            "-fix it",
            GatewayTarget {
                base_url: "http://gw:8080".into(),
                token: "vk-9".into(),
            },
        )
    }

    fn session() -> SessionContext {
        SessionContext {
            exec_home: "/workspace/.home".into(),
        }
    }

    fn parse(lines: &[Value]) -> Vec<AgentEvent> {
        let mut parser = OpenCode.parser();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut events = parser.feed(&text);
        events.extend(parser.end());
        events
    }

    /// argv ends with `--` and the prompt; env holds the config and the key; no stdin.
    #[test]
    fn build_exec_minimal() {
        let exec = OpenCode.build_exec(&spec(), &session());
        assert_eq!(
            exec.argv,
            [
                "opencode",
                "run",
                "--format",
                "json",
                "--dir",
                ".",
                "-m",
                "tale/default",
                "--",
                "-fix it"
            ]
        );
        assert_eq!(exec.env.len(), 3);
        assert_eq!(exec.env["TALE_GATEWAY_TOKEN"], "vk-9");
        assert_eq!(exec.env["OPENCODE_DISABLE_MODELS_FETCH"], "1");
        let config: Value = serde_json::from_str(&exec.env["OPENCODE_CONFIG_CONTENT"]).unwrap();
        assert_eq!(
            config,
            json!({"$schema": "https://opencode.ai/config.json",
                "provider": {"tale": {"npm": "@ai-sdk/openai-compatible", "name": "Tale Gateway",
                    "options": {"baseURL": "http://gw:8080/openai/v1", "apiKey": "{env:TALE_GATEWAY_TOKEN}"},
                    "models": {"default": {"name": "default"}}}},
                "model": "tale/default", "permission": "allow", "share": "disabled", "autoupdate": false})
        );
        assert!(
            !exec.env["OPENCODE_CONFIG_CONTENT"].contains("vk-9"),
            "the key is referenced, not inlined"
        );
        assert_eq!(
            (exec.stdin, exec.stdin_mode, exec.cwd),
            (None, StdinMode::Close, None)
        );
    }

    /// Session, model, absolute workdir and the MCP browser.
    #[test]
    fn build_exec_full() {
        let mut spec = spec();
        spec.model = Some("gw-gpt".into());
        spec.agent_session_id = Some("ses_1".into());
        spec.workdir = Some("/workspace/repo".into());
        spec.browser_mcp = true;
        let exec = OpenCode.build_exec(&spec, &session());
        assert_eq!(
            exec.argv,
            [
                "opencode",
                "run",
                "--format",
                "json",
                "--dir",
                "/workspace/repo",
                "-s",
                "ses_1",
                "-m",
                "tale/gw-gpt",
                "--",
                "-fix it"
            ]
        );
        let config: Value = serde_json::from_str(&exec.env["OPENCODE_CONFIG_CONTENT"]).unwrap();
        assert_eq!(config["model"], "tale/gw-gpt");
        assert_eq!(
            config["provider"]["tale"]["models"],
            json!({"gw-gpt": {"name": "gw-gpt"}})
        );
        assert_eq!(
            config["mcp"],
            json!({"playwright": {"type": "local", "enabled": true, "command": ["mcp-server-playwright",
                "--headless", "--isolated", "--no-sandbox", "--ignore-https-errors", "--executable-path", "/usr/bin/chromium"]}})
        );
        assert_eq!(exec.cwd.as_deref(), Some("/workspace/repo"));
        spec.workdir = Some("repo".into());
        let exec = OpenCode.build_exec(&spec, &session());
        assert_eq!(
            (exec.argv[5].as_str(), exec.cwd.as_deref()),
            (".", Some("repo"))
        );
        assert!(OpenCode.steer_line("x").is_none());
    }

    /// The mapping table, one run: run-started once, text, a call printed running then finished
    /// (one tool-use, one tool-result, under the call id), a failed call, per-step usage
    /// (reasoning counted as output), the result with running totals and the last step's text,
    /// errors, raw.
    #[test]
    fn mapping_table() {
        let events = parse(&[
            json!({"type": "step_start", "sessionID": "ses_a", "part": {"type": "step-start"}}),
            json!({"type": "text", "sessionID": "ses_a", "part": {"text": "Looking."}}),
            json!({"type": "tool_use", "part": {"callID": "c1", "tool": "bash", "state": {"status": "running", "input": {"command": "ls"}}}}),
            json!({"type": "tool_use", "part": {"id": "p1", "callID": "c1", "tool": "bash", "state": {"status": "completed", "input": {"command": "ls"}, "output": "a\n"}}}),
            json!({"type": "tool_use", "part": {"id": "p2", "tool": "read", "state": {"status": "error", "input": {"path": "x"}, "error": "nope"}}}),
            json!({"type": "step_finish", "part": {"cost": 0.01, "reason": "tool-calls", "tokens": {"input": 100, "output": 10, "reasoning": 5, "cache": {"read": 50, "write": 2}}}}),
            json!({"type": "step_start", "sessionID": "ses_b"}),
            json!({"type": "text", "part": {"text": "All"}}),
            json!({"type": "text", "part": {"text": "done."}}),
            json!({"type": "step_finish", "part": {"cost": 0.02, "reason": "stop", "tokens": {"input": 200, "output": 20}}}),
            json!({"type": "error", "error": {"name": "APIError", "data": {"message": "rate limited"}}}),
            json!({"type": "error", "error": {"name": "APIError"}}),
            json!({"type": "error"}),
            json!({"type": "permission", "x": 1}),
        ]);
        let wire: Vec<Value> = events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        let expected_head = [
            json!({"type": "run-started", "agent": "opencode", "agentSessionId": "ses_a"}),
            json!({"type": "text", "text": "Looking."}),
            json!({"type": "tool-use", "toolUseId": "c1", "toolName": "bash", "input": {"command": "ls"}}),
            json!({"type": "tool-result", "toolUseId": "c1", "output": "a\n", "isError": false}),
            json!({"type": "tool-use", "toolUseId": "p2", "toolName": "read", "input": {"path": "x"}}),
            json!({"type": "tool-result", "toolUseId": "p2", "output": "nope", "isError": true}),
            json!({"type": "usage", "inputTokens": 100, "outputTokens": 15, "cacheReadTokens": 50, "cacheWriteTokens": 2, "costEstimateUsd": 0.01}),
            json!({"type": "text", "text": "All"}),
            json!({"type": "text", "text": "done."}),
        ];
        assert_eq!(wire[..9], expected_head[..]);
        assert_eq!(wire[9]["type"], "usage");
        assert_eq!(wire[9]["cacheReadTokens"], 0);
        assert_eq!(wire[10]["type"], "result");
        assert_eq!(wire[10]["status"], "completed");
        assert_eq!(wire[10]["finalText"], "All\ndone.", "the last step's text");
        assert_eq!(
            wire[10]["agentSessionId"], "ses_b",
            "the last sessionID seen"
        );
        assert_eq!(wire[10]["usageTotals"]["inputTokens"], 300);
        assert_eq!(wire[10]["usageTotals"]["outputTokens"], 35);
        assert!((wire[10]["usageTotals"]["costEstimateUsd"].as_f64().unwrap() - 0.03).abs() < 1e-9);
        assert_eq!(wire[11]["message"], "rate limited");
        assert_eq!(wire[11]["raw"]["error"]["name"], "APIError");
        assert_eq!(wire[12]["message"], "APIError");
        assert_eq!(wire[13]["message"], "opencode error");
        assert_eq!(
            wire[14],
            json!({"type": "raw", "agent": "opencode", "payload": {"type": "permission", "x": 1}})
        );
        assert_eq!(wire.len(), 15);
    }

    /// A failed run whose first line is the error still names its session first.
    #[test]
    fn error_line_starts_the_run() {
        let events = parse(&[
            json!({"type": "error", "sessionID": "ses_x", "error": {"name": "APIError", "data": {"message": "boom"}}}),
        ]);
        assert_eq!(
            events[0],
            AgentEvent::RunStarted {
                agent: AgentSlug::OpenCode,
                agent_session_id: Some("ses_x".into()),
                model: None
            }
        );
        assert!(matches!(&events[1], AgentEvent::Error { message, .. } if message == "boom"));
        assert_eq!(events.len(), 2);
    }

    /// A finished call exactly as opencode 1.18.33 printed it here (one line, input and output).
    #[test]
    fn real_cli_tool_line() {
        let events = parse(&[json!({"type": "tool_use", "timestamp": 1796160820269u64,
            "sessionID": "ses_dcc7908cdffeLf74uA4UJ6xliA", "part": {"type": "tool", "tool": "bash",
            "callID": "call_oc_1", "state": {"status": "completed",
                "input": {"command": "echo tale-was-here > proof.txt", "description": "write proof"},
                "output": "(no output)", "metadata": {"output": "(no output)", "exit": 0, "truncated": false},
                "title": "echo tale-was-here > proof.txt", "time": {"start": 1796160819083u64, "end": 1796160819741u64}},
            "id": "prt_233870f59001mK5lhNjHWfxoTb", "sessionID": "ses_dcc7908cdffeLf74uA4UJ6xliA",
            "messageID": "msg_23387025b001a6xwR2OQ3lyik9"}})]);
        let wire: Vec<Value> = events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        assert_eq!(
            wire[1..],
            [
                json!({"type": "tool-use", "toolUseId": "call_oc_1", "toolName": "bash",
                    "input": {"command": "echo tale-was-here > proof.txt", "description": "write proof"}}),
                json!({"type": "tool-result", "toolUseId": "call_oc_1", "output": "(no output)", "isError": false}),
            ]
        );
    }

    /// Lines as opencode 1.18.33 printed them here (a model endpoint that answered badly).
    #[test]
    fn real_cli_lines() {
        let events = parse(&[
            json!({"type": "step_start", "timestamp": 1796114844769u64, "sessionID": "ses_dcf367a7cffevzNxTTqPclaVMm",
                "part": {"id": "prt_230c98c490010lmxldw7QJuCUg", "messageID": "msg_230c9892f001rawW3wI2m7fTB6",
                "sessionID": "ses_dcf367a7cffevzNxTTqPclaVMm", "type": "step-start"}}),
            json!({"type": "error", "timestamp": 1796114844769u64, "sessionID": "ses_dcf367a7cffevzNxTTqPclaVMm",
                "error": {"name": "UnknownError", "data": {"message": "Type validation failed"}}}),
        ]);
        assert_eq!(
            events[0],
            AgentEvent::RunStarted {
                agent: AgentSlug::OpenCode,
                agent_session_id: Some("ses_dcf367a7cffevzNxTTqPclaVMm".into()),
                model: None
            }
        );
        assert!(
            matches!(&events[1], AgentEvent::Error { message, .. } if message == "Type validation failed")
        );
        assert_eq!(events.len(), 2);
    }
}

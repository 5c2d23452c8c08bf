//! A scripted fake of the Anthropic Messages API, served under a path prefix (the gateway's
//! `/anthropic`), for driving the real Claude Code CLI. It logs every request it sees and answers
//! like the real API: `POST /v1/messages` streams SSE (`message_start`, `content_block_start`,
//! `content_block_delta` with `text_delta` / `input_json_delta`, `content_block_stop`,
//! `message_delta` with the stop reason, `message_stop`), or returns one JSON message when the
//! request does not ask for a stream; `POST /v1/messages/count_tokens` counts; `HEAD` (the CLI's
//! connectivity probe) is 200; anything else is a 404 in the API's error shape. A request without
//! the expected bearer token is a 401.
//!
//! The script, chosen from the conversation so extra requests cannot shift it:
//! 1. a request offering the Bash tool, before any tool result → a `tool_use` of Bash running
//!    [`BASH_COMMAND`] (id [`TOOL_USE_ID`]);
//! 2. a request carrying the `tool_result` for [`TOOL_USE_ID`] → the text [`FINAL_TEXT`];
//! 3. a request whose last user text contains [`STEER_MARKER`] → the text [`STEERED_TEXT`];
//! 4. anything else (side requests such as titles) → the text `ok`.
//!
//! Run endings, chosen by a marker in the last user text: [`OVERLOAD_MARKER`] → HTTP 529
//! `overloaded_error`; [`TRUNCATE_MARKER`] → a 200 stream cut off inside a text delta;
//! [`HANG_MARKER`] → a Bash `tool_use` running [`HANG_COMMAND`] (a tool process that outlives the
//! run unless its tree is killed).
//!
//! The same server speaks the two OpenAI wire formats the other CLIs use, under the same prefix
//! rules: `POST …/v1/chat/completions` (OpenCode, streamed `chat.completion.chunk`s) and
//! `POST …/v1/responses` (Codex, streamed Responses events). Their scripts: no tool output yet and a
//! shell tool offered → one call of it running [`BASH_COMMAND`] under [`OPENAI_CALL_ID`]; a tool
//! output present → [`FINAL_TEXT`]; the last user text holding [`STEER_MARKER`] → [`STEERED_TEXT`];
//! anything else → `ok`.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

mod openai;

pub const TOOL_USE_ID: &str = "toolu_tale_01";
pub const BASH_COMMAND: &str = "echo tale-was-here > proof.txt";
pub const FINAL_TEXT: &str = "done";
pub const STEER_MARKER: &str = "STEER:";
pub const STEERED_TEXT: &str = "steered";
pub const OVERLOAD_MARKER: &str = "OVERLOAD:";
pub const TRUNCATE_MARKER: &str = "TRUNCATE:";
pub const HANG_MARKER: &str = "HANG:";
/// A tool command that runs long; its marker argument finds it in `/proc`.
pub const HANG_COMMAND: &str = "sh -c 'sleep 317; echo tale-hang-e2e'";
/// The call id the OpenAI-format scripts give their one tool call.
pub const HANG_TOOL_USE_ID: &str = "toolu_tale_hang";
pub const OPENAI_CALL_ID: &str = "call_tale_01";

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub authorization: Option<String>,
    pub api_key: Option<String>,
    /// Every header, for "no real key anywhere" checks.
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    /// Which scripted reply it got (`tool_use`, `done`, `steered`, `ok`, or a status).
    pub reply: String,
}

/// A running fake; stops with the test's runtime.
pub struct FakeModel {
    /// The address it listens on (loopback, or the gateway of a Docker test network).
    pub host: std::net::IpAddr,
    pub port: u16,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl FakeModel {
    /// Serves on 127.0.0.1 under `prefix` (e.g. `/anthropic`), accepting only `Bearer <token>`.
    pub async fn start(prefix: &str, token: &str) -> FakeModel {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), prefix, token).await
    }

    /// Like [`FakeModel::start`], listening on `host` (where a session can reach it).
    pub async fn start_on(host: std::net::IpAddr, prefix: &str, token: &str) -> FakeModel {
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Script {
            prefix: prefix.trim_end_matches('/').to_owned(),
            bearer: format!("Bearer {token}"),
            seen: seen.clone(),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeModel { host, port, seen }
    }

    /// The gateway root to hand an agent run (the fake serves `<root><prefix>/v1/...`).
    pub fn root(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// One line per request, for failure messages.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} auth={:?} -> {}",
                    r.method, r.path, r.authorization, r.reply
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Script {
    prefix: String,
    bearer: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

type FakeResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> FakeResponse {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("request-id", "req_fake")
        .body(Full::new(body.into()))
        .unwrap()
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> FakeResponse {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    respond(status, "application/json", body.to_string())
}

/// Which reply the conversation so far calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    ToolUse,
    Done,
    Steered,
    Ok,
    Overloaded,
    Truncated,
    Hang,
}

impl Reply {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reply::ToolUse => "tool_use",
            Reply::Done => FINAL_TEXT,
            Reply::Steered => STEERED_TEXT,
            Reply::Ok => "ok",
            Reply::Overloaded => "529",
            Reply::Truncated => "truncated",
            Reply::Hang => "hang",
        }
    }
}

fn blocks(message: &Value) -> Vec<&Value> {
    message["content"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

fn choose(request: &Value) -> Reply {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last_user_text: String = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| {
            let mut text = m["content"].as_str().unwrap_or("").to_owned();
            for block in blocks(m) {
                text.push_str(block["text"].as_str().unwrap_or(""));
            }
            text
        })
        .unwrap_or_default();
    let offers_bash = request["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["name"] == "Bash"));
    let has_result = messages.iter().any(|m| {
        blocks(m)
            .iter()
            .any(|b| b["type"] == "tool_result" && b["tool_use_id"] == TOOL_USE_ID)
    });
    let has_hang_result = messages.iter().any(|m| {
        blocks(m)
            .iter()
            .any(|b| b["type"] == "tool_result" && b["tool_use_id"] == HANG_TOOL_USE_ID)
    });
    if last_user_text.contains(STEER_MARKER) {
        Reply::Steered
    } else if last_user_text.contains(OVERLOAD_MARKER) {
        Reply::Overloaded
    } else if last_user_text.contains(TRUNCATE_MARKER) {
        Reply::Truncated
    } else if last_user_text.contains(HANG_MARKER) && offers_bash && !has_hang_result {
        Reply::Hang
    } else if has_result {
        Reply::Done
    } else if offers_bash {
        Reply::ToolUse
    } else {
        Reply::Ok
    }
}

fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

/// The reply as the stream of events the real API sends.
fn stream(reply: Reply, model: &str, id: &str) -> String {
    let mut events = vec![json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 42, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}})];
    let stop_reason = match reply {
        Reply::ToolUse | Reply::Hang => {
            let (id, command) = if reply == Reply::Hang {
                (HANG_TOOL_USE_ID, HANG_COMMAND)
            } else {
                (TOOL_USE_ID, BASH_COMMAND)
            };
            let input = json!({"command": command, "description": "Run the command"}).to_string();
            let (head, tail) = input.split_at(input.len() / 2);
            events.push(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": id, "name": "Bash", "input": {}}}));
            for part in [head, tail] {
                events.push(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part}}));
            }
            "tool_use"
        }
        text => {
            let text = text.name();
            let (head, tail) = text.split_at(text.len() / 2);
            events.push(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}));
            for part in [head, tail] {
                events.push(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": part}}));
            }
            "end_turn"
        }
    };
    if reply == Reply::Truncated {
        // Cut inside the first text event: no text, no stop, half a JSON object.
        events.truncate(2);
        let mut text = sse(&events);
        text.push_str("event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_d");
        return text;
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 7}}));
    events.push(json!({"type": "message_stop"}));
    sse(&events)
}

/// The same reply as one JSON message (a request without `"stream": true`).
fn message(reply: Reply, model: &str, id: &str) -> Value {
    let (content, stop_reason) = match reply {
        Reply::ToolUse | Reply::Hang => (
            json!([{"type": "tool_use", "id": TOOL_USE_ID, "name": "Bash",
                "input": {"command": BASH_COMMAND, "description": "Write the proof file"}}]),
            "tool_use",
        ),
        text => (json!([{"type": "text", "text": text.name()}]), "end_turn"),
    };
    json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": null, "usage": {"input_tokens": 42, "output_tokens": 7}})
}

impl Script {
    async fn handle(&self, request: Request<Incoming>) -> FakeResponse {
        let method = request.method().clone();
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let authorization = header("authorization");
        let api_key = header("x-api-key");
        let headers = request
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let route = path.split('?').next().unwrap_or("").to_owned();
        let mut seen = SeenRequest {
            method: method.to_string(),
            path: path.clone(),
            authorization: authorization.clone(),
            api_key,
            headers,
            body: body.clone(),
            reply: String::new(),
        };
        let response = if method == Method::HEAD {
            seen.reply = "200".into();
            respond(StatusCode::OK, "text/plain", "")
        } else if authorization.as_deref() != Some(self.bearer.as_str()) {
            seen.reply = "401".into();
            api_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid bearer token",
            )
        } else if method == Method::POST
            && route == format!("{}/v1/messages/count_tokens", self.prefix)
        {
            seen.reply = "count".into();
            let size = bytes.len() / 4;
            respond(
                StatusCode::OK,
                "application/json",
                json!({"input_tokens": size}).to_string(),
            )
        } else if method == Method::POST && route == format!("{}/v1/messages", self.prefix) {
            let body = body.unwrap_or(Value::Null);
            let reply = choose(&body);
            seen.reply = reply.name().into();
            let model = body["model"].as_str().unwrap_or("fake-model").to_owned();
            let id = format!("msg_fake_{}", self.seen.lock().unwrap().len());
            if reply == Reply::Overloaded {
                api_error(
                    StatusCode::from_u16(529).unwrap(),
                    "overloaded_error",
                    "Overloaded",
                )
            } else if reply == Reply::Truncated && body["stream"] != true {
                // The CLI's non-streaming fallback gets a cut body too.
                respond(StatusCode::OK, "application/json", "{\"id\": \"msg_cut")
            } else if body["stream"] == true {
                respond(
                    StatusCode::OK,
                    "text/event-stream",
                    stream(reply, &model, &id),
                )
            } else {
                respond(
                    StatusCode::OK,
                    "application/json",
                    message(reply, &model, &id).to_string(),
                )
            }
        } else if method == Method::POST && route == format!("{}/v1/chat/completions", self.prefix)
        {
            let body = body.unwrap_or(Value::Null);
            let reply = openai::choose_chat(&body);
            seen.reply = reply.name().into();
            respond(
                StatusCode::OK,
                "text/event-stream",
                openai::chat_stream(reply),
            )
        } else if method == Method::POST && route == format!("{}/v1/responses", self.prefix) {
            let body = body.unwrap_or(Value::Null);
            let reply = openai::choose_responses(&body);
            seen.reply = reply.name().into();
            let id = format!("resp_fake_{}", self.seen.lock().unwrap().len());
            respond(
                StatusCode::OK,
                "text/event-stream",
                openai::responses_stream(reply, &body, &id),
            )
        } else {
            seen.reply = "404".into();
            api_error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                &format!("no route {method} {route}"),
            )
        };
        self.seen.lock().unwrap().push(seen);
        response
    }
}

//! The OpenAI wire formats of the fake model: Chat Completions (OpenCode) and Responses (Codex),
//! both streamed, with the scripts described in the parent module.
use super::{Reply, BASH_COMMAND, OPENAI_CALL_ID, STEER_MARKER};
use serde_json::{json, Value};

/// Text of a message's `content`, a string or a list of typed parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn script(last_user_text: &str, has_tool_output: bool, offers_shell: bool) -> Reply {
    if last_user_text.contains(STEER_MARKER) {
        Reply::Steered
    } else if has_tool_output {
        Reply::Done
    } else if offers_shell {
        Reply::ToolUse
    } else {
        Reply::Ok
    }
}

pub(crate) fn choose_chat(request: &Value) -> Reply {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    let has_output = messages.iter().any(|m| m["role"] == "tool");
    let offers = request["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == "bash"));
    script(&last_user, has_output, offers)
}

fn chunk(delta: Value, finish: Option<&str>, usage: Option<Value>) -> String {
    let mut chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
        "model": "fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    format!("data: {chunk}\n\n")
}

pub(crate) fn chat_stream(reply: Reply) -> String {
    let usage = json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49});
    let mut out = String::new();
    if reply == Reply::ToolUse {
        let args =
            json!({"command": BASH_COMMAND, "description": "Write the proof file"}).to_string();
        let (head, tail) = args.split_at(args.len() / 2);
        out.push_str(&chunk(json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
            "id": OPENAI_CALL_ID, "type": "function", "function": {"name": "bash", "arguments": head}}]}), None, None));
        out.push_str(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}),
            None,
            None,
        ));
        out.push_str(&chunk(json!({}), Some("tool_calls"), Some(usage)));
    } else {
        let text = reply.name();
        let (head, tail) = text.split_at(text.len() / 2);
        out.push_str(&chunk(
            json!({"role": "assistant", "content": head}),
            None,
            None,
        ));
        out.push_str(&chunk(json!({"content": tail}), None, None));
        out.push_str(&chunk(json!({}), Some("stop"), Some(usage)));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

pub(crate) fn choose_responses(request: &Value) -> Reply {
    let input = request["input"].as_array().cloned().unwrap_or_default();
    let last_user = input
        .iter()
        .rev()
        .find(|i| i["role"] == "user")
        .map(|i| content_text(&i["content"]))
        .unwrap_or_default();
    let has_output = input.iter().any(|i| i["type"] == "function_call_output");
    let offers = request["tools"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["name"] == "exec_command" || t["name"] == "shell")
    });
    // A resumed thread carries the earlier tool output: the steer marker decides first.
    script(&last_user, has_output, offers)
}

pub(crate) fn responses_stream(reply: Reply, request: &Value, id: &str) -> String {
    let item = if reply == Reply::ToolUse {
        let exec_command = request["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "exec_command"));
        let (name, arguments) = if exec_command {
            ("exec_command", json!({"cmd": BASH_COMMAND}))
        } else {
            ("shell", json!({"command": ["bash", "-lc", BASH_COMMAND]}))
        };
        json!({"type": "function_call", "id": "fc_fake", "call_id": OPENAI_CALL_ID, "name": name,
            "arguments": arguments.to_string()})
    } else {
        json!({"type": "message", "id": "msg_fake", "role": "assistant",
            "content": [{"type": "output_text", "text": reply.name(), "annotations": []}]})
    };
    let text = if reply == Reply::ToolUse {
        ""
    } else {
        reply.name()
    };
    let mut events = vec![json!({"type": "response.created", "response": {"id": id}})];
    if !text.is_empty() {
        events.push(json!({"type": "response.output_text.delta", "delta": text}));
    }
    events.push(json!({"type": "response.output_item.done", "item": item}));
    events.push(json!({"type": "response.completed", "response": {"id": id, "usage": {
        "input_tokens": 42, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 49}}}));
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

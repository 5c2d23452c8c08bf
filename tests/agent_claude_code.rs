//! End-to-end: the real Claude Code CLI in a session — on the local backend and, from the agent
//! image (`scripts/build-agent-image.sh`), on the Docker backend — driven through the spawner's
//! `agent-runs` routes against a scripted fake of the Anthropic Messages API — tool use, the file it
//! wrote, normalized `agent` events, steering over held stdin, reattach with re-parsing, the gateway
//! key as the only credential the model side ever sees, and a resume of Claude Code's own session
//! after the session was stopped by the idle sweep and resumed. Plus the route's bad-input table.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::agent_stack::{AgentStack, Backend};
use support::fake_model::{
    FakeModel, BASH_COMMAND, FINAL_TEXT, STEERED_TEXT, STEER_MARKER, TOOL_USE_ID,
};
use support::spawner::{SpawnerProcess, SseStream};
use tale::shared::sse::SseEvent;

/// The CLI version the runtime image pins (Dockerfile `ARG CLAUDE_CODE_VERSION`, which
/// scripts/setup.sh installs too).
fn pinned_claude_version() -> &'static str {
    include_str!("../Dockerfile")
        .lines()
        .find_map(|line| line.strip_prefix("ARG CLAUDE_CODE_VERSION="))
        .expect("the Dockerfile pins CLAUDE_CODE_VERSION")
        .trim()
}

/// The session's gateway virtual key: the only credential the model side may see.
const GATEWAY_TOKEN: &str = "vk-session-e2e-7f3a";
/// A provider key planted in the session's env store: it must never reach the model side.
const PLANTED_KEY: &str = "sk-ant-api03-planted-must-not-leak";
/// Upper bound for one whole scripted run (the CLI answers in about a second here).
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn claude_version() -> String {
    let output = std::process::Command::new("claude")
        .arg("--version")
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "the Claude Code CLI is required (`claude` not runnable: {err}); install it with \
                 `npm install -g @anthropic-ai/claude-code@{}` (scripts/setup.sh does)",
                pinned_claude_version()
            )
        });
    assert!(
        output.status.success(),
        "claude --version failed: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Reads SSE events until `stop` says so (inclusive), within the deadline.
async fn read_until(
    stream: &mut SseStream,
    seen: &mut Vec<SseEvent>,
    stop: impl Fn(&SseEvent) -> bool,
    what: &str,
    context: &dyn Fn() -> String,
) {
    let found = tokio::time::timeout(RUN_DEADLINE, async {
        while let Some(event) = stream.next().await {
            seen.push(event.clone());
            if stop(&event) {
                return true;
            }
        }
        false
    })
    .await;
    if found != Ok(true) {
        panic!(
            "{what}: {} (stream ended or deadline passed)\nevents: {seen:#?}\n{}",
            if found.is_err() {
                "timed out"
            } else {
                "not found"
            },
            context()
        );
    }
}

fn agent_events(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event == "agent")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect()
}

/// `(id, data)` of the `agent` events, to compare streams exactly.
fn agent_frames(events: &[SseEvent]) -> Vec<(Option<String>, String)> {
    events
        .iter()
        .filter(|e| e.event == "agent")
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect()
}

fn is_agent(event: &SseEvent, kind: &str) -> bool {
    event.event == "agent" && serde_json::from_str::<Value>(&event.data).unwrap()["type"] == kind
}

/// The whole promise with the real CLI: a run that calls Bash and writes a file, normalized events,
/// a steer turn over the held stdin, EOF ending the exec, lossless reattach, credentials, and a
/// resume of its session after a sweep stop. Local backend, with the host's CLI.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_runs_a_tool_and_is_steered() {
    let version = claude_version();
    let pinned = pinned_claude_version();
    assert!(
        version.starts_with(&format!("{pinned} ")),
        "claude --version says {version:?}; the runtime image pins {pinned}"
    );
    claude_scenario(Backend::Local).await;
}

/// The same in a Docker session from the agent image: Claude Code's config dir lives on the
/// workspace volume, so its session survives the container being removed by the sweep.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_in_docker_resumes_after_the_session_was_stopped() {
    claude_scenario(Backend::Docker).await;
}

async fn claude_scenario(backend: Backend) {
    let stack = AgentStack::start(backend).await;
    let fake = FakeModel::start_on(stack.host, "/anthropic", GATEWAY_TOKEN).await;
    let c = &stack.spawner.client;
    let id = stack.session_id("cc1");
    let env = json!({"ANTHROPIC_API_KEY": PLANTED_KEY});
    stack.create_session(&id, &env).await;
    let context = || {
        format!(
            "fake model saw:\n{}\nspawner log:\n{}\nsession log:\n{}",
            fake.summary(),
            stack.spawner.log(),
            stack.session_log(&id)
        )
    };

    // Docker: every packet of the session's network namespace, from here to the sweep stop.
    let capture = stack.capture(&id).await;
    let (status, mut stream) = c
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/agent-runs"),
            Some(json!({
                "agent": "claude-code",
                "execId": "run1",
                "run": {"prompt": "Write the proof file, then say done.", "model": "tale-e2e-model", "maxTurns": 5},
                "gateway": {"baseUrl": fake.root(), "token": GATEWAY_TOKEN},
                "timeoutMs": RUN_DEADLINE.as_millis() as u64,
            })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut live = Vec::new();
    read_until(
        &mut stream,
        &mut live,
        |e| is_agent(e, "result"),
        "first agent result",
        &context,
    )
    .await;

    // Steer: one more user turn over the held stdin; the CLI answers it and waits again.
    let (status, reply) = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{id}/agent-runs/run1/steer"),
            Some(json!({"agent": "claude-code", "text": format!("{STEER_MARKER} one more thing")})),
        )
        .await;
    assert_eq!(
        (status, &reply),
        (StatusCode::OK, &json!({"ok": true})),
        "{}",
        context()
    );
    let first_turn = live.len();
    read_until(
        &mut stream,
        &mut live,
        |e| is_agent(e, "result"),
        "steered agent result",
        &context,
    )
    .await;
    // EOF on stdin ends the CLI; the exec's own result follows.
    let (status, reply) = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{id}/agent-runs/run1/steer"),
            Some(json!({"agent": "claude-code", "eof": true})),
        )
        .await;
    assert_eq!((status, &reply), (StatusCode::OK, &json!({"ok": true})));
    read_until(
        &mut stream,
        &mut live,
        |e| e.event == "result",
        "exec result",
        &context,
    )
    .await;
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the result"
    );

    let exec_result: Value = serde_json::from_str(&live.last().unwrap().data).unwrap();
    assert_eq!(
        (&exec_result["status"], &exec_result["exitCode"]),
        (&json!("completed"), &json!(0)),
        "{exec_result}\n{}",
        context()
    );
    assert_eq!(live[0].event, "phase");
    assert!(
        live.iter().any(|e| e.event == "stdout"),
        "raw stdout is streamed too"
    );

    // The normalized events of the first turn, in order.
    let agent = agent_events(&live[..first_turn]);
    let kinds: Vec<&str> = agent.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let position = |kind: &str| {
        kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no {kind} in {kinds:?}\n{agent:#?}"))
    };
    assert_eq!(kinds[0], "run-started", "{kinds:?}");
    assert_eq!(agent[0]["agent"], "claude-code");
    let agent_session_id = agent[0]["agentSessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let tool_use = &agent[position("tool-use")];
    assert_eq!(
        (
            &tool_use["toolName"],
            &tool_use["toolUseId"],
            &tool_use["input"]["command"]
        ),
        (&json!("Bash"), &json!(TOOL_USE_ID), &json!(BASH_COMMAND))
    );
    let tool_result = &agent[position("tool-result")];
    assert_eq!(tool_result["toolUseId"], TOOL_USE_ID);
    assert_eq!(tool_result["isError"], false, "{tool_result}");
    assert!(position("tool-use") < position("tool-result"));
    assert!(
        agent
            .iter()
            .any(|e| e["type"] == "text" && e["text"] == FINAL_TEXT),
        "{agent:#?}"
    );
    let deltas: String = agent
        .iter()
        .filter(|e| e["type"] == "text-delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, FINAL_TEXT, "partial messages arrive as text-deltas");
    assert!(agent
        .iter()
        .any(|e| e["type"] == "usage" && e["model"] == "tale-e2e-model"));
    let result = agent.last().unwrap();
    assert_eq!(
        (
            &result["type"],
            &result["status"],
            &result["finalText"],
            &result["agentSessionId"]
        ),
        (
            &json!("result"),
            &json!("completed"),
            &json!(FINAL_TEXT),
            &json!(agent_session_id)
        )
    );
    let second = agent_events(&live[first_turn..]);
    assert!(
        second
            .iter()
            .any(|e| e["type"] == "text" && e["text"] == STEERED_TEXT),
        "{second:#?}"
    );
    assert_eq!(second.iter().filter(|e| e["type"] == "result").count(), 1);
    for event in live.iter().filter(|e| e.event == "agent") {
        let id = event.id.as_deref().expect("agent events carry an id");
        assert!(id.contains('.'), "agent ids are <seq>.<n>: {id}");
    }

    // What the Bash tool did is in the workspace, as the session's exec user.
    let response = c
        .send(c.request(
            Method::GET,
            &format!("/v1/sessions/{id}/files/content?path=proof.txt"),
            bytes::Bytes::new(),
            true,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    use http_body_util::BodyExt;
    let proof = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&proof[..], b"tale-was-here\n");
    // Execs drop to the exec user where runnerd runs as root (always in a container).
    if backend == Backend::Docker || nix::unistd::geteuid().is_root() {
        assert_eq!(
            stack.shell(&id, "owner", "stat -c %u proof.txt").await,
            "10001\n",
            "the agent ran as the agent profile's user, not root"
        );
    }

    // The model side saw the gateway key as bearer on every call, and no provider key anywhere.
    let requests = fake.requests();
    let messages: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/anthropic/v1/messages"))
        .collect();
    assert!(
        messages
            .iter()
            .map(|r| r.reply.as_str())
            .collect::<Vec<_>>()
            .starts_with(&["tool_use", FINAL_TEXT]),
        "{}",
        fake.summary()
    );
    assert!(
        messages.iter().any(|r| r.reply == STEERED_TEXT),
        "{}",
        fake.summary()
    );
    let tools: Vec<&str> = messages[0].body.as_ref().unwrap()["tools"]
        .as_array()
        .expect("the first call offers tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"Bash"), "{tools:?}");
    assert!(
        !tools.contains(&"WebSearch") && !tools.contains(&"WebFetch"),
        "--disallowedTools removes the web tools: {tools:?}"
    );
    for r in &messages {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {GATEWAY_TOKEN}").as_str())
        );
        assert!(
            r.api_key.as_deref().unwrap_or("").is_empty(),
            "x-api-key: {:?}",
            r.api_key
        );
        assert_eq!(
            r.body.as_ref().unwrap()["model"],
            "tale-e2e-model",
            "the model is pinned"
        );
    }
    for r in &requests {
        assert!(
            r.path.starts_with("/anthropic"),
            "only the gateway prefix: {}",
            r.path
        );
        for (name, value) in &r.headers {
            assert!(
                !value.contains(PLANTED_KEY),
                "the planted key leaked in {name}"
            );
            assert!(
                !value.contains("sk-ant"),
                "a provider key in {name}: {value}"
            );
        }
    }

    // Reattach from the start re-parses the replay: the same agent events with the same ids.
    let live_agent = agent_frames(&live);
    let (status, replay) = c
        .sse(
            Method::GET,
            &format!("/v1/sessions/{id}/agent-runs/run1/attach?agent=claude-code"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let replay = replay.collect_all().await;
    let replay_agent = agent_frames(&replay);
    assert_eq!(replay_agent, live_agent);
    assert_eq!(replay.last().unwrap().event, "result");
    // Resuming after the tool-use event sends exactly what followed it.
    let tool_use_at = live_agent
        .iter()
        .position(|(_, data)| data.contains("\"type\":\"tool-use\""))
        .unwrap();
    let resume_id = live_agent[tool_use_at].0.clone().unwrap();
    let (_, resumed) = c
        .sse(
            Method::GET,
            &format!("/v1/sessions/{id}/agent-runs/run1/attach?agent=claude-code"),
            None,
            &[("last-event-id", &resume_id)],
        )
        .await;
    let resumed = resumed.collect_all().await;
    let resumed_agent = agent_frames(&resumed);
    assert_eq!(resumed_agent, live_agent[tool_use_at + 1..].to_vec());
    let (_, by_query) = c
        .sse(
            Method::GET,
            &format!(
                "/v1/sessions/{id}/agent-runs/run1/attach?agent=claude-code&sinceSeq={resume_id}"
            ),
            None,
            &[],
        )
        .await;
    let by_query = agent_frames(&by_query.collect_all().await);
    assert_eq!(
        by_query, resumed_agent,
        "sinceSeq=N.n resumes like Last-Event-ID"
    );
    assert!(
        resumed.iter().all(|e| e.event != "phase"),
        "the phase was already delivered"
    );
    let resume_seq: u64 = resume_id.split('.').next().unwrap().parse().unwrap();
    for event in resumed.iter().filter(|e| e.event == "stdout") {
        let seq: u64 = event.id.as_deref().unwrap().parse().unwrap();
        assert!(
            seq > resume_seq,
            "stdout {seq} was delivered before {resume_id}"
        );
    }

    // The run is over: steering now reports the closed stdin.
    let (status, reply) = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{id}/agent-runs/run1/steer"),
            Some(json!({"agent": "claude-code", "text": "too late"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["ok"], false, "{reply}");

    // The sweep stops the session (its compute goes, the workspace stays) and it is resumed; a run
    // with the resume id continues Claude Code's session from its config dir on the workspace.
    stack
        .assert_only_gateway(capture, fake.port, &context)
        .await;
    stack.stop_and_resume(&id, &env).await;
    let capture = stack.capture(&id).await;
    let before = fake.requests().len();
    let (status, mut stream) = c
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/agent-runs"),
            Some(json!({
                "agent": "claude-code",
                "execId": "run2",
                "run": {"prompt": format!("{STEER_MARKER} anything else?"), "model": "tale-e2e-model",
                    "maxTurns": 5, "agentSessionId": agent_session_id},
                "gateway": {"baseUrl": fake.root(), "token": GATEWAY_TOKEN},
                "timeoutMs": RUN_DEADLINE.as_millis() as u64,
            })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut resumed_run = Vec::new();
    read_until(
        &mut stream,
        &mut resumed_run,
        |e| is_agent(e, "result"),
        "resumed agent result",
        &context,
    )
    .await;
    let (status, _) = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{id}/agent-runs/run2/steer"),
            Some(json!({"agent": "claude-code", "eof": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    read_until(
        &mut stream,
        &mut resumed_run,
        |e| e.event == "result",
        "resumed exec result",
        &context,
    )
    .await;
    let agent = agent_events(&resumed_run);
    let result = agent.iter().find(|e| e["type"] == "result").unwrap();
    assert_eq!(
        (
            &result["status"],
            &result["finalText"],
            &result["agentSessionId"]
        ),
        (
            &json!("completed"),
            &json!(STEERED_TEXT),
            &json!(agent_session_id)
        ),
        "{agent:#?}\n{}",
        context()
    );
    let resumed = &fake.requests()[before..];
    assert!(
        resumed.iter().any(|r| r
            .body
            .as_ref()
            .and_then(|b| b["messages"].as_array())
            .is_some_and(
                |messages| messages
                    .iter()
                    .any(|m| m["content"].as_array().is_some_and(|blocks| blocks
                        .iter()
                        .any(|b| b["type"] == "tool_use" && b["id"] == TOOL_USE_ID)))
            )),
        "the resumed session carries the first run's tool call: {}",
        fake.summary()
    );
    stack
        .assert_only_gateway(capture, fake.port, &context)
        .await;

    let (status, _) = c
        .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// The route's bad-input table: 400 `bad_request` with a message naming the field, 404 for an
/// unknown session, and the SSE `error` for an attach to an unknown exec. Needs no agent CLI.
#[tokio::test(flavor = "multi_thread")]
async fn agent_run_bad_input() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    c.create("bad1", "org").await;
    let run = |body: Value| async move {
        c.json(Method::POST, "/v1/sessions/bad1/agent-runs", Some(body))
            .await
    };
    let good = json!({"agent": "claude-code", "execId": "r1", "run": {"prompt": "hi"}, "gateway": {"token": "vk"}});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let cases = [
        (
            with("agent", json!("cursor")),
            "agent must be one of \"claude-code\", \"opencode\", \"codex\"",
        ),
        (
            with("execId", json!("no/slash")),
            "execId must match ^[A-Za-z0-9_-]{1,64}$",
        ),
        (
            with("run", json!({})),
            "run.prompt must be a non-empty string",
        ),
        (
            with("run", json!({"prompt": "hi", "maxTurns": -1})),
            "run.maxTurns must be an integer in 1..=10000",
        ),
        (
            with("gateway", Value::Null),
            "gateway.token is required: the session's gateway virtual key",
        ),
    ];
    for (body, message) in cases {
        let (status, reply) = run(body.clone()).await;
        assert_eq!(
            (status, reply),
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": message})
            ),
            "{body}"
        );
    }
    let (status, reply) = c
        .raw(
            Method::POST,
            "/v1/sessions/bad1/agent-runs",
            Some(bytes::Bytes::from_static(b"{")),
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, &reply["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (status, reply) = c
        .json(
            Method::POST,
            "/v1/sessions/nobody/agent-runs",
            Some(good.clone()),
        )
        .await;
    assert_eq!(
        (status, reply),
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );

    let steer = |body: Value| async move {
        c.json(
            Method::POST,
            "/v1/sessions/bad1/agent-runs/r1/steer",
            Some(body),
        )
        .await
    };
    let (status, reply) = steer(json!({"agent": "opencode", "text": "x"})).await;
    assert_eq!(
        (status, &reply["message"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("opencode reads no stdin and cannot be steered")
        )
    );
    let (status, reply) = steer(json!({"agent": "claude-code", "text": "x".repeat(16_001)})).await;
    assert_eq!(
        (status, &reply["message"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("text may be at most 16000 characters")
        )
    );
    let (status, reply) = steer(json!({"agent": "claude-code", "text": "x"})).await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"ok": false, "reason": "NOT_FOUND"}))
    );

    let (status, reply) = c
        .json(Method::GET, "/v1/sessions/bad1/agent-runs/r1/attach", None)
        .await;
    assert_eq!(
        (status, &reply["message"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("agent must be one of \"claude-code\", \"opencode\", \"codex\"")
        )
    );
    let (status, stream) = c
        .sse(
            Method::GET,
            "/v1/sessions/bad1/agent-runs/zz/attach?agent=claude-code",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = stream.collect_all().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].event.as_str(), events[0].data.as_str()),
        ("error", r#"{"message":"exec zz not found"}"#)
    );
}

/// Pids whose command line holds `marker` (the fake's hanging tool command).
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Polls `check` until it holds or `deadline` passes.
async fn eventually(deadline: Duration, check: impl Fn() -> bool) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// How runs end, with the real CLI: HTTP 529 after retries is an `error` result with the API
/// status; a truncated model stream an `error` with a reason; a cancel a `cancelled` result (and no
/// tool process left); a deadline a `timed-out` result. Each is the last agent event, once.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_run_endings() {
    use support::agent_runs::{assert_ends_with_one_result, drain};
    use support::fake_model::{HANG_MARKER, OVERLOAD_MARKER, TRUNCATE_MARKER};
    claude_version();
    let fake = FakeModel::start("/anthropic", GATEWAY_TOKEN).await;
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    let (status, created) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(
                json!({"sessionId": "cc2", "organizationId": "org", "profile": "agent",
                "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let context = || {
        format!(
            "fake model saw:\n{}\nspawner log:\n{}",
            fake.summary(),
            spawner.log()
        )
    };
    let start = |exec_id: &str, prompt: &str, timeout_ms: u64| {
        let body = json!({"agent": "claude-code", "execId": exec_id,
            "run": {"prompt": prompt, "model": "tale-e2e-model", "maxTurns": 3},
            "gateway": {"baseUrl": fake.root(), "token": GATEWAY_TOKEN}, "timeoutMs": timeout_ms});
        async move {
            c.sse(Method::POST, "/v1/sessions/cc2/agent-runs", Some(body), &[])
                .await
                .1
        }
    };
    let eof = |exec_id: &str| {
        let path = format!("/v1/sessions/cc2/agent-runs/{exec_id}/steer");
        async move {
            c.json(
                Method::POST,
                &path,
                Some(json!({"agent": "claude-code", "eof": true})),
            )
            .await
        }
    };

    // 529 after the CLI's retries, then EOF ends the CLI.
    let mut stream = start("over", &format!("{OVERLOAD_MARKER} hi"), 60_000).await;
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |e| is_agent(e, "result"),
        "529 result",
        &context,
    )
    .await;
    eof("over").await;
    seen.extend(drain(stream, &context).await);
    let result = assert_ends_with_one_result(&seen);
    assert_eq!(
        (
            &result["status"],
            &result["apiErrorStatus"],
            &result["isError"]
        ),
        (&json!("error"), &json!(529), &json!(true)),
        "{result}"
    );
    assert!(
        result["reason"].as_str().unwrap().contains("529"),
        "{result}"
    );

    // A model stream cut inside an event.
    let mut stream = start("trunc", &format!("{TRUNCATE_MARKER} hi"), 60_000).await;
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |e| is_agent(e, "result"),
        "truncated result",
        &context,
    )
    .await;
    eof("trunc").await;
    seen.extend(drain(stream, &context).await);
    let result = assert_ends_with_one_result(&seen);
    assert_eq!(result["status"], "error", "{result}");
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| !r.trim().is_empty()),
        "{result}"
    );

    // Cancel while the tool runs: `cancelled`, and the tool process is gone.
    let mut stream = start("hang", &format!("{HANG_MARKER} run it"), 60_000).await;
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |e| is_agent(e, "tool-use"),
        "hanging tool-use",
        &context,
    )
    .await;
    assert!(
        eventually(RUN_DEADLINE, || !processes_with("tale-hang-e2e").is_empty()).await,
        "the tool never started"
    );
    let (status, _) = c
        .json(Method::POST, "/v1/sessions/cc2/exec/hang/cancel", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    seen.extend(drain(stream, &context).await);
    let result = assert_ends_with_one_result(&seen);
    assert_eq!(
        (&result["status"], &result["isError"]),
        (&json!("cancelled"), &json!(true)),
        "{result}"
    );
    let id = seen[seen.len() - 2].id.clone().unwrap();
    let exec_seq = seen.last().unwrap().id.clone().unwrap();
    assert!(
        id.starts_with(&format!("{exec_seq}.")),
        "{id} at the terminal seq {exec_seq}"
    );
    // Replay gives the synthesized result the same id.
    let (_, replay) = c
        .sse(
            Method::GET,
            "/v1/sessions/cc2/agent-runs/hang/attach?agent=claude-code",
            None,
            &[],
        )
        .await;
    let replay = replay.collect_all().await;
    assert_eq!(replay[replay.len() - 2].id.as_deref(), Some(id.as_str()));
    assert_eq!(replay[replay.len() - 2].data, seen[seen.len() - 2].data);
    // That no tool process survives is `claude_code_cancel_kills_the_tool`.

    // The deadline passes while the tool runs: `timed-out`.
    let stream = start("late", &format!("{HANG_MARKER} run it again"), 5_000).await;
    let seen = drain(stream, &context).await;
    let result = assert_ends_with_one_result(&seen);
    assert_eq!(result["status"], "timed-out", "{result}");
    let (status, _) = c.json(Method::DELETE, "/v1/sessions/cc2", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A cancel ends the agent's tool processes too: `cancelled`, and nothing of the tool left.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_cancel_kills_the_tool() {
    use support::agent_runs::{assert_ends_with_one_result, drain};
    use support::fake_model::HANG_MARKER;
    claude_version();
    let fake = FakeModel::start("/anthropic", GATEWAY_TOKEN).await;
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    c.create("cc3", "org").await;
    let context = || {
        format!(
            "fake model saw:\n{}\nspawner log:\n{}",
            fake.summary(),
            spawner.log()
        )
    };
    let body = json!({"agent": "claude-code", "execId": "hang",
        "run": {"prompt": format!("{HANG_MARKER} run it"), "model": "tale-e2e-model", "maxTurns": 3},
        "gateway": {"baseUrl": fake.root(), "token": GATEWAY_TOKEN}, "timeoutMs": 60_000});
    let (_, mut stream) = c
        .sse(Method::POST, "/v1/sessions/cc3/agent-runs", Some(body), &[])
        .await;
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |e| is_agent(e, "tool-use"),
        "hanging tool-use",
        &context,
    )
    .await;
    assert!(
        eventually(RUN_DEADLINE, || !processes_with("tale-hang-e2e").is_empty()).await,
        "the tool never started"
    );
    let (status, _) = c
        .json(Method::POST, "/v1/sessions/cc3/exec/hang/cancel", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    seen.extend(drain(stream, &context).await);
    assert_eq!(assert_ends_with_one_result(&seen)["status"], "cancelled");
    let gone = eventually(Duration::from_secs(5), || {
        processes_with("tale-hang-e2e").is_empty()
    })
    .await;
    assert!(
        gone,
        "tool processes survived the cancel: {:?}",
        processes_with("tale-hang-e2e")
    );
    c.json(Method::DELETE, "/v1/sessions/cc3", None).await;
}

//! End-to-end: the real OpenCode CLI in a session — on the local backend and, from the agent image
//! (`scripts/build-agent-image.sh`), on the Docker backend — driven through the spawner's
//! `agent-runs` route against a scripted streaming Chat Completions API
//! (`tests/support/fake_model.rs`): one tool call reported as `tool-use` then `tool-result` under
//! the model's call id, `finalText`, the session stopped by the idle sweep and resumed, a resume of
//! OpenCode's session from the workspace, a failed run that still names its session and ends with
//! an error `result` — and nothing contacted but the gateway.
mod support;

use hyper::Method;
use serde_json::json;
use support::agent_runs::{
    agent_events, assert_ends_with_one_result, cli_version, only, pinned, run, ProxyTrap,
    RUN_DEADLINE,
};
use support::agent_stack::{AgentStack, Backend};
use support::fake_model::{
    FakeModel, BASH_COMMAND, FINAL_TEXT, OPENAI_CALL_ID, STEERED_TEXT, STEER_MARKER,
};

const GATEWAY_TOKEN: &str = "vk-session-opencode-e2e";

/// Tool call, final text, resume after a sweep stop, a refused key: the events a platform needs,
/// from the host's CLI on the local backend.
#[tokio::test(flavor = "multi_thread")]
async fn opencode_tool_events_resume_and_failure() {
    let version = pinned(include_str!("../Dockerfile"), "OPENCODE_VERSION");
    assert_eq!(
        cli_version("opencode", &format!("npm install -g opencode-ai@{version}")),
        version
    );
    opencode_scenario(Backend::Local).await;
}

/// The same in a Docker session from the agent image: OpenCode's data dir (under HOME) lives on the
/// workspace volume, so its session survives the container being removed by the sweep.
#[tokio::test(flavor = "multi_thread")]
async fn opencode_in_docker_resumes_after_the_session_was_stopped() {
    opencode_scenario(Backend::Docker).await;
}

async fn opencode_scenario(backend: Backend) {
    let stack = AgentStack::start(backend).await;
    let fake = FakeModel::start_on(stack.host, "/openai", GATEWAY_TOKEN).await;
    let trap = ProxyTrap::start_on(stack.host).await;
    let c = &stack.spawner.client;
    let id = stack.session_id("oc1");
    stack.create_session(&id, &trap.env()).await;
    let context = || {
        format!(
            "fake model saw:\n{}\nspawner log:\n{}\nsession log:\n{}",
            fake.summary(),
            stack.spawner.log(),
            stack.session_log(&id)
        )
    };
    let body = |exec_id: &str, prompt: &str, session: Option<&str>, token: &str| {
        let mut run = json!({"prompt": prompt, "model": "tale-e2e-model"});
        if let Some(session) = session {
            run["agentSessionId"] = json!(session);
        }
        json!({"agent": "opencode", "execId": exec_id, "run": run,
            "gateway": {"baseUrl": fake.root(), "token": token},
            "timeoutMs": RUN_DEADLINE.as_millis() as u64})
    };

    let first = run(
        c,
        &id,
        body(
            "run1",
            "Write the proof file, then say done.",
            None,
            GATEWAY_TOKEN,
        ),
        &context,
    )
    .await;
    let result = assert_ends_with_one_result(&first);
    let agent = agent_events(&first);
    let session = only(&agent, "run-started")["agentSessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let tool_use = only(&agent, "tool-use");
    let tool_result = only(&agent, "tool-result");
    assert_eq!(
        tool_use,
        &json!({"type": "tool-use", "toolUseId": OPENAI_CALL_ID, "toolName": "bash",
            "input": {"command": BASH_COMMAND, "description": "Write the proof file"}})
    );
    assert_eq!(
        (&tool_result["toolUseId"], &tool_result["isError"]),
        (&json!(OPENAI_CALL_ID), &json!(false))
    );
    let kinds: Vec<&str> = agent.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let at = |kind: &str| kinds.iter().position(|k| *k == kind).unwrap();
    assert!(at("run-started") < at("tool-use") && at("tool-use") + 1 == at("tool-result"));
    assert_eq!(
        (
            &result["status"],
            &result["finalText"],
            &result["agentSessionId"]
        ),
        (&json!("completed"), &json!(FINAL_TEXT), &json!(session)),
        "{}",
        context()
    );
    assert_eq!(
        stack.shell(&id, "proof", "cat proof.txt").await,
        "tale-was-here\n"
    );

    // The sweep stops the session (its compute goes, the workspace stays) and it is resumed.
    stack.stop_and_resume(&id, &trap.env()).await;

    // Resume OpenCode's own session, which it reads from its data dir on the workspace: the model
    // sees the first run's tool call again.
    let before = fake.requests().len();
    let second = run(
        c,
        &id,
        body(
            "run2",
            &format!("{STEER_MARKER} anything else?"),
            Some(&session),
            GATEWAY_TOKEN,
        ),
        &context,
    )
    .await;
    let result = assert_ends_with_one_result(&second);
    assert_eq!(
        (
            &result["status"],
            &result["finalText"],
            &result["agentSessionId"]
        ),
        (&json!("completed"), &json!(STEERED_TEXT), &json!(session))
    );
    let resumed = &fake.requests()[before..];
    assert!(
        resumed.iter().any(
            |r| r.body.as_ref().unwrap()["messages"]
                .as_array()
                .is_some_and(|messages| messages.iter().any(|m| m["tool_calls"]
                    .as_array()
                    .is_some_and(|calls| calls.iter().any(|call| call["id"] == OPENAI_CALL_ID))))
        ),
        "the resumed session carries the first run's call: {}",
        fake.summary()
    );

    // A key the gateway refuses: the run still names its session and ends with an error result
    // that says why.
    let failed = run(c, &id, body("run3", "hello", None, "vk-refused"), &context).await;
    let result = assert_ends_with_one_result(&failed);
    let agent = agent_events(&failed);
    assert!(only(&agent, "run-started")["agentSessionId"]
        .as_str()
        .is_some_and(|s| s.starts_with("ses")));
    assert_eq!(result["status"], "error", "{agent:#?}");
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| !r.trim().is_empty()),
        "{result}"
    );

    for r in fake.requests() {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/openai/v1/chat/completions")
        );
    }
    assert_eq!(
        trap.hits(),
        0,
        "opencode tried to reach something other than the gateway"
    );
    let (status, _) = c
        .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, hyper::StatusCode::OK);
}

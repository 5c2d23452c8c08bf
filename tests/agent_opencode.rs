//! End-to-end: the real OpenCode CLI in a local-backend session, driven through the spawner's
//! `agent-runs` route against a scripted streaming Chat Completions API
//! (`tests/support/fake_model.rs`): one tool call reported as `tool-use` then `tool-result` under
//! the model's call id, `finalText`, a resume of OpenCode's session, a failed run that still names
//! its session and ends with an error `result` — and nothing contacted but the gateway.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use support::agent_runs::{
    agent_events, assert_ends_with_one_result, cli_version, only, pinned, run, ProxyTrap,
    RUN_DEADLINE,
};
use support::fake_model::{
    FakeModel, BASH_COMMAND, FINAL_TEXT, OPENAI_CALL_ID, STEERED_TEXT, STEER_MARKER,
};
use support::spawner::SpawnerProcess;

const GATEWAY_TOKEN: &str = "vk-session-opencode-e2e";

/// Tool call, final text, resume, a refused key: the events a platform needs, from the real CLI.
#[tokio::test(flavor = "multi_thread")]
async fn opencode_tool_events_resume_and_failure() {
    let version = pinned(include_str!("../Dockerfile"), "OPENCODE_VERSION");
    assert_eq!(
        cli_version("opencode", &format!("npm install -g opencode-ai@{version}")),
        version
    );
    let fake = FakeModel::start("/openai", GATEWAY_TOKEN).await;
    let trap = ProxyTrap::start().await;
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    let (status, created) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "oc1", "organizationId": "org", "profile": "agent", "env": trap.env()})),
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
        "oc1",
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
    let proof = std::fs::read_to_string(spawner.root.join("sessions/ses-oc1/proof.txt")).unwrap();
    assert_eq!(proof, "tale-was-here\n");

    // Resume OpenCode's own session.
    let second = run(
        c,
        "oc1",
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

    // A key the gateway refuses: the run still names its session and ends with an error result
    // that says why.
    let failed = run(
        c,
        "oc1",
        body("run3", "hello", None, "vk-refused"),
        &context,
    )
    .await;
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
    let (status, _) = c.json(Method::DELETE, "/v1/sessions/oc1", None).await;
    assert_eq!(status, StatusCode::OK);
}

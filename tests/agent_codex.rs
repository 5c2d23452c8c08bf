//! End-to-end: the real Codex CLI in a session — on the local backend and, from the agent image
//! (`scripts/build-agent-image.sh`), on the Docker backend — driven through the spawner's
//! `agent-runs` route against a scripted streaming Responses API (`tests/support/fake_model.rs`):
//! one tool call that writes a file, a final message, the session stopped by the idle sweep and
//! resumed, a resume of Codex's own thread from the workspace — and every request it makes reaching
//! the gateway, with the gateway key as its only credential.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::agent_runs::{
    agent_events, assert_ends_with_one_result, cli_version, only, pinned, run, RUN_DEADLINE,
};
use support::agent_stack::{AgentStack, Backend};
use support::fake_model::{
    FakeModel, BASH_COMMAND, FINAL_TEXT, OPENAI_CALL_ID, STEERED_TEXT, STEER_MARKER,
};

const GATEWAY_TOKEN: &str = "vk-session-codex-e2e";
const PLANTED_KEY: &str = "sk-proj-planted-must-not-leak";

/// A tool call, the final message, a resume of the thread after a sweep stop; only the gateway is
/// contacted. Local backend, with the host's CLI.
#[tokio::test(flavor = "multi_thread")]
async fn codex_runs_a_tool_and_resumes_its_thread() {
    let version = pinned(include_str!("../Dockerfile"), "CODEX_VERSION");
    assert_eq!(
        cli_version("codex", &format!("npm install -g @openai/codex@{version}")),
        format!("codex-cli {version}"),
        "the runtime image pins {version}"
    );
    codex_scenario(Backend::Local).await;
}

/// The same in a Docker session from the agent image: Codex's thread (`CODEX_HOME`) lives on the
/// workspace volume, so it survives the container being removed by the sweep.
#[tokio::test(flavor = "multi_thread")]
async fn codex_in_docker_resumes_after_the_session_was_stopped() {
    codex_scenario(Backend::Docker).await;
}

async fn codex_scenario(backend: Backend) {
    let stack = AgentStack::start(backend).await;
    let fake = FakeModel::start_on(stack.host, "/openai", GATEWAY_TOKEN).await;
    let c = &stack.spawner.client;
    let id = stack.session_id("cx1");
    // No proxy trap here (unlike the OpenCode test): a session's env drops the deny-listed
    // HTTP_PROXY, HTTPS_PROXY and NO_PROXY (any case) but keeps ALL_PROXY, and codex 0.169.0
    // (reqwest) honours ALL_PROXY with nothing exempt, so it sent its Responses request to the
    // trap ("error sending request", five reconnects); reproduced outside a session with ALL_PROXY
    // alone, while the trap's full env (NO_PROXY with loopback) reaches the gateway directly. On
    // Docker the packet record of the session's netns is the stronger proof.
    let env = json!({"OPENAI_API_KEY": PLANTED_KEY});
    stack.create_session(&id, &env).await;
    let context = || {
        format!(
            "fake model saw:\n{}\nspawner log:\n{}\nsession log:\n{}",
            fake.summary(),
            stack.spawner.log(),
            stack.session_log(&id)
        )
    };
    let body = |exec_id: &str, prompt: &str, session: Option<&str>| {
        let mut run = json!({"prompt": prompt, "model": "tale-e2e-model"});
        if let Some(session) = session {
            run["agentSessionId"] = json!(session);
        }
        json!({"agent": "codex", "execId": exec_id, "run": run,
            "gateway": {"baseUrl": fake.root(), "token": GATEWAY_TOKEN},
            "timeoutMs": RUN_DEADLINE.as_millis() as u64})
    };

    // Docker: every packet of the session's network namespace, from here to the sweep stop.
    let capture = stack.capture(&id).await;
    let first = run(
        c,
        &id,
        body("run1", "Write the proof file, then say done.", None),
        &context,
    )
    .await;
    let exec_result: Value = serde_json::from_str(&first.last().unwrap().data).unwrap();
    assert_eq!(
        exec_result["status"],
        "completed",
        "{exec_result}\n{first:#?}\n{}",
        context()
    );
    let result = assert_ends_with_one_result(&first);
    let agent = agent_events(&first);
    let started = only(&agent, "run-started");
    assert_eq!(started["agent"], "codex");
    let thread = started["agentSessionId"]
        .as_str()
        .expect("a thread id")
        .to_owned();
    let tool_use = only(&agent, "tool-use");
    let tool_result = only(&agent, "tool-result");
    assert_eq!(tool_use["toolName"], "command_execution");
    assert!(
        tool_use["input"]["command"]
            .as_str()
            .unwrap()
            .contains(BASH_COMMAND),
        "{tool_use}"
    );
    assert_eq!(
        tool_use["toolUseId"], tool_result["toolUseId"],
        "one id per call"
    );
    assert_eq!(tool_result["isError"], false, "{tool_result}");
    let kinds: Vec<&str> = agent.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let at = |kind: &str| kinds.iter().position(|k| *k == kind).unwrap();
    assert!(at("run-started") < at("tool-use") && at("tool-use") < at("tool-result"));
    assert!(agent
        .iter()
        .any(|e| e["type"] == "text" && e["text"] == FINAL_TEXT));
    assert_eq!(
        (
            &result["status"],
            &result["finalText"],
            &result["agentSessionId"]
        ),
        (&json!("completed"), &json!(FINAL_TEXT), &json!(thread))
    );
    assert!(only(&agent, "usage")["inputTokens"].as_u64().unwrap() > 0);
    assert_eq!(
        stack.shell(&id, "proof", "cat proof.txt").await,
        "tale-was-here\n"
    );

    stack
        .assert_only_gateway(capture, fake.port, &context)
        .await;

    // The sweep stops the session (its compute goes, the workspace stays) and it is resumed.
    stack.stop_and_resume(&id, &env).await;
    let capture = stack.capture(&id).await;

    // Resume: the same thread, whose history (the tool call and its output) Codex reads from
    // CODEX_HOME on the workspace and sends again.
    let before = fake.requests().len();
    let second = run(
        c,
        &id,
        body(
            "run2",
            &format!("{STEER_MARKER} anything else?"),
            Some(&thread),
        ),
        &context,
    )
    .await;
    let result = assert_ends_with_one_result(&second);
    let agent = agent_events(&second);
    assert_eq!(only(&agent, "run-started")["agentSessionId"], json!(thread));
    assert_eq!(
        (
            &result["status"],
            &result["finalText"],
            &result["agentSessionId"]
        ),
        (&json!("completed"), &json!(STEERED_TEXT), &json!(thread))
    );
    let resumed = &fake.requests()[before..];
    assert!(!resumed.is_empty());
    let input = resumed[0].body.as_ref().unwrap()["input"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        input
            .iter()
            .any(|i| i["type"] == "function_call" && i["call_id"] == OPENAI_CALL_ID),
        "the resumed thread carries the first run's call: {input:#?}"
    );

    // Nothing but the gateway: every request is the Responses API with the gateway key, the trap
    // standing in for every other destination saw nothing, and the planted key never left.
    let requests = fake.requests();
    assert!(requests.len() >= 3, "{}", fake.summary());
    for r in &requests {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/openai/v1/responses")
        );
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {GATEWAY_TOKEN}").as_str())
        );
        assert_eq!(r.body.as_ref().unwrap()["model"], "tale-e2e-model");
        assert_eq!(r.body.as_ref().unwrap()["stream"], true);
        for (name, value) in &r.headers {
            assert!(
                !value.contains(PLANTED_KEY),
                "the planted key leaked in {name}"
            );
        }
    }
    stack
        .assert_only_gateway(capture, fake.port, &context)
        .await;
    let (status, _) = c
        .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

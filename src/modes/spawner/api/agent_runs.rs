//! Agent runs (additive): the spawner runs an agent CLI through its adapter and streams the exec's
//! SSE events plus `agent` events — normalized [`AgentEvent`]s parsed here from stdout.
//!
//! * `POST …/agent-runs` `{agent, execId, run, gateway, timeoutMs?}` → SSE (an exec with held
//!   stdin for Claude Code, `collectOutput:false`).
//! * `GET …/agent-runs/:execId/attach?agent=…[&sinceSeq=N[.k]]` → SSE; the exec is replayed from
//!   its start and re-parsed, and only events after the position (or `Last-Event-ID`) are sent.
//! * `POST …/agent-runs/:execId/steer` `{agent, text?, eof?}` → writes one user message line to
//!   the agent's held stdin and/or closes it; 200 with runnerd's `{ok, reason?}`.
//!
//! The spawner keeps no state about a run: the client names the agent on every call.
//!
//! [`AgentEvent`]: crate::modes::spawner::agents::AgentEvent
use super::exec::{launch, replay};
use super::sessions::lost_or_upstream;
use super::sse::AgentTap;
use super::{bad_request, ok, ApiRequest};
use crate::modes::spawner::agents::request::{AgentRunRequest, SteerRequest, StreamPosition};
use crate::modes::spawner::agents::{adapter, SessionContext, StdinMode};
use crate::modes::spawner::state::Spawner;
use crate::shared::http::HttpResponse;
use crate::shared::protocol::runnerd::StdinRequest;
use crate::shared::protocol::runnerd::MAX_STDIN_LINE_BYTES;
use crate::shared::protocol::spawner::SessionExec;
use base64_simd::STANDARD;
use std::sync::Arc;

pub async fn start(spawner: Arc<Spawner>, id: &str, request: &ApiRequest) -> HttpResponse {
    let entry = match spawner.lookup_or_heal(id).await {
        Ok(entry) => entry,
        Err(refusal) => return refusal.into(),
    };
    let run = match request.json().and_then(|body| {
        AgentRunRequest::parse(
            &body,
            &spawner.config.limits,
            &spawner.config.llm_gateway_url,
        )
        .map_err(|e| bad_request(e.0))
    }) {
        Ok(run) => run,
        Err(refusal) => return refusal.into(),
    };
    let session = SessionContext {
        exec_home: spawner.backend.exec_home(id),
    };
    let built = run.adapter.build_exec(&run.spec, &session);
    let exec = SessionExec {
        exec_id: run.exec_id.clone(),
        command: Some(built.argv),
        shell: None,
        cwd: built.cwd,
        env: built.env,
        stdin_base64: built.stdin.map(|stdin| STANDARD.encode_to_string(stdin)),
        stdin_mode: match built.stdin_mode {
            StdinMode::Hold => crate::shared::protocol::runnerd::StdinMode::Hold,
            StdinMode::Close => crate::shared::protocol::runnerd::StdinMode::Close,
        },
        timeout_ms: run.timeout_ms,
        collect_output: false,
        pty: None,
    };
    tracing::info!(
        session_id = id,
        exec_id = %exec.exec_id,
        agent = run.adapter.slug().as_str(),
        "agent run"
    );
    let tap = AgentTap::new(run.adapter.parser(), StreamPosition::START);
    launch(spawner, id, &entry, &exec, Some(tap))
        .await
        .unwrap_or_else(Into::into)
}

pub async fn attach(
    spawner: Arc<Spawner>,
    id: &str,
    exec_id: &str,
    request: &ApiRequest,
) -> HttpResponse {
    let entry = match spawner.lookup_or_heal(id).await {
        Ok(entry) => entry,
        Err(refusal) => return refusal.into(),
    };
    let Some(adapter) = request.query("agent").as_deref().and_then(adapter) else {
        return bad_request("agent must be one of \"claude-code\", \"opencode\", \"codex\"").into();
    };
    // Unreadable means the start.
    let position = request
        .resume_position(StreamPosition::parse)
        .unwrap_or(StreamPosition::START);
    let tap = AgentTap::new(adapter.parser(), position);
    replay(spawner, id, &entry, exec_id, 0, Some(tap))
        .await
        .unwrap_or_else(Into::into)
}

pub async fn steer(
    spawner: &Spawner,
    id: &str,
    exec_id: &str,
    request: &ApiRequest,
) -> HttpResponse {
    let entry = match spawner.lookup_or_heal(id).await {
        Ok(entry) => entry,
        Err(refusal) => return refusal.into(),
    };
    let steer = match request.json().and_then(|body| {
        SteerRequest::parse(&body, MAX_STDIN_LINE_BYTES).map_err(|e| bad_request(e.0))
    }) {
        Ok(steer) => steer,
        Err(refusal) => return refusal.into(),
    };
    let stdin = StdinRequest {
        b64: steer.line.map(|line| STANDARD.encode_to_string(line)),
        eof: steer.eof.then_some(true),
    };
    match entry.runnerd.stdin(exec_id, &stdin).await {
        Ok(reply) => ok(&reply),
        Err(err) => lost_or_upstream(spawner, id, err).await.into(),
    }
}

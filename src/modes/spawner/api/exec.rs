//! Exec routes: start (SSE), attach (SSE, resumable by `sinceSeq` or `Last-Event-ID`), cancel,
//! status, stdin, resize.
use super::sessions::lost_or_upstream;
use super::sse::{pump, sse_response, AgentTap, ProxyMode, ResumedAttach};
use super::{bad_request, ok, ApiError, ApiRequest, Reply};
use crate::modes::spawner::registry::SessionEntry;
use crate::modes::spawner::state::Spawner;
use crate::shared::http::{json, HttpResponse};
use crate::shared::protocol::runnerd::{ExecStatus, ExecStatusState, PtySize, StdinRequest};
use crate::shared::protocol::spawner::{ErrorData, SessionExec};
use crate::shared::sse::event_frame;
use hyper::StatusCode;
use std::sync::Arc;

pub async fn start(spawner: Arc<Spawner>, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let exec = SessionExec::parse(&request.json()?, &spawner.config.limits)?;
    match launch(spawner.clone(), id, &entry, &exec, None).await {
        // The exec never reached the lost compute; it runs on the healed one.
        Err(refusal) if refusal.code == "session_restarted" => {
            let entry = spawner.lookup_or_heal(id).await?;
            launch(spawner, id, &entry, &exec, None).await
        }
        other => other,
    }
}

/// Starts `exec` in the session and streams it as SSE (with agent events when `agent` is given);
/// the exec keeps running when the client leaves. Shared by `exec` and `agent-runs`.
pub async fn launch(
    spawner: Arc<Spawner>,
    id: &str,
    entry: &SessionEntry,
    exec: &SessionExec,
    agent: Option<AgentTap>,
) -> Reply {
    let body = exec.runnerd_request(
        spawner.config.stdout_max_bytes,
        spawner.config.stderr_max_bytes,
    );
    let stream = match entry.runnerd.exec(&body).await {
        Ok(stream) => stream,
        Err(err) => return Err(lost_or_upstream(&spawner, id, err).await),
    };
    spawner.metrics.execs.inc();
    let (tx, response) = sse_response();
    let mode = ProxyMode::Exec {
        collect: exec.collect_output,
    };
    let task = tokio::spawn({
        let spawner = spawner.clone();
        let (session_id, exec_id) = (id.to_owned(), exec.exec_id.clone());
        async move {
            pump(spawner.clone(), session_id.clone(), stream, tx, mode, agent).await;
            spawner.registry.remove_proxy(&session_id, &exec_id);
        }
    });
    spawner
        .registry
        .add_proxy(id, &exec.exec_id, task.abort_handle());
    Ok(response)
}

pub async fn attach(spawner: Arc<Spawner>, id: &str, exec_id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    // Non-numeric means 0.
    let since_seq = request
        .resume_position(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    replay(spawner, id, &entry, exec_id, since_seq, None).await
}

/// Streams an exec's journal from `since_seq` as SSE (an `error` event when runnerd does not know
/// the exec). Shared by the exec and agent-run attaches.
pub async fn replay(
    spawner: Arc<Spawner>,
    id: &str,
    entry: &SessionEntry,
    exec_id: &str,
    since_seq: u64,
    agent: Option<AgentTap>,
) -> Reply {
    // A plain resume opens the journal a few events early to rebuild a character cut at
    // `since_seq`; an agent attach (which replays from the start) opens it where asked.
    let opened_after = match agent {
        None => ResumedAttach::lookback_start(since_seq),
        Some(_) => since_seq,
    };
    let stream = match entry.runnerd.attach(exec_id, opened_after).await {
        Ok(stream) => stream,
        Err(err) => return Err(lost_or_upstream(&spawner, id, err).await),
    };
    let (tx, response) = sse_response();
    match stream {
        None => {
            let message = format!("exec {exec_id} not found");
            let _ = tx.try_send(event_frame("error", None, &ErrorData { message }));
        }
        Some(stream) => {
            let spawner = spawner.clone();
            let session_id = id.to_owned();
            let resumed = (since_seq > 0).then(|| {
                Box::new(ResumedAttach {
                    runnerd: entry.runnerd.clone(),
                    exec_id: exec_id.to_owned(),
                    since_seq,
                    opened_after,
                })
            });
            tokio::spawn(async move {
                pump(
                    spawner,
                    session_id,
                    stream,
                    tx,
                    ProxyMode::Attach { resumed },
                    agent,
                )
                .await;
            });
        }
    }
    Ok(response)
}

/// `GET /v1/sessions/:id/exec`: the session's live and retained execs, as runnerd lists them.
pub async fn list(spawner: &Spawner, id: &str) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    match entry.runnerd.list_execs().await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}

pub async fn cancel(spawner: &Spawner, id: &str, exec_id: &str) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    match entry.runnerd.cancel(exec_id).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}

fn gone(exec_id: &str) -> HttpResponse {
    json(
        StatusCode::NOT_FOUND,
        &ExecStatus {
            exec_id: exec_id.to_owned(),
            state: ExecStatusState::Gone {},
        },
    )
}

/// The exec's state; an exec of a session that is gone is `{state: "gone"}` (404), in the
/// status reply's own shape.
pub async fn status(spawner: &Spawner, id: &str, exec_id: &str) -> Reply {
    let Some(entry) = spawner.lookup(id).await else {
        return Ok(gone(exec_id));
    };
    match entry.runnerd.status(exec_id).await {
        Ok((status, body)) => Ok(json(status, &body)),
        Err(err) if err.is_transport() && spawner.evict_if_gone(id).await => Ok(gone(exec_id)),
        Err(err) => Err(ApiError::upstream(err.to_string())),
    }
}

/// The stdin route's body: `{b64?: string, eof?: boolean}` (nulls mean absent).
pub fn stdin_body(body: &serde_json::Value) -> Result<StdinRequest, ApiError> {
    if body
        .get("b64")
        .is_some_and(|v| !v.is_string() && !v.is_null())
    {
        return Err(bad_request("b64 must be a string"));
    }
    if body
        .get("eof")
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        return Err(bad_request("eof must be a boolean"));
    }
    let stdin = StdinRequest {
        b64: body.get("b64").and_then(|v| v.as_str()).map(str::to_owned),
        eof: body.get("eof").and_then(|v| v.as_bool()),
    };
    if stdin.is_empty() {
        return Err(bad_request(StdinRequest::EMPTY_MESSAGE));
    }
    Ok(stdin)
}

pub async fn stdin(spawner: &Spawner, id: &str, exec_id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let stdin = stdin_body(&request.json()?)?;
    match entry.runnerd.stdin(exec_id, &stdin).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}

/// `POST …/exec/:execId/resize` `{cols, rows}`: passed to runnerd, whose `{ok, reason?}` comes back.
pub async fn resize(spawner: &Spawner, id: &str, exec_id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let size = PtySize::from_value(&request.json()?).map_err(bad_request)?;
    match entry.runnerd.resize(exec_id, &size).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}

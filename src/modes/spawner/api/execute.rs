//! `POST /v1/execute`: the one-shot run — a fresh session, optional staged files, one exec streamed
//! as SSE, then the session is destroyed (also when the client leaves early).
use super::sessions::create_session;
use super::sse::{pump, sse_response, ProxyMode};
use super::{bad_request, ApiError, ApiRequest, Reply};
use crate::modes::spawner::state::Spawner;
use crate::shared::protocol::runnerd::StageRequest;
use crate::shared::protocol::spawner::{CreateSession, Profile, SessionExec};
use std::sync::Arc;

/// Organization recorded for one-shot sessions when the request names none.
pub const ONE_SHOT_ORGANIZATION: &str = "one-shot";
/// Exec id of the one command a one-shot session runs.
pub const ONE_SHOT_EXEC_ID: &str = "run";

fn random_id() -> String {
    format!("exe-{}", crate::shared::hex::random::<8>())
}

/// What a one-shot request asks for.
pub struct OneShot {
    pub exec: SessionExec,
    pub files: Option<StageRequest>,
    pub organization_id: String,
}

/// The execute route's body: an exec (its `execId` is always [`ONE_SHOT_EXEC_ID`]), optional
/// `files` to stage first, optional `organizationId`.
pub fn execute_body(
    mut body: serde_json::Value,
    limits: &crate::shared::protocol::spawner::RequestLimits,
) -> Result<OneShot, ApiError> {
    let map = body
        .as_object_mut()
        .ok_or_else(|| bad_request("body must be a JSON object"))?;
    map.insert("execId".into(), ONE_SHOT_EXEC_ID.into());
    let files: Option<StageRequest> = match map.remove("files") {
        None | Some(serde_json::Value::Null) => None,
        Some(files) => match serde_json::from_value(serde_json::json!({ "files": files })) {
            Ok(stage) => Some(stage),
            Err(_) => {
                return Err(bad_request(
                    "files must be an array of {path, url?, contentBase64?}",
                ))
            }
        },
    };
    let exec = SessionExec::parse(&body, limits)?;
    let organization_id = body
        .get("organizationId")
        .and_then(|v| v.as_str())
        .unwrap_or(ONE_SHOT_ORGANIZATION)
        .to_owned();
    if !crate::shared::protocol::spawner::is_valid_org_id(&organization_id) {
        return Err(bad_request(
            "organizationId must match ^[A-Za-z0-9_-]{1,128}$",
        ));
    }
    Ok(OneShot {
        exec,
        files,
        organization_id,
    })
}

pub async fn execute(spawner: Arc<Spawner>, request: &ApiRequest) -> Reply {
    let OneShot {
        exec,
        files,
        organization_id,
    } = execute_body(request.json()?, &spawner.config.limits)?;
    let create = CreateSession {
        session_id: random_id(),
        organization_id,
        profile: Profile::Default,
        ttl_ms: spawner.config.limits.max_lifetime_ms,
        idle_timeout_ms: spawner.config.limits.max_idle_ms,
        env: Default::default(),
    };
    let session_id = create.session_id.clone();
    let entry = create_session(&spawner, &create).await?;
    let teardown = |spawner: Arc<Spawner>, session_id: String| async move {
        spawner.registry.remove(&session_id);
        if let Err(err) = spawner.backend.destroy_session(&session_id).await {
            tracing::warn!(%session_id, %err, "one-shot session teardown failed");
        }
    };
    if let Some(stage) = files {
        match entry.runnerd.stage(&stage).await {
            Ok(reply) if reply.skipped.is_empty() => {}
            Ok(reply) => {
                teardown(spawner.clone(), session_id).await;
                let first = &reply.skipped[0];
                return Err(bad_request(format!(
                    "staging failed: {}: {}",
                    first.path, first.reason
                )));
            }
            Err(err) => {
                teardown(spawner.clone(), session_id).await;
                return Err(err.into());
            }
        }
    }
    let request = exec.runnerd_request(
        spawner.config.stdout_max_bytes,
        spawner.config.stderr_max_bytes,
    );
    let stream = match entry.runnerd.exec(&request).await {
        Ok(stream) => stream,
        Err(err) => {
            teardown(spawner.clone(), session_id).await;
            return Err(ApiError::upstream(err.to_string()));
        }
    };
    spawner.metrics.execs.inc();
    let (tx, response) = sse_response();
    tokio::spawn(async move {
        let finished = pump(
            spawner.clone(),
            session_id.clone(),
            stream,
            tx,
            ProxyMode::Exec { collect: true },
            None,
        )
        .await;
        if finished.is_none() {
            // The client left: stop the command before the session goes.
            let _ = entry.runnerd.cancel(ONE_SHOT_EXEC_ID).await;
        }
        teardown(spawner, session_id).await;
    });
    Ok(response)
}

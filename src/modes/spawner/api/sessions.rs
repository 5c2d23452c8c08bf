//! Session routes: health, create (or resume), list, get, destroy, env, pin.
use super::{bad_request, not_found, ok, ApiError, ApiRequest, Reply};
use crate::modes::spawner::backend::{CapClaim, CapDecision, CapRequest, SessionSpec};
use crate::modes::spawner::limits::{
    CREATE_IN_FLIGHT_GRACE, UNSEEDED_SETTLE_POLL, UNSEEDED_SETTLE_WAIT,
};
use crate::modes::spawner::metrics::Metrics;
use crate::modes::spawner::registry::{Admission, SessionEntry};
use crate::modes::spawner::seed;
use crate::modes::spawner::state::{Spawner, HEALTH_CACHE_TTL};
use crate::shared::http::{json, HttpResponse};
use crate::shared::protocol::runnerd::EnvPatch;
use crate::shared::protocol::spawner::{
    CreateSession, DestroyReply, SessionInfo, SessionListReply, SessionReply, SessionState,
};
use hyper::StatusCode;
use std::time::{Duration, Instant};

/// Seconds a client should wait before retrying a create refused for capacity.
pub const RETRY_AFTER_SECONDS: u64 = 10;

pub async fn health(spawner: &Spawner) -> HttpResponse {
    let cached = spawner
        .health_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|(at, _)| at.elapsed() < HEALTH_CACHE_TTL)
        .map(|(_, result)| result.clone());
    let result = match cached {
        Some(result) => result,
        None => {
            let result = spawner.backend.health().await.map_err(|e| e.to_string());
            *spawner
                .health_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), result.clone()));
            result
        }
    };
    match result {
        Ok(details) => {
            let mut body = serde_json::json!({"status": "ok"});
            if let (Some(map), Some(extra)) = (body.as_object_mut(), details.as_object()) {
                map.extend(extra.clone());
            }
            json(StatusCode::OK, &body)
        }
        Err(message) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unhealthy", "error": message}),
        ),
    }
}

fn quota(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "session_quota",
        Some(message.into()),
    )
    .retry_after(RETRY_AFTER_SECONDS)
}

pub async fn create(spawner: &Spawner, request: &ApiRequest) -> Reply {
    let create = CreateSession::parse(&request.json()?, &spawner.config.limits)?;
    let entry = create_session(spawner, &create).await?;
    Ok(json(
        StatusCode::CREATED,
        &SessionReply {
            session: entry.info(spawner.backend_name()),
        },
    ))
}

/// Admission (caps, duplicates), then the create itself; records metrics either way.
pub async fn create_session(
    spawner: &Spawner,
    create: &CreateSession,
) -> Result<SessionEntry, ApiError> {
    let id = create.session_id.clone();
    let shared_caps = spawner.backend.arbitrates_caps();
    let caps = (!shared_caps).then_some((
        spawner.config.max_sessions,
        spawner.config.max_sessions_per_org,
    ));
    let mut admitted = spawner.registry.admit(&id, &create.organization_id, caps);
    if admitted == Err(Admission::Duplicate) && spawner.evict_if_gone(&id).await {
        // Stopped or destroyed through another replica since this one last looked: a new create.
        admitted = spawner.registry.admit(&id, &create.organization_id, caps);
    }
    if admitted == Err(Admission::Duplicate) {
        // A retry of a create that died before seeding finished: finish it.
        let _lifecycle = spawner.registry.lifecycle(&id).await;
        if let Some(finished) = finish_unseeded(spawner, create).await {
            if finished.is_ok() {
                spawner.metrics.creates.inc();
            }
            return finished;
        }
    }
    if let Err(refused) = admitted {
        spawner
            .metrics
            .create_failures
            .get_or_create(&Metrics::label("reason", "admission"))
            .inc();
        return Err(match refused {
            Admission::Duplicate => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate",
                Some(format!("session {id} exists")),
            ),
            Admission::BeingCreated => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate",
                Some(format!("session {id} is being created")),
            ),
            Admission::SpawnerFull => quota("spawner session cap reached"),
            Admission::OrgFull => quota("org session cap reached"),
        });
    }
    let started = Instant::now();
    let lifecycle = spawner.registry.lifecycle(&id).await;
    let result = match claim_slots(spawner, create, shared_caps).await {
        Ok(claim) => {
            let result = create_reserved(spawner, create).await;
            if result.is_err() {
                if let Err(err) = spawner.backend.release_claim(&claim).await {
                    tracing::warn!(session_id = %id, %err, "could not release the cap claim of a failed create; it will be reclaimed");
                }
            }
            result
        }
        Err(refusal) => Err(refusal),
    };
    drop(lifecycle);
    spawner
        .registry
        .finish_create(&id, result.as_ref().ok().cloned());
    match result {
        Ok(entry) => {
            spawner.metrics.creates.inc();
            spawner
                .metrics
                .create_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok(entry)
        }
        Err((reason, refusal)) => {
            spawner
                .metrics
                .create_failures
                .get_or_create(&Metrics::label("reason", reason))
                .inc();
            Err(refusal)
        }
    }
}

/// Claims the create's cap slots from the backend when it arbitrates them (across replicas).
async fn claim_slots(
    spawner: &Spawner,
    create: &CreateSession,
    shared_caps: bool,
) -> Result<CapClaim, (&'static str, ApiError)> {
    if !shared_caps {
        return Ok(CapClaim::default());
    }
    let request = CapRequest {
        session_id: &create.session_id,
        organization_id: &create.organization_id,
        max_sessions: spawner.config.max_sessions,
        max_per_org: spawner.config.max_sessions_per_org,
        create_budget: Duration::from_millis(spawner.config.create_timeout_ms),
    };
    match spawner.backend.claim_capacity(&request).await {
        Ok(CapDecision::Admitted(claim)) => Ok(claim),
        Ok(CapDecision::SpawnerFull) => Err(("admission", quota("spawner session cap reached"))),
        Ok(CapDecision::OrgFull) => Err(("admission", quota("org session cap reached"))),
        Err(err) => {
            tracing::warn!(session_id = %create.session_id, %err, "cap claim failed");
            Err(("backend", err.into()))
        }
    }
}

/// Creates compute, waits for runnerd, pushes the seed env. Any failure tears down what it made.
async fn create_reserved(
    spawner: &Spawner,
    create: &CreateSession,
) -> Result<SessionEntry, (&'static str, ApiError)> {
    let created_at_ms = crate::shared::clock::now_ms();
    let id = &create.session_id;
    let spec = SessionSpec {
        session_id: id.clone(),
        organization_id: create.organization_id.clone(),
        profile: create.profile.as_str().to_owned(),
        ttl_ms: create.ttl_ms,
        idle_timeout_ms: create.idle_timeout_ms,
        created_at_ms,
        resources: spawner.config.resources(create.profile),
        runnerd_token: spawner.runnerd_token(id),
        runnerd_tls: spawner.runnerd_tls(id),
    };
    let deadline = Duration::from_millis(spawner.config.create_timeout_ms);
    let endpoint = match spawner.backend.create_session(&spec, deadline).await {
        Ok(endpoint) => endpoint,
        Err(err @ crate::modes::spawner::backend::BackendError::Exists(_)) => {
            // Running compute this replica had not registered (a create that died, another
            // replica's session): finish its seeding if that is what it lacks.
            return match finish_unseeded(spawner, create).await {
                Some(Ok(entry)) => Ok(entry),
                Some(Err(refusal)) => Err(("seed", refusal)),
                None => Err(("exists", err.into())),
            };
        }
        Err(err @ crate::modes::spawner::backend::BackendError::CreateInProgress { .. }) => {
            tracing::info!(session_id = %id, %err, "create refused for now: an earlier create of this id has not started its compute");
            return Err(("in_progress", err.into()));
        }
        Err(err @ crate::modes::spawner::backend::BackendError::OwnerMismatch { .. }) => {
            tracing::warn!(session_id = %id, %err, "create refused: the backend objects are not this session's");
            return Err(("owner_mismatch", err.into()));
        }
        Err(err) => {
            tracing::warn!(session_id = %id, %err, "session create failed");
            return Err(("backend", err.into()));
        }
    };
    let runnerd = spawner.runnerd_client(id, &endpoint);
    crate::modes::spawner::test_hooks::pause_at("after_ready").await;
    if let Err(err) = seed::deliver(&runnerd, create).await {
        tracing::warn!(session_id = %id, %err, "seed push failed; tearing the session down");
        if let Err(cleanup) = spawner.backend.stop_session(id).await {
            tracing::warn!(session_id = %id, %cleanup, "cleanup after a failed seed push failed");
        }
        return Err(("seed_env", seed_failed(&err)));
    }
    Ok(SessionEntry {
        session_id: id.clone(),
        organization_id: create.organization_id.clone(),
        profile: create.profile,
        state: SessionState::Ready,
        created_at_ms,
        expires_at_ms: created_at_ms + create.ttl_ms,
        idle_timeout_ms: create.idle_timeout_ms,
        last_activity_at_ms: created_at_ms,
        pinned: false,
        runnerd,
    })
}

fn seed_failed(err: &crate::modes::spawner::runnerd_client::RunnerdError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "create_failed",
        Some(format!("seed env push failed: {err}")),
    )
}

/// A create for a session that is live but was never completely seeded (its create died part way,
/// or its compute started again without the seed): delivers the seed and answers as the create
/// would have. `None` when that is not the case — the session is seeded, predates the seed record,
/// or was created for another organization or profile — and the create is a duplicate as before.
/// The caller holds the session's lifecycle lock.
async fn finish_unseeded(
    spawner: &Spawner,
    create: &CreateSession,
) -> Option<Result<SessionEntry, ApiError>> {
    let id = &create.session_id;
    let entry = spawner.lookup(id).await?;
    if entry.organization_id != create.organization_id || entry.profile != create.profile {
        return None;
    }
    // A young session may be another replica's create about to record its seed: give it the
    // settle wait; an older one (its create ended long ago, or a Pod that started again) at once.
    let in_flight_until = entry.created_at_ms.saturating_add(
        spawner.config.create_timeout_ms + CREATE_IN_FLIGHT_GRACE.as_millis() as u64,
    );
    let settle = if crate::shared::clock::now_ms() < in_flight_until {
        UNSEEDED_SETTLE_WAIT
    } else {
        Duration::ZERO
    };
    let settled_at = tokio::time::Instant::now() + settle;
    loop {
        match entry.runnerd.seed_status().await {
            Ok(Some(status)) if !status.seeded => {}
            Ok(_) => return None,
            Err(err) => {
                return Some(Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "create_failed",
                    Some(format!(
                        "cannot tell whether session {id} was seeded: {err}"
                    )),
                )))
            }
        }
        if tokio::time::Instant::now() >= settled_at {
            break;
        }
        tokio::time::sleep(UNSEEDED_SETTLE_POLL).await;
    }
    if let Err(err) = seed::deliver(&entry.runnerd, create).await {
        // Left as it was (degraded): a further retry may finish it.
        tracing::warn!(session_id = %id, %err, "finishing the seed failed");
        return Some(Err(seed_failed(&err)));
    }
    tracing::info!(session_id = %id, "seed finished by a retried create; session ready");
    let entry = spawner
        .registry
        .update(id, |e| e.state = SessionState::Ready)
        .unwrap_or(SessionEntry {
            state: SessionState::Ready,
            ..entry
        });
    Some(Ok(entry))
}

pub async fn list(spawner: &Spawner, request: &ApiRequest) -> Reply {
    let org = request.query("organizationId");
    // The backend is the truth: sessions another replica created (or stopped) show up here too.
    spawner.sync_with_backend(org.as_deref()).await;
    let entries = spawner.registry.list(org.as_deref());
    let ids: Vec<String> = entries.iter().map(|e| e.session_id.clone()).collect();
    let reachability = spawner.backend.reachability(&ids).await;
    let sessions = entries
        .iter()
        .map(|e| SessionInfo {
            reachable: reachability.get(&e.session_id).copied().unwrap_or_default(),
            ..e.info(spawner.backend_name())
        })
        .collect();
    Ok(ok(&SessionListReply { sessions }))
}

pub async fn get(spawner: &Spawner, id: &str) -> Reply {
    if spawner.evict_if_gone(id).await {
        return Err(not_found());
    }
    let entry = spawner.lookup_or_heal(id).await?;
    // The activity clock and the seed record are runnerd's: both are read at each GET, so a
    // session whose runnerd started again without its seed (or whose seed another replica
    // finished) is reported as it is now.
    let (health, state) = tokio::join!(entry.runnerd.health(), seed::state_of(&entry.runnerd, id));
    let entry = spawner
        .registry
        .update(id, |e| {
            e.state = state;
            if let Ok(health) = &health {
                e.last_activity_at_ms = health.last_activity_at_ms;
            }
        })
        .unwrap_or(entry);
    let ids = [id.to_owned()];
    let reachable = spawner
        .backend
        .reachability(&ids)
        .await
        .remove(id)
        .unwrap_or_default();
    Ok(ok(&SessionReply {
        session: SessionInfo {
            reachable,
            ..entry.info(spawner.backend_name())
        },
    }))
}

pub async fn destroy(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup(id).await;
    if request.query("if_idle").as_deref() == Some("1") {
        let busy = match &entry {
            Some(_) if spawner.registry.proxy_count(id) > 0 => true,
            Some(entry) => entry
                .runnerd
                .health()
                .await
                .map_or(true, |h| h.live_execs > 0),
            None => false,
        };
        if busy {
            return Ok(ok(&DestroyReply {
                destroyed: false,
                busy: true,
                error: None,
            }));
        }
    }
    let _lifecycle = spawner.registry.lifecycle(id).await;
    let removed = spawner.registry.remove(id);
    // A failed destroy answers in the destroy reply's own shape (`{destroyed, busy, error}`).
    Ok(match spawner.backend.destroy_session(id).await {
        Ok(existed) => ok(&DestroyReply {
            destroyed: removed.is_some() || existed,
            busy: false,
            error: None,
        }),
        Err(err) => {
            tracing::warn!(session_id = id, %err, "backend destroy failed");
            if let Some(entry) = removed {
                spawner.registry.insert(entry);
            }
            json(
                StatusCode::BAD_GATEWAY,
                &DestroyReply {
                    destroyed: false,
                    busy: false,
                    error: Some("backend destroy failed".into()),
                },
            )
        }
    })
}

pub async fn patch_env(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let patch = env_patch_body(request.json()?)?;
    match entry.runnerd.patch_env(&patch).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}

/// The pin route's body: `{pinned: boolean}`.
pub fn pin_body(body: &serde_json::Value) -> Result<bool, ApiError> {
    body.get("pinned")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| bad_request("pinned must be a boolean"))
}

/// The env route's body: `{set?: {name: string}, unset?: [string]}`.
pub fn env_patch_body(body: serde_json::Value) -> Result<EnvPatch, ApiError> {
    serde_json::from_value(body).map_err(|e| {
        bad_request(format!(
            "env patch must be {{set?: {{name: string}}, unset?: [string]}}: {e}"
        ))
    })
}

pub async fn pin(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    spawner.lookup_or_heal(id).await?;
    let pinned = pin_body(&request.json()?)?;
    let max_lifetime = spawner.config.limits.max_lifetime_ms;
    let now = crate::shared::clock::now_ms();
    if spawner.backend.persists_pins() {
        spawner.backend.set_pinned(id, pinned).await?;
    }
    spawner.registry.update(id, |e| {
        if e.pinned && !pinned {
            e.expires_at_ms = now + max_lifetime;
        }
        e.pinned = pinned;
    });
    Ok(ok(&serde_json::json!({"ok": true, "pinned": pinned})))
}

/// After a runnerd error: a session whose compute was lost is healed (503 `session_restarted`:
/// retry), one that is gone is 404, else what the error converts to.
pub async fn lost_or_upstream(
    spawner: &Spawner,
    id: &str,
    err: crate::modes::spawner::runnerd_client::RunnerdError,
) -> ApiError {
    if err.is_transport() {
        match spawner.heal_after_loss(id).await {
            Ok(true) => return crate::modes::spawner::heal::restarted(id),
            Ok(false) => {}
            Err(refusal) => return refusal,
        }
        if spawner.evict_if_gone(id).await {
            return not_found();
        }
    }
    err.into()
}

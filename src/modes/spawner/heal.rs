//! Healing, from the spawner's side: a session whose compute the backend lost (a Kubernetes Pod
//! evicted, failed or gone with its node) is brought back on its kept workspace at the next access
//! (a registry miss, or a runnerd that no longer answers) and, for pinned sessions, by the sweep.
//! The backend decides whether there is anything to heal (`Backend::heal_session`); the spawner
//! hands it the spec the session is re-created with — the recorded profile, creation time and
//! limits, and the runnerd token and certificate derived as at create. Nothing seeded at create
//! (env) survives: runnerd's seed record says so and the session reads `degraded` until a create
//! with its body seeds it again.
use super::api::ApiError;
use super::backend::{BackendError, ListedSession, SessionSpec};
use super::registry::SessionEntry;
use super::state::Spawner;
use crate::shared::protocol::spawner::Profile;
use hyper::StatusCode;
use std::time::Duration;

impl Spawner {
    /// The spec a lost session is re-created with, from what the backend recorded of it.
    fn heal_spec(&self, listed: &ListedSession) -> SessionSpec {
        let limits = &self.config.limits;
        let or_max = |value: u64, max: u64| if value > 0 { value } else { max };
        SessionSpec {
            session_id: listed.session_id.clone(),
            organization_id: listed.organization_id.clone(),
            profile: listed.profile.clone(),
            ttl_ms: or_max(listed.ttl_ms, limits.max_lifetime_ms),
            idle_timeout_ms: or_max(listed.idle_timeout_ms, limits.max_idle_ms),
            created_at_ms: listed.created_at_ms,
            resources: self.config.resources(Profile::from_label(&listed.profile)),
            runnerd_token: self.runnerd_token(&listed.session_id),
            runnerd_tls: self.runnerd_tls(&listed.session_id),
        }
    }

    /// Brings the session back when its compute was lost, and registers it (in the state its
    /// seed record gives: `degraded`). `Ok(None)` when there is nothing to heal or a create of it
    /// is under way here; 503 `session_unreachable` while its compute cannot be replaced yet.
    pub async fn heal(&self, id: &str) -> Result<Option<SessionEntry>, ApiError> {
        if self.registry.is_creating(id) {
            return Ok(None);
        }
        let known = self
            .registry
            .get(id)
            .map(|e| e.runnerd.base_url().to_owned());
        let _lifecycle = self.registry.lifecycle(id).await;
        // Healed by another task while this one waited for the lock (an access, the sweep, the
        // boot): the entry is new or points at new compute.
        if let Some(entry) = self.registry.get(id) {
            if known.as_deref() != Some(entry.runnerd.base_url()) {
                return Ok(Some(entry));
            }
        }
        let spec_for = |listed: &ListedSession| self.heal_spec(listed);
        let budget = Duration::from_millis(self.config.create_timeout_ms);
        let healed = match self.backend.heal_session(id, &spec_for, budget).await {
            Ok(Some(healed)) => healed,
            Ok(None) => return Ok(None),
            // Another replica is bringing it back at the same moment: its Pod is starting.
            Err(BackendError::Exists(_)) => return Err(restarted(id)),
            Err(err @ BackendError::Unreachable { .. }) => {
                tracing::warn!(session_id = id, %err, "session compute lost and not replaceable yet");
                return Err(err.into());
            }
            Err(err) => {
                tracing::warn!(session_id = id, %err, "healing the session failed");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "heal_failed",
                    Some(format!(
                        "session {id} lost its compute and could not be brought back: {err}"
                    )),
                ));
            }
        };
        let listed = healed.session;
        // Its cap slots may have been reclaimed while it was not running: it counts again.
        if self.backend.arbitrates_caps() {
            self.adopt_claim(&listed).await;
        }
        let runnerd = self.runnerd_client(id, &healed.endpoint);
        let pinned = self.backend.persists_pins()
            && self.backend.is_pinned(id).await.unwrap_or(true)
            || self.registry.get(id).is_some_and(|e| e.pinned);
        let spec = self.heal_spec(&listed);
        let entry = SessionEntry {
            session_id: id.to_owned(),
            organization_id: listed.organization_id.clone(),
            profile: Profile::from_label(&listed.profile),
            state: super::seed::state_of(&runnerd, id).await,
            created_at_ms: listed.created_at_ms,
            expires_at_ms: listed.created_at_ms.saturating_add(spec.ttl_ms),
            idle_timeout_ms: spec.idle_timeout_ms,
            last_activity_at_ms: crate::shared::clock::now_ms(),
            pinned,
            runnerd,
        };
        self.registry.remove(id);
        self.registry.insert(entry.clone());
        self.metrics.heals.inc();
        tracing::warn!(session_id = id, state = entry.state.as_str(), endpoint = %healed.endpoint, "session healed on its kept workspace");
        Ok(Some(entry))
    }

    /// The session's entry ([`Spawner::lookup`]), else the session healed; 404 only when the
    /// backend has nothing to bring back.
    pub async fn lookup_or_heal(&self, id: &str) -> Result<SessionEntry, ApiError> {
        if let Some(entry) = self.lookup(id).await {
            return Ok(entry);
        }
        self.heal(id).await?.ok_or_else(ApiError::not_found)
    }

    /// After runnerd stopped answering: heals the session when its compute was lost. `Ok(true)`
    /// when it was brought back (the caller's request may be retried against the new entry).
    pub async fn heal_after_loss(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.heal(id).await?.is_some())
    }
}

/// Pinned sessions lost while no spawner watched them, healed at once (boot and each sweep).
pub const LOST_PINNED_HEAL_CONCURRENCY: usize = 4;

impl Spawner {
    /// Heals the pinned sessions whose compute the backend lost and that are not registered here
    /// (boot adoption lists running compute only), [`LOST_PINNED_HEAL_CONCURRENCY`] at a time,
    /// each within the create deadline. A failure is logged; the next sweep tries again.
    pub async fn heal_lost_pinned(&self) {
        use futures_util::StreamExt;
        let ids = match self.backend.lost_pinned_sessions().await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(%err, "cannot look for pinned sessions whose compute was lost");
                return;
            }
        };
        let unregistered = ids
            .into_iter()
            .filter(|id| !self.registry.contains(id) && !self.registry.is_creating(id));
        futures_util::stream::iter(unregistered)
            .for_each_concurrent(LOST_PINNED_HEAL_CONCURRENCY, |id| async move {
                match self.heal(&id).await {
                    Ok(Some(_)) => tracing::info!(session_id = %id, "healed a pinned session whose compute was lost while unwatched"),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(session_id = %id, error = ?err.message, "could not heal a pinned session; retrying at the next sweep"),
                }
            })
            .await;
    }
}

/// 503 `session_restarted`: the session's compute was lost and has just been brought back; the
/// request did not reach it and a retry will.
pub fn restarted(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "session_restarted",
        Some(format!(
            "session {id} lost its compute and was brought back on its workspace (degraded: its seed is gone); retry the request"
        )),
    )
    .retry_after(super::limits::RESTARTED_RETRY_AFTER_SECONDS)
}

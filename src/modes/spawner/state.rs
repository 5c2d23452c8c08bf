//! The spawner's shared state and the session operations every route builds on.
use super::backend::Backend;
use super::config::SpawnerConfig;
use super::edge::body::BodyBudget;
use super::metrics::Metrics;
use super::registry::{Registry, SessionEntry};
use crate::modes::spawner::runnerd_client::RunnerdClient;
use crate::shared::hmac::{derive_runnerd_token, RequestVerifier};
use crate::shared::protocol::spawner::{Profile, SessionState};
use crate::shared::tls::SessionTls;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Key used to derive runnerd tokens in `--insecure-dev` mode (no SANDBOX_TOKEN): tokens are then
/// predictable, which is what that mode is — insecure.
pub const INSECURE_DEV_KEY: &[u8] = b"tale-insecure-dev";
/// How long a `/health` backend probe is reused.
pub use super::limits::HEALTH_CACHE_TTL;

/// Everything a route needs.
pub struct Spawner {
    pub config: SpawnerConfig,
    pub backend: Arc<dyn Backend>,
    pub registry: Registry,
    /// `None` only in `--insecure-dev` mode.
    pub verifier: Option<RequestVerifier>,
    pub metrics: Metrics,
    /// Request body bytes in flight, across all requests.
    pub body_budget: BodyBudget,
    pub health_cache: Mutex<Option<(Instant, Result<serde_json::Value, String>)>>,
    /// Boot adoption's progress, which requests for not-yet-adopted sessions wait on.
    pub adoption: super::adoption::AdoptionGate,
}

impl Spawner {
    pub fn new(config: SpawnerConfig, backend: Arc<dyn Backend>) -> Arc<Spawner> {
        Arc::new(Spawner {
            // Requests signed before now may have been served by a previous process.
            verifier: config
                .token
                .as_deref()
                .map(|key| RequestVerifier::new(key, crate::shared::clock::now_ms() as i64)),
            body_budget: BodyBudget::new(config.edge.body_budget_bytes),
            config,
            backend,
            registry: Registry::default(),
            metrics: Metrics::new(),
            health_cache: Mutex::new(None),
            adoption: Default::default(),
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.kind().as_str()
    }

    /// The session's runnerd token, derived from SANDBOX_TOKEN and stored nowhere.
    pub fn runnerd_token(&self, session_id: &str) -> String {
        derive_runnerd_token(
            self.config.token.as_deref().unwrap_or(INSECURE_DEV_KEY),
            session_id,
        )
    }

    /// The session's runnerd key and certificate when runnerd traffic is TLS, derived from
    /// SANDBOX_TOKEN like the token: the same at creation and after any restart.
    pub fn runnerd_tls(&self, session_id: &str) -> Option<SessionTls> {
        self.config.tls.runnerd.then(|| {
            SessionTls::derive(
                self.config.token.as_deref().unwrap_or(INSECURE_DEV_KEY),
                session_id,
            )
        })
    }

    /// A client for the session's runnerd (pinned to its certificate when runnerd serves TLS).
    pub fn runnerd_client(&self, session_id: &str, endpoint: &str) -> RunnerdClient {
        RunnerdClient::for_session(
            endpoint,
            &self.runnerd_token(session_id),
            self.runnerd_tls(session_id).as_ref(),
        )
    }

    /// The registry entry, or — on a miss — the session adopted from the backend (another replica
    /// or a previous process created it).
    pub async fn lookup(&self, session_id: &str) -> Option<SessionEntry> {
        if let Some(entry) = self.registry.get(session_id) {
            return Some(entry);
        }
        let listed = self.backend.list_sessions(None).await.ok()?;
        let found = listed
            .into_iter()
            .find(|s| s.session_id == session_id && s.running)?;
        self.adopt(found).await
    }

    /// Registers a session the backend reports, if its runnerd endpoint resolves.
    pub async fn adopt(&self, listed: super::backend::ListedSession) -> Option<SessionEntry> {
        self.adopt_known(listed, None).await
    }

    /// [`adopt`](Self::adopt), with the session's pin when the caller already read it (an
    /// adoption pass lists the pins once instead of reading one per session).
    async fn adopt_known(
        &self,
        listed: super::backend::ListedSession,
        known_pin: Option<bool>,
    ) -> Option<SessionEntry> {
        let endpoint = match self.backend.resolve_endpoint(&listed.session_id).await {
            Ok(endpoint) => endpoint,
            Err(err) => {
                tracing::warn!(session_id = %listed.session_id, %err, "cannot adopt session");
                return None;
            }
        };
        let ttl = if listed.ttl_ms > 0 {
            listed.ttl_ms
        } else {
            self.config.limits.max_lifetime_ms
        };
        let idle = if listed.idle_timeout_ms > 0 {
            listed.idle_timeout_ms
        } else {
            self.config.limits.max_idle_ms
        };
        let runnerd = self.runnerd_client(&listed.session_id, &endpoint);
        // A pin recorded in the backend outlives the replica that set it.
        let pinned = self.backend.persists_pins()
            && match known_pin {
                Some(pinned) => pinned,
                None => self
                    .backend
                    .is_pinned(&listed.session_id)
                    .await
                    .unwrap_or(true),
            };
        let last_activity = runnerd
            .health()
            .await
            .map(|h| h.last_activity_at_ms)
            .unwrap_or(listed.created_at_ms);
        let entry = SessionEntry {
            session_id: listed.session_id.clone(),
            organization_id: listed.organization_id,
            profile: Profile::from_label(&listed.profile),
            state: if listed.running {
                // Ready only once its seed was delivered whole (a create may have died first).
                super::seed::adopted_state(&runnerd, self.backend.as_ref(), &listed.session_id)
                    .await
            } else {
                SessionState::Degraded
            },
            created_at_ms: listed.created_at_ms,
            expires_at_ms: listed.created_at_ms.saturating_add(ttl),
            idle_timeout_ms: idle,
            last_activity_at_ms: last_activity,
            pinned,
            runnerd,
        };
        if self.registry.contains(&entry.session_id) {
            return self.registry.get(&entry.session_id);
        }
        self.registry.insert(entry.clone());
        tracing::info!(session_id = %entry.session_id, "adopted session from the backend");
        Some(entry)
    }

    /// Re-adopts every session the backend still runs (boot, and after a spawner restart),
    /// [`ADOPTION_CONCURRENCY`](super::adoption::ADOPTION_CONCURRENCY) at a time.
    pub async fn adopt_all(&self) {
        use futures_util::StreamExt;
        match self.backend.list_sessions(None).await {
            Ok(sessions) => {
                let running = sessions.into_iter().filter(|s| s.running);
                let claimed = self.claimed_sessions().await;
                let pinned = self.pinned_sessions().await;
                futures_util::stream::iter(running)
                    .for_each_concurrent(super::adoption::ADOPTION_CONCURRENCY, |listed| async {
                        if self.needs_claim(&claimed, &listed.session_id) {
                            self.adopt_claim(&listed).await;
                        }
                        if !self.registry.contains(&listed.session_id) {
                            let known_pin = pinned.as_ref().map(|p| p.contains(&listed.session_id));
                            self.adopt_known(listed, known_pin).await;
                        }
                        self.adoption.progress();
                    })
                    .await;
            }
            Err(err) => tracing::warn!(%err, "cannot list backend sessions to adopt"),
        }
    }

    /// The pinned sessions, listed once for an adoption pass (`None`: read per session).
    async fn pinned_sessions(&self) -> Option<std::collections::HashSet<String>> {
        if !self.backend.persists_pins() {
            return None;
        }
        self.backend.pinned_sessions().await.unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot list pins; reading each adopted session's");
            None
        })
    }

    /// The sessions holding a claim, listed once for an adoption pass (`None`: the backend does
    /// not arbitrate caps, or the listing failed and each adoption checks for itself).
    async fn claimed_sessions(&self) -> Option<std::collections::HashSet<String>> {
        if !self.backend.arbitrates_caps() {
            return None;
        }
        self.backend.claimed_sessions().await.unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot list cap claims; checking each adopted session");
            None
        })
    }

    /// Whether an adopted session may need cap slots: the backend arbitrates caps and the pass's
    /// listing does not show it holding a claim.
    fn needs_claim(
        &self,
        claimed: &Option<std::collections::HashSet<String>>,
        session_id: &str,
    ) -> bool {
        self.backend.arbitrates_caps() && claimed.as_ref().is_none_or(|c| !c.contains(session_id))
    }

    /// Makes a running session count against the caps when it holds no claim (an upgrade from a
    /// release without claims).
    pub(super) async fn adopt_claim(&self, listed: &super::backend::ListedSession) {
        let request = super::backend::CapRequest {
            session_id: &listed.session_id,
            organization_id: &listed.organization_id,
            max_sessions: self.config.max_sessions,
            max_per_org: self.config.max_sessions_per_org,
            create_budget: std::time::Duration::from_millis(self.config.create_timeout_ms),
        };
        match self.backend.adopt_claim(&request).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(session_id = %listed.session_id, "adopted session is over the caps; it runs on uncounted until slots free up")
            }
            Err(err) => {
                tracing::warn!(session_id = %listed.session_id, %err, "cannot claim cap slots for an adopted session")
            }
        }
    }

    /// Makes the registry match the backend's running sessions (optionally of one org): adopts
    /// what another replica created, drops what is gone (stopped or destroyed elsewhere). Creates in
    /// flight on this replica are left to their create. A failed listing leaves the registry as is.
    pub async fn sync_with_backend(&self, org: Option<&str>) {
        let listed = match self.backend.list_sessions(org).await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(%err, "cannot list backend sessions; answering from the registry");
                return;
            }
        };
        let running: std::collections::HashSet<String> = listed
            .iter()
            .filter(|s| s.running)
            .map(|s| s.session_id.clone())
            .collect();
        for entry in self.registry.list(org) {
            if !running.contains(&entry.session_id) && !self.registry.is_creating(&entry.session_id)
            {
                self.registry.remove(&entry.session_id);
            }
        }
        let new: Vec<_> = listed
            .into_iter()
            .filter(|s| {
                s.running
                    && !self.registry.contains(&s.session_id)
                    && !self.registry.is_creating(&s.session_id)
            })
            .collect();
        if new.is_empty() {
            return;
        }
        let claimed = self.claimed_sessions().await;
        for session in new {
            if self.needs_claim(&claimed, &session.session_id) {
                self.adopt_claim(&session).await;
            }
            self.adopt(session).await;
        }
    }

    /// Drops the registry entry when the backend says the session's compute is definitely gone.
    /// Returns whether it was gone.
    pub async fn evict_if_gone(&self, session_id: &str) -> bool {
        match self.backend.session_exists(session_id).await {
            Ok(false) => {
                if self.registry.remove(session_id).is_some() {
                    tracing::info!(
                        session_id,
                        "session gone from the backend; dropped from the registry"
                    );
                }
                true
            }
            Ok(true) => false,
            Err(err) => {
                tracing::warn!(session_id, %err, "backend could not say whether the session exists");
                false
            }
        }
    }

    /// Refreshes the sessions gauge.
    pub fn refresh_gauge(&self) {
        let counts = self.registry.state_counts();
        for state in [
            SessionState::Ready,
            SessionState::Degraded,
            SessionState::Creating,
        ] {
            let label = state.as_str();
            self.metrics
                .sessions
                .get_or_create(&super::metrics::Metrics::label("state", label))
                .set(*counts.get(&state).unwrap_or(&0) as i64);
        }
    }
}

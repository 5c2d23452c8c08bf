//! The session registry: a cache of what the backend says exists, with this replica's exec proxies.
//! It is never the truth — `GET` re-checks the backend, boot re-adopts from it — so losing it (a
//! restart, a crash) loses nothing but the in-flight SSE proxies, which clients re-attach.
use crate::modes::spawner::runnerd_client::RunnerdClient;
use crate::shared::protocol::spawner::{Profile, SessionInfo, SessionState};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// One registered session.
#[derive(Clone)]
pub struct SessionEntry {
    pub session_id: String,
    pub organization_id: String,
    pub profile: Profile,
    pub state: SessionState,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub idle_timeout_ms: u64,
    pub last_activity_at_ms: u64,
    pub pinned: bool,
    pub runnerd: RunnerdClient,
}

impl SessionEntry {
    pub fn info(&self, backend: &str) -> SessionInfo {
        SessionInfo {
            session_id: self.session_id.clone(),
            organization_id: self.organization_id.clone(),
            profile: self.profile,
            state: self.state,
            backend: backend.to_owned(),
            created_at_ms: self.created_at_ms,
            last_activity_at_ms: self.last_activity_at_ms,
            expires_at_ms: self.expires_at_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            pinned: self.pinned,
            reachable: Default::default(),
        }
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, SessionEntry>,
    /// Creates in flight on this replica: session → organization.
    creating: HashMap<String, String>,
    /// Exec proxies running on this replica: session → exec ids → the proxy task.
    proxies: HashMap<String, HashMap<String, tokio::task::AbortHandle>>,
}

/// Why a create may not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Duplicate,
    BeingCreated,
    SpawnerFull,
    OrgFull,
}

/// The registry.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// One lock per session id, held across create, stop and destroy so that a sweep stopping an
    /// old incarnation can never tear down the one a concurrent create is starting.
    lifecycle: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    /// Waits for exclusive lifecycle rights on `id`.
    pub async fn lifecycle(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
            locks.entry(id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `id` for a create, checking duplicates and — when `caps` is given (the backend
    /// does not arbitrate them) — both caps, in-flight creates included, under one lock.
    pub fn admit(&self, id: &str, org: &str, caps: Option<(u64, u64)>) -> Result<(), Admission> {
        let mut inner = self.lock();
        if inner.sessions.contains_key(id) {
            return Err(Admission::Duplicate);
        }
        if inner.creating.contains_key(id) {
            return Err(Admission::BeingCreated);
        }
        if let Some((max_sessions, max_per_org)) = caps {
            let total = inner.sessions.len() + inner.creating.len();
            if total as u64 >= max_sessions {
                return Err(Admission::SpawnerFull);
            }
            let in_org = inner
                .sessions
                .values()
                .map(|s| &s.organization_id)
                .chain(inner.creating.values())
                .filter(|o| *o == org)
                .count();
            if in_org as u64 >= max_per_org {
                return Err(Admission::OrgFull);
            }
        }
        inner.creating.insert(id.to_owned(), org.to_owned());
        Ok(())
    }

    /// Ends a create reservation, registering the entry when it succeeded.
    pub fn finish_create(&self, id: &str, entry: Option<SessionEntry>) {
        let mut inner = self.lock();
        inner.creating.remove(id);
        if let Some(entry) = entry {
            inner.sessions.insert(id.to_owned(), entry);
        }
    }

    /// Whether a create of `id` is in flight on this replica.
    pub fn is_creating(&self, id: &str) -> bool {
        self.lock().creating.contains_key(id)
    }

    pub fn insert(&self, entry: SessionEntry) {
        self.lock().sessions.insert(entry.session_id.clone(), entry);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().sessions.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<SessionEntry> {
        self.lock().sessions.get(id).cloned()
    }

    /// Removes an entry and aborts its exec proxies.
    pub fn remove(&self, id: &str) -> Option<SessionEntry> {
        let mut inner = self.lock();
        if let Some(proxies) = inner.proxies.remove(id) {
            proxies.values().for_each(tokio::task::AbortHandle::abort);
        }
        inner.sessions.remove(id)
    }

    pub fn update(&self, id: &str, change: impl FnOnce(&mut SessionEntry)) -> Option<SessionEntry> {
        let mut inner = self.lock();
        let entry = inner.sessions.get_mut(id)?;
        change(entry);
        Some(entry.clone())
    }

    pub fn list(&self, org: Option<&str>) -> Vec<SessionEntry> {
        let mut out: Vec<SessionEntry> = self
            .lock()
            .sessions
            .values()
            .filter(|s| org.is_none_or(|o| s.organization_id == o))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        out
    }

    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts by state, for the metrics gauge.
    pub fn state_counts(&self) -> HashMap<SessionState, usize> {
        let mut counts = HashMap::new();
        for entry in self.lock().sessions.values() {
            *counts.entry(entry.state).or_insert(0) += 1;
        }
        counts
    }

    pub fn add_proxy(&self, session: &str, exec: &str, handle: tokio::task::AbortHandle) {
        self.lock()
            .proxies
            .entry(session.to_owned())
            .or_default()
            .insert(exec.to_owned(), handle);
    }

    pub fn remove_proxy(&self, session: &str, exec: &str) {
        let mut inner = self.lock();
        if let Some(map) = inner.proxies.get_mut(session) {
            map.remove(exec);
            if map.is_empty() {
                inner.proxies.remove(session);
            }
        }
    }

    /// Exec proxies of a session running on this replica.
    pub fn proxy_count(&self, session: &str) -> usize {
        self.lock().proxies.get(session).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, org: &str) -> SessionEntry {
        SessionEntry {
            session_id: id.into(),
            organization_id: org.into(),
            profile: Profile::Default,
            state: SessionState::Ready,
            created_at_ms: 1,
            expires_at_ms: 2,
            idle_timeout_ms: 3,
            last_activity_at_ms: 1,
            pinned: false,
            runnerd: RunnerdClient::new("http://127.0.0.1:1", "t"),
        }
    }

    /// Duplicates, in-flight creates and both caps are refused under one lock.
    #[tokio::test]
    async fn admission_rules() {
        let caps = Some((3, 2));
        let registry = Registry::default();
        registry.admit("a", "o", caps).unwrap();
        assert_eq!(registry.admit("a", "o", caps), Err(Admission::BeingCreated));
        registry.finish_create("a", Some(entry("a", "o")));
        assert_eq!(registry.admit("a", "o", caps), Err(Admission::Duplicate));
        registry.insert(entry("b", "o"));
        assert_eq!(registry.admit("c", "o", caps), Err(Admission::OrgFull));
        registry.admit("c", "p", caps).unwrap();
        assert_eq!(registry.admit("d", "q", caps), Err(Admission::SpawnerFull));
        registry.finish_create("c", None);
        assert!(!registry.contains("c"));
        assert_eq!(registry.list(Some("o")).len(), 2);
    }

    /// Creates in flight count against their organization's cap: with a cap of 2, a third
    /// concurrent create for the org is refused before any finishes (it was admitted before).
    #[tokio::test]
    async fn in_flight_creates_count_per_org() {
        let caps = Some((100, 2));
        let registry = Registry::default();
        registry.admit("a", "o", caps).unwrap();
        registry.admit("b", "o", caps).unwrap();
        assert_eq!(registry.admit("c", "o", caps), Err(Admission::OrgFull));
        registry.admit("c", "p", caps).unwrap();
        registry.finish_create("a", None);
        registry.admit("d", "o", caps).unwrap();
    }

    /// Without caps (the backend arbitrates them) only duplicates are refused here.
    #[tokio::test]
    async fn backend_arbitrated_caps_skip_counting() {
        let registry = Registry::default();
        registry.insert(entry("a", "o"));
        registry.admit("b", "o", None).unwrap();
        assert_eq!(registry.admit("b", "o", None), Err(Admission::BeingCreated));
        assert_eq!(registry.admit("a", "o", None), Err(Admission::Duplicate));
    }
}

//! The local cache of session Pods that the replica's watch keeps (see `watch`): once the first
//! list is in and while the watch delivers, the backend answers list, get and exists from here
//! and waits here — on watch events, not on a polling loop — for a starting Pod's IP or an ended
//! Pod's removal. When the watch is failing the cache reports itself stale and the backend asks
//! the API server directly instead.
use super::super::names::Found;
use super::super::ListedSession;
use super::manifests::{org_hash, ANNOTATION_ORGANIZATION_ID, ORG_HASH_LABEL};
use super::{ownership, status};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Whether the watch behind the cache is current, and a signal at every change it applies.
pub struct CacheHealth {
    listed_once: AtomicBool,
    failed_once: AtomicBool,
    fresh: AtomicBool,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for CacheHealth {
    fn default() -> Self {
        CacheHealth {
            listed_once: AtomicBool::new(false),
            failed_once: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl CacheHealth {
    /// A (re)list completed: the store holds every session Pod.
    pub fn listed(&self) {
        self.listed_once.store(true, Ordering::SeqCst);
        self.fresh.store(true, Ordering::SeqCst);
        self.bump();
    }

    /// A watch event was applied.
    pub fn delivered(&self) {
        if self.listed_once.load(Ordering::SeqCst) {
            self.fresh.store(true, Ordering::SeqCst);
        }
        self.bump();
    }

    /// The watch failed: what the store holds may be behind until it delivers again.
    pub fn failed(&self) {
        self.failed_once.store(true, Ordering::SeqCst);
        self.fresh.store(false, Ordering::SeqCst);
        self.bump();
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// How a wait on the cache ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<T> {
    Done(T),
    TimedOut,
    /// The watch is not current: ask the API server instead.
    Stale,
}

/// The read side of the session Pod cache.
#[derive(Clone)]
pub struct PodCache {
    store: Store<Pod>,
    health: Arc<CacheHealth>,
    namespace: String,
}

impl PodCache {
    pub fn new(store: Store<Pod>, health: Arc<CacheHealth>, namespace: &str) -> PodCache {
        PodCache {
            store,
            health,
            namespace: namespace.to_owned(),
        }
    }

    /// Listed at least once and no watch failure since the last delivery.
    pub fn is_fresh(&self) -> bool {
        self.health.fresh.load(Ordering::SeqCst)
    }

    /// While the watch's first list is under way (no list and no failure yet), waits for it up
    /// to `deadline`, so a caller at boot reads the cache rather than listing a second time.
    pub async fn first_list(&self, deadline: Instant) {
        let mut changes = self.health.changes.subscribe();
        loop {
            changes.borrow_and_update();
            if self.health.listed_once.load(Ordering::SeqCst)
                || self.health.failed_once.load(Ordering::SeqCst)
            {
                return;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }

    /// The cached Pod `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Pod>> {
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// The sessions of the cached Pods (optionally of one organization: by its label, or — for a
    /// Pod from a release without the label — by its annotation); `None` when stale.
    pub fn sessions(&self, organization_id: Option<&str>) -> Option<Vec<ListedSession>> {
        if !self.is_fresh() {
            return None;
        }
        let wanted = organization_id.map(|org| (org, org_hash(org)));
        let mut sessions: Vec<ListedSession> = self
            .store
            .state()
            .iter()
            .filter(|pod| {
                wanted
                    .as_ref()
                    .is_none_or(|(org, hash)| of_org(pod, org, hash))
            })
            .filter_map(|pod| status::listed_session(pod))
            .collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Some(sessions)
    }

    /// The session's own Pod as cached (`Some(None)`: none, or another session's); `None` when
    /// stale.
    pub fn session_pod(&self, session_id: &str) -> Option<Option<Pod>> {
        if !self.is_fresh() {
            return None;
        }
        for (index, base) in ownership::base_names(session_id).into_iter().enumerate() {
            let Some(pod) = self.get(&base) else {
                continue;
            };
            match ownership::judge_object("Pod", &base, (*pod).clone(), index, (session_id, None)) {
                Some(Found::Ours { object, .. }) => return Some(Some(object)),
                Some(_) => return Some(None),
                None => continue,
            }
        }
        Some(None)
    }

    /// Waits until `check` answers for the cached Pod `name` (re-asked at every change the watch
    /// applies), or `deadline`.
    pub async fn wait_for<T>(
        &self,
        name: &str,
        deadline: Instant,
        mut check: impl FnMut(Option<&Pod>) -> Option<T>,
    ) -> Waited<T> {
        let mut changes = self.health.changes.subscribe();
        loop {
            if !self.is_fresh() {
                return Waited::Stale;
            }
            changes.borrow_and_update();
            if let Some(answer) = check(self.get(name).as_deref()) {
                return Waited::Done(answer);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Waited::Stale,
                Err(_) => return Waited::TimedOut,
            }
        }
    }
}

/// Whether a Pod is the organization's: its label says so (and its annotation agrees), or it has
/// no label (an older release) and its annotation says so.
fn of_org(pod: &Pod, org: &str, hash: &str) -> bool {
    let meta = &pod.metadata;
    let annotated = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ORGANIZATION_ID))
        .is_some_and(|o| o == org);
    match meta.labels.as_ref().and_then(|l| l.get(ORG_HASH_LABEL)) {
        Some(label) => label == hash && annotated,
        None => annotated,
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifests::fixtures::{config, spec};
    use super::super::manifests::{self, ANNOTATION_SESSION_ID, SESSION_LABEL};
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn cache_with(pods: &[Pod]) -> (PodCache, reflector::store::Writer<Pod>, Arc<CacheHealth>) {
        let (store, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&Event::Init);
        for pod in pods {
            writer.apply_watcher_event(&Event::InitApply(pod.clone()));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let health = Arc::new(CacheHealth::default());
        let cache = PodCache::new(store, health.clone(), "tale-sandbox");
        (cache, writer, health)
    }

    fn session_pod(id: &str, org: &str, with_label: bool) -> Pod {
        let mut spec = spec();
        spec.session_id = id.into();
        spec.organization_id = org.into();
        let mut pod = manifests::pod(&spec, &config());
        pod.metadata.namespace = Some("tale-sandbox".into());
        if !with_label {
            pod.metadata.labels.as_mut().unwrap().remove(ORG_HASH_LABEL);
        }
        pod
    }

    /// Until the first list is in, and after a watch failure, the cache answers nothing (the
    /// backend then asks the API server); a delivery makes it current again.
    #[test]
    fn stale_until_listed_and_after_a_failure() {
        let (cache, _writer, health) = cache_with(&[session_pod("a", "o", true)]);
        assert_eq!(cache.sessions(None), None, "never listed");
        health.listed();
        assert_eq!(cache.sessions(None).unwrap().len(), 1);
        health.failed();
        assert_eq!(cache.session_pod("a"), None);
        health.delivered();
        assert!(cache.session_pod("a").unwrap().is_some());
    }

    /// The organization filter takes labelled Pods by their label and unlabelled ones (an older
    /// release) by their annotation; a label that disagrees with the annotation is not trusted.
    #[test]
    fn organization_by_label_or_annotation() {
        let mut forged = session_pod("c", "other", true);
        forged
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(ORG_HASH_LABEL.into(), org_hash("o"));
        let (cache, _writer, health) = cache_with(&[
            session_pod("a", "o", true),
            session_pod("b", "o", false),
            forged,
            session_pod("d", "p", true),
        ]);
        health.listed();
        let ids = |org| {
            cache
                .sessions(Some(org))
                .unwrap()
                .into_iter()
                .map(|s| s.session_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("o"), ["a", "b"]);
        assert_eq!(ids("p"), ["d"]);
        assert_eq!(cache.sessions(None).unwrap().len(), 4);
    }

    /// A wait ends at the change that answers it, times out at its deadline (paused time), and
    /// stops as stale when the watch fails.
    #[tokio::test(start_paused = true)]
    async fn waits_follow_watch_events() {
        let (cache, mut writer, health) = cache_with(&[]);
        health.listed();
        let pod = session_pod("a", "o", true);
        let name = pod.metadata.name.clone().unwrap();
        let waiter = {
            let (cache, name) = (cache.clone(), name.clone());
            tokio::spawn(async move {
                cache
                    .wait_for(
                        &name,
                        Instant::now() + std::time::Duration::from_secs(60),
                        |p| {
                            p.map(|p| {
                                p.metadata.annotations.as_ref().unwrap()[ANNOTATION_SESSION_ID]
                                    .clone()
                            })
                        },
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        writer.apply_watcher_event(&Event::Apply(pod));
        health.delivered();
        assert_eq!(waiter.await.unwrap(), Waited::Done("a".to_owned()));
        let started = Instant::now();
        let timed_out = cache
            .wait_for(
                "nothing",
                Instant::now() + std::time::Duration::from_secs(3),
                |p| p.map(|_| ()),
            )
            .await;
        assert_eq!(timed_out, Waited::TimedOut);
        assert!(started.elapsed() >= std::time::Duration::from_secs(3));
        health.failed();
        let stale = cache
            .wait_for(
                &name,
                Instant::now() + std::time::Duration::from_secs(3),
                |_| None::<()>,
            )
            .await;
        assert_eq!(stale, Waited::Stale);
        assert!(pod_labels_select_sessions());
    }

    fn pod_labels_select_sessions() -> bool {
        let pod = session_pod("a", "o", true);
        pod.metadata
            .labels
            .unwrap()
            .get(SESSION_LABEL)
            .map(String::as_str)
            == Some("1")
    }
}

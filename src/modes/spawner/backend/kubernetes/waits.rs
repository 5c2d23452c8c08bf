//! The backend's waits and reads on the watch cache: a starting Pod's IP (or why it will not
//! start), an ended Pod's removal, a live session's Pod, the session list. Each answers `None`
//! when the watch is stale, and the caller asks the API server instead (paginated, with the
//! organization selected by its label on the server).
use super::super::{BackendError, BackendResult, ListedSession};
use super::cache::Waited;
use super::manifests::{self, org_hash, ORG_HASH_LABEL, SESSION_LABEL};
use super::{api, start_wait, status, watch, KubernetesBackend};
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

impl KubernetesBackend {
    /// The IP of the session's new Pod (uid `uid`) from watch events, failing as soon as an event
    /// shows it cannot start or it vanished, and (at most every `EVENT_READ_INTERVAL`) when a
    /// transient start error outlived its own deadline (`watch` judges); `None` when the watch is
    /// stale.
    pub(super) async fn wait_for_ip_on_watch(
        &self,
        session_id: &str,
        uid: Option<&str>,
        deadline: Instant,
        watch: &mut start_wait::StartWatch,
    ) -> Option<BackendResult<String>> {
        let name = manifests::pod_name(session_id);
        let started = Instant::now();
        let mut seen = false;
        let mut last: Option<Pod> = None;
        loop {
            let slice = deadline.min(Instant::now() + start_wait::EVENT_READ_INTERVAL);
            let waited = self
                .cache
                .wait_for(&name, slice, |pod| {
                    // A cached Pod of another uid is an older incarnation, not this one.
                    let pod = pod.filter(|p| uid.is_none() || p.metadata.uid.as_deref() == uid);
                    let Some(pod) = pod else {
                        return seen.then(|| {
                            Err(BackendError::Died(
                                "the session Pod disappeared while starting".into(),
                            ))
                        });
                    };
                    seen = true;
                    last = Some(pod.clone());
                    if let Some(reason) = status::start_failure(pod) {
                        return Some(Err(BackendError::Died(reason)));
                    }
                    status::pod_ip(pod).map(|ip| Ok(ip.to_owned()))
                })
                .await;
            match waited {
                Waited::Done(answer) => return Some(answer),
                Waited::Stale => return None,
                Waited::TimedOut if Instant::now() < deadline => {
                    if let Some(pod) = &last {
                        if let Err(err) = watch.check(pod).await {
                            return Some(Err(err));
                        }
                    }
                }
                Waited::TimedOut => {
                    return Some(Err(BackendError::NotReady {
                        waited_ms: started.elapsed().as_millis() as u64,
                        detail: format!(
                            "the Pod {name} got no IP: {}",
                            last.as_ref()
                                .map_or("the Pod was not seen yet".into(), status::pending_detail)
                        ),
                    }))
                }
            }
        }
    }

    /// Whether the cached Pod `name` shows a start failure (`Err` with the reason); `None` when
    /// the watch is stale or does not hold the Pod (then the API server is asked).
    pub(super) fn start_failure_on_watch(&self, name: &str) -> Option<Result<(), String>> {
        if !self.cache.is_fresh() {
            return None;
        }
        let pod = self.cache.get(name)?;
        Some(status::start_failure(&pod).map_or(Ok(()), Err))
    }

    /// Waits for the removal of Pod `name` from watch events: `Some(true)` gone, `Some(false)`
    /// still there at `deadline`, `None` when the watch is stale or never held the Pod (its
    /// absence from the cache would then prove nothing).
    /// Gone means no Pod of the name, or one with another uid than `uid` (a newer incarnation).
    pub(super) async fn wait_gone_on_watch(
        &self,
        name: &str,
        uid: Option<&str>,
        deadline: Instant,
    ) -> Option<bool> {
        if !self.cache.is_fresh() || self.cache.get(name).is_none() {
            return None;
        }
        match self
            .cache
            .wait_for(name, deadline, |pod| {
                pod.is_none_or(|pod| pod.metadata.uid.as_deref() != uid)
                    .then_some(())
            })
            .await
        {
            Waited::Done(()) => Some(true),
            Waited::TimedOut => Some(false),
            Waited::Stale => None,
        }
    }

    /// The session's own Pod: from the cache, or (stale watch) from the API server.
    pub(super) async fn read_pod(&self, session_id: &str) -> BackendResult<Option<Pod>> {
        if let Some(pod) = self.cache.session_pod(session_id) {
            return Ok(pod);
        }
        Ok(match self.find_pod(session_id, None).await? {
            super::Found::Ours { object, .. } => Some(object),
            super::Found::Absent | super::Found::Foreign { .. } => None,
        })
    }

    /// Every session with a Pod (optionally of one organization): from the cache, or (stale
    /// watch) from paginated LISTs selecting the organization by its label — plus, for Pods of a
    /// release without that label, by their annotation.
    pub(super) async fn sessions(
        &self,
        organization_id: Option<&str>,
    ) -> BackendResult<Vec<ListedSession>> {
        self.cache
            .first_list(Instant::now() + watch::FIRST_LIST_WAIT)
            .await;
        if let Some(sessions) = self.cache.sessions(organization_id) {
            return Ok(sessions);
        }
        let page = self.list_page_size;
        let list = |selector: String| async move {
            watch::list_paginated(&self.pods, &selector, page)
                .await
                .map_err(api("cannot list session Pods"))
        };
        let pods = match organization_id {
            None => list(watch::session_selector()).await?,
            Some(org) => {
                let mut pods = list(format!(
                    "{SESSION_LABEL}=1,{ORG_HASH_LABEL}={}",
                    org_hash(org)
                ))
                .await?;
                pods.extend(list(format!("{SESSION_LABEL}=1,!{ORG_HASH_LABEL}")).await?);
                pods
            }
        };
        let mut sessions: Vec<ListedSession> = pods
            .iter()
            .filter_map(status::listed_session)
            .filter(|s| organization_id.is_none_or(|org| s.organization_id == org))
            .collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(sessions)
    }
}

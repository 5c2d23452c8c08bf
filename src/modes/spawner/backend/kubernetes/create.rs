//! A session's create, with one deadline shared by every wait: the workspace PVC (a resume when it
//! is the session's own; a Terminating one is waited out, never resumed), the Secret (the create's
//! lock against same-id races on other replicas), the Pod and the Secret's owner reference to it,
//! the Pod's IP (on the watch, transient start errors judged by `start_wait`), runnerd's `/healthz`.
//! A failed create removes only what it made, by uid.
use super::super::names::Found;
use super::super::{wait_for_runnerd, BackendError, BackendResult, SessionSpec};
use super::races::{uid_precondition, Made};
use super::{
    api, is_conflict, is_not_found, manifests, owner_mismatch, ownership, placement,
    poll_with_backoff, start_wait, status, KubernetesBackend, POD_POLL_FIRST_INTERVAL,
    POD_POLL_MAX_INTERVAL,
};
use crate::modes::spawner::limits::CREATE_IN_FLIGHT_GRACE;
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::time::Instant;

impl KubernetesBackend {
    /// Ensures the workspace PVC: the session's own under its current or legacy name, else a new
    /// one under the current name. Returns its name and whether it existed before (a resume);
    /// someone else's PVC in the way is refused.
    async fn ensure_workspace(
        &self,
        spec: &SessionSpec,
        deadline: Instant,
        made: &mut Made,
    ) -> BackendResult<(String, bool)> {
        let id = &spec.session_id;
        let org = Some(spec.organization_id.as_str());
        let name = manifests::pvc_name(id);
        match self.find_pvc(id, org).await {
            Ok(Found::Ours { name, object }) if object.metadata.deletion_timestamp.is_some() => {
                // A destroy's PVC, not a resume: wait until it is gone, then make a new one.
                self.wait_pvc_gone(id, &name, deadline).await?;
            }
            Ok(Found::Ours { name, .. }) => {
                self.record_compute(&name, manifests::COMPUTE_RUNNING, Some(spec))
                    .await?;
                return Ok((name, true));
            }
            Ok(Found::Foreign { name }) => return Err(owner_mismatch("PVC", &name, id)),
            Ok(Found::Absent) => {}
            Err(err) => {
                // Unknown: the create below (409) tells; a failed create then keeps the PVC.
                tracing::warn!(session_id = %id, %err, "cannot read the workspace PVC; creating it");
            }
        }
        match self
            .pvcs
            .create(
                &PostParams::default(),
                &manifests::pvc(spec, &self.manifests),
            )
            .await
        {
            Ok(created) => {
                made.pvc = created.metadata.uid;
                Ok((name, false))
            }
            // Made in between (or unreadable above): ours only if its annotations say so.
            Err(err) if is_conflict(&err) => match self.pvcs.get_opt(&name).await {
                Ok(Some(pvc)) => match ownership::judge_object("PVC", &name, pvc, 0, (id, org)) {
                    Some(Found::Ours { object, .. })
                        if object.metadata.deletion_timestamp.is_some() =>
                    {
                        Err(BackendError::Engine(format!(
                            "the workspace PVC {name} of session {id} is being deleted; retry the create once it is gone"
                        )))
                    }
                    Some(Found::Ours { .. }) => {
                        self.record_compute(&name, manifests::COMPUTE_RUNNING, Some(spec))
                            .await?;
                        Ok((name, true))
                    }
                    _ => Err(owner_mismatch("PVC", &name, id)),
                },
                Ok(None) => Err(BackendError::Engine(format!(
                    "the workspace PVC {name} conflicted and then vanished; retry the create"
                ))),
                Err(err) => Err(api("cannot read the workspace PVC")(err)),
            },
            Err(err) => Err(api("cannot create the workspace PVC")(err)),
        }
    }

    /// Waits (bounded by `deadline`) until the Terminating PVC `name` is gone.
    async fn wait_pvc_gone(&self, id: &str, name: &str, deadline: Instant) -> BackendResult<()> {
        tracing::info!(
            session_id = id,
            pvc = name,
            "workspace PVC is being deleted; waiting for it before creating a new one"
        );
        poll_with_backoff(deadline, || async {
            match self.pvcs.get_opt(name).await {
                Ok(pvc) => Ok(pvc.is_none().then_some(())),
                Err(err) => Err(api("cannot read the workspace PVC")(err)),
            }
        })
        .await?
        .ok_or_else(|| {
            BackendError::Engine(format!(
                "the workspace PVC {name} of session {id} is still being deleted (Terminating); it is not resumed — retry the create once it is gone"
            ))
        })
    }

    /// Creates the Secret (recording its uid in `made`). The Secret is the create's lock: a
    /// Secret already there belongs to a live Pod (see `live_pod_refusal`), to a create in flight
    /// on another replica (younger than `in_flight`: `CreateInProgress`, nothing touched), or to a
    /// create that died (an orphan: replaced once, deleted only under its uid so a fresh one is
    /// never hit).
    async fn create_secret(
        &self,
        spec: &SessionSpec,
        in_flight: Duration,
        made: &mut Made,
    ) -> BackendResult<()> {
        let secret = manifests::secret(spec, &self.manifests);
        let name = manifests::secret_name(&spec.session_id);
        for attempt in 0..2 {
            match self.secrets.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    made.secret = created.metadata.uid;
                    return Ok(());
                }
                Err(err) if is_conflict(&err) && attempt == 0 => {
                    let pod = self
                        .pods
                        .get_opt(&manifests::pod_name(&spec.session_id))
                        .await
                        .map_err(api("cannot read the session Pod"))?;
                    if let Some(pod) = pod.filter(|p| !status::is_terminal(p)) {
                        return Err(self.live_pod_refusal(spec, &pod, in_flight).await);
                    }
                    let Some(existing) = self
                        .secrets
                        .get_opt(&name)
                        .await
                        .map_err(api("cannot read the session Secret"))?
                    else {
                        continue;
                    };
                    if let Some(left) = ownership::time_left(&existing.metadata, in_flight) {
                        return Err(BackendError::CreateInProgress {
                            session_id: spec.session_id.clone(),
                            retry_after: left.max(Duration::from_secs(1)),
                        });
                    }
                    let uid = existing.metadata.uid.clone();
                    match self.secrets.delete(&name, &uid_precondition(uid)).await {
                        Ok(_) => {}
                        Err(err) if is_not_found(&err) || is_conflict(&err) => {}
                        Err(err) => {
                            return Err(api("cannot replace the orphan session Secret")(err))
                        }
                    }
                }
                Err(err) => return Err(api("cannot create the session Secret")(err)),
            }
        }
        Err(BackendError::Exists(spec.session_id.clone()))
    }

    /// Waits for the Pod's IP (on the watch; polling when the watch is stale); fails when it
    /// cannot start (`watch` judges transient errors against their own deadlines).
    async fn wait_for_ip(
        &self,
        session_id: &str,
        uid: Option<&str>,
        deadline: Instant,
        watch: &mut start_wait::StartWatch,
    ) -> BackendResult<String> {
        if let Some(answer) = self
            .wait_for_ip_on_watch(session_id, uid, deadline, watch)
            .await
        {
            return answer;
        }
        let name = manifests::pod_name(session_id);
        let started = Instant::now();
        let mut interval = POD_POLL_FIRST_INTERVAL;
        loop {
            let pod = self
                .pods
                .get_opt(&name)
                .await
                .map_err(api("cannot read the session Pod"))?
                .ok_or_else(|| {
                    BackendError::Died("the session Pod disappeared while starting".into())
                })?;
            watch.check(&pod).await?;
            if let Some(ip) = status::pod_ip(&pod) {
                return Ok(ip.to_owned());
            }
            if Instant::now() + interval > deadline {
                return Err(BackendError::NotReady {
                    waited_ms: started.elapsed().as_millis() as u64,
                    detail: format!("the Pod {name} got no IP: {}", status::pending_detail(&pod)),
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(POD_POLL_MAX_INTERVAL);
        }
    }

    /// Secret, Pod (on the workspace PVC `claim`), IP, runnerd: everything after the workspace.
    async fn start(
        &self,
        spec: &SessionSpec,
        claim: &str,
        deadline: Instant,
        in_flight: Duration,
        made: &mut Made,
    ) -> BackendResult<String> {
        self.create_secret(spec, in_flight, made).await?;
        crate::modes::spawner::test_hooks::pause_at("before_start").await;
        let created = match self
            .pods
            .create(
                &PostParams::default(),
                &placement::session_pod(spec, &self.manifests, &self.placements, claim),
            )
            .await
        {
            Ok(pod) => {
                made.pod = pod.metadata.uid.clone();
                // The Secret goes with the Pod however the Pod goes.
                self.own_secret(&spec.session_id, &pod).await?;
                pod
            }
            // Someone created it since the check: theirs, and so is the Secret now.
            Err(err) if is_conflict(&err) => {
                return Err(BackendError::Exists(spec.session_id.clone()))
            }
            Err(err) => return Err(api("cannot create the session Pod")(err)),
        };
        let mut watch = start_wait::StartWatch::new(
            Api::namespaced(self.client.clone(), &self.manifests.namespace),
            self.heal_settings,
        );
        let ip = self
            .wait_for_ip(
                &spec.session_id,
                created.metadata.uid.as_deref(),
                deadline,
                &mut watch,
            )
            .await?;
        let url = status::runnerd_url(&ip, self.manifests.runnerd_port);
        let name = manifests::pod_name(&spec.session_id);
        // The Pod has its IP before its image is pulled: pull errors keep their deadline here.
        let watch = std::sync::Arc::new(tokio::sync::Mutex::new(watch));
        let mut last_check = Instant::now();
        let remaining = deadline.saturating_duration_since(Instant::now());
        wait_for_runnerd(&url, spec, remaining, || {
            // A fatal reason on the watch answers at once; transient ones (pulls) are judged by
            // `watch` against their own deadline, on the cached Pod or (stale watch) a fresh read.
            let watched = self.start_failure_on_watch(&name);
            let cached = self
                .cache
                .is_fresh()
                .then(|| self.cache.get(&name))
                .flatten();
            let due = last_check.elapsed() >= POD_POLL_MAX_INTERVAL;
            if due {
                last_check = Instant::now();
            }
            let pods = self.pods.clone();
            let name = name.clone();
            let watch = watch.clone();
            async move {
                if let Some(Err(reason)) = watched {
                    return Err(reason);
                }
                if !due {
                    return Ok(());
                }
                let pod = match cached {
                    Some(pod) => (*pod).clone(),
                    None => match pods.get_opt(&name).await {
                        Ok(Some(pod)) => pod,
                        Ok(None) => return Err("the session Pod disappeared while starting".into()),
                        // Unknown is not dead: the readiness deadline decides.
                        Err(_) => return Ok(()),
                    },
                };
                watch
                    .lock()
                    .await
                    .check(&pod)
                    .await
                    .map_err(|err| match err {
                        BackendError::Died(reason) => reason,
                        other => other.to_string(),
                    })
            }
        })
        .await?;
        Ok(url)
    }

    pub(super) async fn create(
        &self,
        spec: &SessionSpec,
        budget: Duration,
    ) -> BackendResult<String> {
        Self::validate(spec)?;
        let deadline = Instant::now() + budget;
        let id = &spec.session_id;
        let mut made = Made::named(id);
        // A Secret or Pod younger than this is another replica's create of the same id, in flight.
        let in_flight = budget + CREATE_IN_FLIGHT_GRACE;
        match self.find_pod(id, Some(&spec.organization_id)).await? {
            Found::Foreign { name } => return Err(owner_mismatch("Pod", &name, id)),
            Found::Ours { name, object } => {
                if !status::is_terminal(&object) {
                    return Err(self.live_pod_refusal(spec, &object, in_flight).await);
                }
                self.reap(id, &name, &object, deadline).await?;
            }
            Found::Absent => {}
        }
        let (claim, preexisting) = self.ensure_workspace(spec, deadline, &mut made).await?;
        match self
            .start(spec, &claim, deadline, in_flight, &mut made)
            .await
        {
            Ok(url) => {
                tracing::info!(session_id = %id, %url, %claim, resumed = preexisting, "kubernetes session ready");
                Ok(url)
            }
            // Another create of the id owns the objects now (a PVC this create made included).
            Err(
                err @ (BackendError::Exists(_)
                | BackendError::CreateInProgress { .. }
                | BackendError::OwnerMismatch { .. }),
            ) => Err(err),
            Err(err) => {
                // A failed resume (or heal) leaves the session stopped, never healed again by
                // itself: a create resumes it. Only what this create made goes (a pre-existing
                // workspace never does).
                let stopped = if preexisting {
                    self.record_compute(&claim, manifests::COMPUTE_STOPPED, None)
                        .await
                } else {
                    Ok(())
                };
                if let Err(cleanup) = stopped.and(self.remove_made(&made).await) {
                    tracing::warn!(session_id = %id, %cleanup, "cleanup after a failed create did not finish");
                }
                Err(err)
            }
        }
    }
}

//! Sessions heal: a session Pod has no controller, so the spawner is its controller. A session whose
//! workspace PVC says its compute should run (`tale.dev/compute: running`) but whose Pod ended
//! (evicted, failed), vanished (deleted by a drain, garbage-collected) or was lost with its node is
//! brought back on the same PVC: the create path runs again with the session's recorded profile,
//! creation time and limits. What was seeded at create (env) is not there afterwards; runnerd's
//! seed record says so and the session reads `degraded`.
//!
//! A Pod on a node that stopped reporting is replaced only once its volume cannot be written by
//! that node any more: the node must be not-Ready for `SANDBOX_K8S_NODE_LOST_TIMEOUT_MS` and carry
//! the `node.kubernetes.io/out-of-service` taint (an operator's statement that it is shut down,
//! which also makes Kubernetes detach its volumes), or the workspace volume's VolumeAttachment to
//! that node must be gone. Then the old Pod is force-deleted (grace 0).
//! Until then an access is answered 503 `session_unreachable` with what is missing.
//!
//! Stopping records `tale.dev/compute: stopped` first, so a stopped session is never healed; a
//! resume records `running` again with the session's new record.
use super::super::names::Found;
use super::super::{BackendError, BackendResult, Healed, ListedSession, SessionSpec};
use super::{api, is_not_found, manifests, status, KubernetesBackend};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use std::time::Duration;

/// The taint an operator puts on a node known to be shut down (non-graceful node shutdown).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// What the spawner knows of the node a session Pod runs on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NodeState {
    /// Reporting, or the Pod is on no node yet.
    Healthy,
    /// Not Ready for `lost_for`; `out_of_service` when tainted so.
    Lost {
        lost_for: Duration,
        out_of_service: bool,
    },
}

/// Whether a node (as read) is lost, and since when, at `now_ms`.
pub(super) fn node_state(node: &Node, now_ms: i64) -> NodeState {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let Some(ready) = ready.filter(|r| r.status != "True") else {
        return NodeState::Healthy;
    };
    let since_ms = ready
        .last_transition_time
        .as_ref()
        .map_or(now_ms, |t| t.0.as_millisecond());
    let out_of_service = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
    NodeState::Lost {
        lost_for: Duration::from_millis(now_ms.saturating_sub(since_ms).max(0) as u64),
        out_of_service,
    }
}

fn unreachable(session_id: &str, detail: String) -> BackendError {
    BackendError::Unreachable {
        session_id: session_id.to_owned(),
        detail,
    }
}

impl KubernetesBackend {
    /// See the module doc. `Ok(None)`: nothing to heal (no workspace, stopped on purpose, being
    /// deleted, or the Pod is there and not lost).
    pub(super) async fn heal(
        &self,
        session_id: &str,
        spec_for: &(dyn Fn(&ListedSession) -> SessionSpec + Send + Sync),
        budget: Duration,
    ) -> BackendResult<Option<Healed>> {
        let Found::Ours { object: pvc, .. } = self.find_pvc(session_id, None).await? else {
            return Ok(None);
        };
        let wanted = pvc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(manifests::ANNOTATION_COMPUTE))
            .is_some_and(|v| v == manifests::COMPUTE_RUNNING);
        if pvc.metadata.deletion_timestamp.is_some() || !wanted {
            return Ok(None);
        }
        let (session, lost_pod) = match self.find_pod(session_id, None).await? {
            Found::Foreign { .. } => return Ok(None),
            Found::Absent => match status::workspace_session(&pvc) {
                Some(session) => (session, None),
                None => return Ok(None),
            },
            Found::Ours { object: pod, name } => {
                let Some(session) = status::listed_session(&pod) else {
                    return Ok(None);
                };
                if status::is_terminal(&pod) && pod.metadata.deletion_timestamp.is_none() {
                    // Ended (evicted, failed): the create reaps it.
                    (session, None)
                } else if status::ready_status(&pod) == Some("True")
                    || status::pod_ip(&pod).is_none() && pod.metadata.deletion_timestamp.is_none()
                {
                    // Running and ready, or still starting (a create may be under way).
                    return Ok(None);
                } else {
                    (session, Some((name, pod)))
                }
            }
        };
        if let Some((name, pod)) = lost_pod {
            let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref());
            if !self
                .release_lost_pod(session_id, &name, &pod, volume)
                .await?
            {
                return Ok(None);
            }
        }
        tracing::warn!(
            session_id,
            "session compute lost; bringing it back on its kept workspace (degraded until seeded again)"
        );
        let spec = spec_for(&session);
        let endpoint = self.create(&spec, budget).await?;
        Ok(Some(Healed {
            session: ListedSession {
                running: true,
                ..session
            },
            endpoint,
        }))
    }

    /// A Pod that is not ready, or stuck Terminating: on a healthy node a Terminating one is
    /// waited out by the create (`true`) and a not-ready one is left to its kubelet (`false`); on
    /// a lost node it is force-deleted (`true`) once the node is lost long enough and out of
    /// service, else the session is unreachable.
    async fn release_lost_pod(
        &self,
        session_id: &str,
        name: &str,
        pod: &Pod,
        volume: Option<&str>,
    ) -> BackendResult<bool> {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(deleting);
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = match nodes.get_opt(&node_name).await {
            Ok(Some(node)) => node,
            // The Node object was deleted (the node left the cluster): its volumes are detached
            // by the attach/detach controller; Kubernetes' Pod GC removes the Pod too.
            Ok(None) => return self.force_delete(session_id, name).await.map(|()| true),
            Err(err) => {
                return Err(unreachable(
                    session_id,
                    format!(
                        "its Pod {name} is not ready and its node {node_name} cannot be read ({}); \
                         grant the spawner the optional nodes ClusterRole (chart value sessions.nodeAccess) so it can tell a lost node, or wait until Kubernetes removes the Pod of an out-of-service node",
                        super::describe(&err)
                    ),
                ))
            }
        };
        match node_state(&node, crate::shared::clock::now_ms() as i64) {
            NodeState::Healthy => Ok(deleting),
            NodeState::Lost { lost_for, .. } if lost_for < self.heal_settings.node_lost => {
                Err(unreachable(
                    session_id,
                    format!(
                        "its node {node_name} has not been Ready for {} s; the Pod is replaced only after {} s (SANDBOX_K8S_NODE_LOST_TIMEOUT_MS) and once the node is tainted {OUT_OF_SERVICE_TAINT}",
                        lost_for.as_secs(),
                        self.heal_settings.node_lost.as_secs()
                    ),
                ))
            }
            NodeState::Lost {
                out_of_service: false,
                ..
            } if self.detached_from(volume, &node_name).await => {
                tracing::warn!(session_id, pod = name, node = %node_name, "workspace volume detached from the lost node; force-deleting the session's Pod");
                self.force_delete(session_id, name).await.map(|()| true)
            }
            NodeState::Lost {
                out_of_service: false,
                lost_for,
            } => Err(unreachable(
                session_id,
                format!(
                    "its node {node_name} has not been Ready for {} s and may still write the workspace volume; once the node is known to be shut down, taint it: kubectl taint node {node_name} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute",
                    lost_for.as_secs()
                ),
            )),
            NodeState::Lost {
                out_of_service: true,
                ..
            } => {
                tracing::warn!(session_id, pod = name, node = %node_name, "node out of service; force-deleting the session's Pod");
                self.force_delete(session_id, name).await.map(|()| true)
            }
        }
    }

    /// Whether the workspace volume `volume` is known to be detached from `node` (no
    /// VolumeAttachment of it there): the node can no longer write it. Unknown (no volume name,
    /// no right to list VolumeAttachments) is not detached.
    async fn detached_from(&self, volume: Option<&str>, node: &str) -> bool {
        let Some(volume) = volume else {
            return false;
        };
        let attachments: Api<VolumeAttachment> = Api::all(self.client.clone());
        match attachments.list(&ListParams::default()).await {
            Ok(list) => !list.items.iter().any(|a| {
                a.spec.node_name == node
                    && a.spec.source.persistent_volume_name.as_deref() == Some(volume)
            }),
            Err(err) => {
                tracing::debug!(%err, "cannot list VolumeAttachments; relying on the out-of-service taint");
                false
            }
        }
    }

    /// Deletes the Pod with grace 0: it leaves the API at once, whatever its kubelet does.
    async fn force_delete(&self, session_id: &str, name: &str) -> BackendResult<()> {
        match self
            .pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(api("cannot force-delete the lost session Pod")(err)),
        }
        tracing::info!(session_id, pod = name, "lost session Pod force-deleted");
        Ok(())
    }

    /// Records on the workspace PVC `claim` whether the session's compute should run (see
    /// [`manifests::ANNOTATION_COMPUTE`]); with `spec`, the session's record too (a resume). A
    /// missing PVC is nothing to record on.
    pub(super) async fn record_compute(
        &self,
        claim: &str,
        wanted: &str,
        spec: Option<&SessionSpec>,
    ) -> BackendResult<()> {
        let mut annotations = serde_json::Map::new();
        if let Some(spec) = spec {
            for (key, value) in manifests::workspace_record(spec) {
                annotations.insert(key.to_owned(), value.into());
            }
        }
        annotations.insert(manifests::ANNOTATION_COMPUTE.to_owned(), wanted.into());
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        let pvcs: &Api<PersistentVolumeClaim> = &self.pvcs;
        match pvcs
            .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(api(
                "cannot record the session's state on its workspace PVC",
            )(err)),
        }
    }

    /// Makes the Pod `pod` the owner of the session's Secret, so the garbage collector deletes the
    /// Secret with the Pod however the Pod goes (a stop, an eviction, a drain, a force delete).
    pub(super) async fn own_secret(&self, session_id: &str, pod: &Pod) -> BackendResult<()> {
        let (Some(name), Some(uid)) = (&pod.metadata.name, &pod.metadata.uid) else {
            return Err(BackendError::Engine(
                "the API server returned the created session Pod without a name or uid".into(),
            ));
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
        ]}});
        let secrets: &Api<Secret> = &self.secrets;
        secrets
            .patch(
                &manifests::secret_name(session_id),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(api("cannot make the session Pod own its Secret"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, since: &str, taints: &[&str]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"taints": taints.iter().map(|k| serde_json::json!({"key": k, "effect": "NoExecute"})).collect::<Vec<_>>()},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]},
        }))
        .unwrap()
    }

    /// A node is lost once its Ready condition is not True, for as long as it has not been; only
    /// the out-of-service taint (not the lifecycle controller's unreachable one) says it is shut
    /// down.
    #[test]
    fn node_states() {
        let at = |s: &str| {
            s.parse::<k8s_openapi::jiff::Timestamp>()
                .unwrap()
                .as_millisecond()
        };
        let now = at("2026-01-01T00:01:00Z");
        assert_eq!(
            node_state(&node("True", "2026-01-01T00:00:00Z", &[]), now),
            NodeState::Healthy
        );
        assert_eq!(
            node_state(
                &node(
                    "Unknown",
                    "2026-01-01T00:00:30Z",
                    &["node.kubernetes.io/unreachable"]
                ),
                now
            ),
            NodeState::Lost {
                lost_for: Duration::from_secs(30),
                out_of_service: false
            }
        );
        assert_eq!(
            node_state(
                &node("False", "2026-01-01T00:00:00Z", &[OUT_OF_SERVICE_TAINT]),
                now
            ),
            NodeState::Lost {
                lost_for: Duration::from_secs(60),
                out_of_service: true
            }
        );
    }
}

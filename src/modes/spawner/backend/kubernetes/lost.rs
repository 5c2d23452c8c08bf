//! Sessions whose compute is out of reach, told without probing them:
//! - for listings, whether a session's Pod is on a lost node: a Pod the watch cache shows not
//!   Ready although it ran (it has an IP) is unreachable when its Node reads not Ready or is gone,
//!   and unknown when its Node cannot be read (no nodes right, a timeout, or more distinct nodes
//!   than one listing reads: [`MAX_NODE_READS`], each within [`NODE_READ_TIMEOUT`]);
//! - pinned sessions lost while no spawner watched them: a workspace PVC that records
//!   `tale.dev/compute: running` and a pin, whose Pod is gone or ended. Boot adoption lists Pods
//!   and misses them; the spawner heals them (see `heal`).
use super::heal::{node_state, NodeState};
use super::manifests::{ANNOTATION_COMPUTE, COMPUTE_RUNNING};
use super::pins::records_pin;
use super::{status, KubernetesBackend};
use crate::modes::spawner::backend::BackendResult;
use crate::shared::protocol::spawner::Reachability;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::api::Api;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Distinct Nodes one listing reads at most (sessions on further not-ready Pods' nodes are
/// reported unknown).
pub const MAX_NODE_READS: usize = 16;
/// Longest wait for one Node read of a listing.
pub const NODE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The PVC says its session's compute should run, and it is pinned.
fn wants_pinned_compute(pvc: &PersistentVolumeClaim) -> bool {
    let note = |key: &str| {
        pvc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    pvc.metadata.deletion_timestamp.is_none()
        && note(ANNOTATION_COMPUTE) == Some(COMPUTE_RUNNING)
        && records_pin(&pvc.metadata)
}

/// A Node as read: reachable (reporting), unreachable (not Ready, or gone from the cluster).
fn node_reachability(node: Option<&Node>, now_ms: i64) -> Reachability {
    match node.map(|node| node_state(node, now_ms)) {
        Some(NodeState::Healthy) => Reachability::Reachable,
        Some(NodeState::Lost { .. }) | None => Reachability::Unreachable,
    }
}

impl KubernetesBackend {
    /// See the module doc: the sessions of `ids` that are not reachable. Answered from the watch
    /// cache (a stale cache tells nothing) plus at most [`MAX_NODE_READS`] Node reads.
    pub(super) async fn reachability_of(&self, ids: &[String]) -> HashMap<String, Reachability> {
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in ids {
            let Some(Some(pod)) = self.cache.session_pod(id) else {
                continue;
            };
            let ran_and_stopped_answering = status::ready_status(&pod) != Some("True")
                && status::pod_ip(&pod).is_some()
                && !status::is_terminal(&pod);
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if let (true, Some(node)) = (ran_and_stopped_answering, node) {
                by_node.entry(node).or_default().push(id.clone());
            }
        }
        if by_node.is_empty() {
            return HashMap::new();
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now_ms = crate::shared::clock::now_ms() as i64;
        let reads = by_node.keys().take(MAX_NODE_READS).map(|name| {
            let nodes = &nodes;
            async move {
                let read = tokio::time::timeout(NODE_READ_TIMEOUT, nodes.get_opt(name)).await;
                let reachability = match read {
                    Ok(Ok(node)) => node_reachability(node.as_ref(), now_ms),
                    Ok(Err(err)) => {
                        tracing::debug!(node = %name, %err, "cannot read the node of a not-ready session Pod");
                        Reachability::Unknown
                    }
                    Err(_) => Reachability::Unknown,
                };
                (name.clone(), reachability)
            }
        });
        let read: HashMap<String, Reachability> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect();
        let mut out = HashMap::new();
        for (node, sessions) in by_node {
            let reachability = read.get(&node).copied().unwrap_or(Reachability::Unknown);
            if reachability != Reachability::Reachable {
                out.extend(sessions.into_iter().map(|id| (id, reachability)));
            }
        }
        out
    }

    /// See the module doc: pinned sessions whose compute should run and whose Pod is gone or
    /// ended. One paginated LIST of the workspace PVCs; each candidate's Pod from the watch cache
    /// (read from the API server while the watch is stale).
    pub(super) async fn lost_pinned(&self) -> BackendResult<Vec<String>> {
        let pvcs = self.workspace_pvcs().await?;
        let mut lost = Vec::new();
        for pvc in pvcs.iter().filter(|pvc| wants_pinned_compute(pvc)) {
            let Some(session) = status::workspace_session(pvc) else {
                continue;
            };
            match self.read_pod(&session.session_id).await {
                Ok(pod) if pod.as_ref().is_none_or(status::is_terminal) => {
                    lost.push(session.session_id)
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(session_id = %session.session_id, %err, "cannot read the Pod of a pinned session")
                }
            }
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pins::ANNOTATION_PINNED;
    use super::*;

    fn pvc(annotations: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-ws", "annotations": annotations}
        }))
        .unwrap()
    }

    /// Only a pinned workspace whose compute should run is a candidate: a stopped or unpinned
    /// one is healed at its next access (or never).
    #[test]
    fn pinned_running_workspaces_are_candidates() {
        let pinned_running =
            serde_json::json!({ANNOTATION_COMPUTE: COMPUTE_RUNNING, ANNOTATION_PINNED: "true"});
        assert!(wants_pinned_compute(&pvc(pinned_running)));
        assert!(!wants_pinned_compute(&pvc(
            serde_json::json!({ANNOTATION_COMPUTE: COMPUTE_RUNNING})
        )));
        assert!(!wants_pinned_compute(&pvc(
            serde_json::json!({ANNOTATION_COMPUTE: "stopped", ANNOTATION_PINNED: "true"})
        )));
    }

    /// A Node that is gone or not Ready makes its Pods unreachable; a Ready one does not.
    #[test]
    fn node_reachability_follows_ready() {
        let node = |ready: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n"},
                "status": {"conditions": [{"type": "Ready", "status": ready,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            }))
            .unwrap()
        };
        assert_eq!(node_reachability(None, 0), Reachability::Unreachable);
        assert_eq!(
            node_reachability(Some(&node("True")), 0),
            Reachability::Reachable
        );
        assert_eq!(
            node_reachability(Some(&node("Unknown")), 0),
            Reachability::Unreachable
        );
    }
}

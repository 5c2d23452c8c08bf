//! Pins in the backend: the annotation [`ANNOTATION_PINNED`] on the session's workspace PVC, set
//! and cleared with a JSON merge patch. Every replica reads it (adoption, the sweep's re-check
//! right before a stop), and it outlives the replica that set it.
//!
//! Why the PVC and not the Pod: the PVC lives as long as the session (it goes only on destroy)
//! while Pods come and go (a stop, a resume, a Pod re-created after eviction), so a pin survives
//! them all, as the Docker backend's pin volume does.
use super::super::names::Found;
use super::super::{BackendError, BackendResult};
use super::{api, KubernetesBackend};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use std::collections::HashSet;

/// Annotation on a session's workspace PVC: `"true"` while the session is pinned.
pub const ANNOTATION_PINNED: &str = "tale.dev/pinned";

/// The merge patch that sets (`"true"`) or removes (`null`) the pin annotation.
pub fn pin_patch(pinned: bool) -> serde_json::Value {
    let value = if pinned {
        serde_json::Value::String("true".into())
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({"metadata": {"annotations": {ANNOTATION_PINNED: value}}})
}

/// Whether an object's annotations record a pin (the workspace PVC's).
pub fn records_pin(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PINNED))
        .is_some_and(|v| v == "true")
}

impl KubernetesBackend {
    /// Records the pin on the session's own PVC; a session without a workspace cannot be pinned.
    pub(super) async fn set_pin(&self, session_id: &str, pinned: bool) -> BackendResult<()> {
        let name = match self.find_pvc(session_id, None).await? {
            Found::Ours { name, .. } => name,
            Found::Absent | Found::Foreign { .. } => {
                return Err(BackendError::Engine(format!(
                    "session {session_id} has no workspace PVC to record its pin on"
                )))
            }
        };
        self.pvcs
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(pin_patch(pinned)),
            )
            .await
            .map_err(api("cannot record the pin on the workspace PVC"))?;
        Ok(())
    }

    /// Every workspace PVC, from one paginated LIST (the pins of an adoption pass, the lost pinned
    /// sessions of a heal pass).
    pub(super) async fn workspace_pvcs(&self) -> BackendResult<Vec<PersistentVolumeClaim>> {
        super::watch::list_paginated(
            &self.pvcs,
            &format!("{}=1", super::manifests::WORKSPACE_LABEL),
            self.list_page_size,
        )
        .await
        .map_err(api("cannot list the workspace PVCs"))
    }

    /// Every pinned session, from one listing of the workspace PVCs (an adoption pass reads this
    /// instead of one PVC per session).
    pub(super) async fn pinned_session_ids(&self) -> BackendResult<HashSet<String>> {
        Ok(self
            .workspace_pvcs()
            .await?
            .iter()
            .filter(|pvc| records_pin(&pvc.metadata))
            .filter_map(|pvc| super::status::workspace_session(pvc).map(|s| s.session_id))
            .collect())
    }

    /// The pin as the session's PVC records it (`false` without a PVC).
    pub(super) async fn read_pin(&self, session_id: &str) -> BackendResult<bool> {
        Ok(match self.find_pvc(session_id, None).await? {
            Found::Ours { object, .. } => records_pin(&object.metadata),
            Found::Absent | Found::Foreign { .. } => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinning sets the annotation; unpinning sends `null`, which a merge patch reads as "remove".
    #[test]
    fn pin_patches() {
        assert_eq!(
            pin_patch(true),
            serde_json::json!({"metadata": {"annotations": {"tale.dev/pinned": "true"}}})
        );
        assert_eq!(
            pin_patch(false),
            serde_json::json!({"metadata": {"annotations": {"tale.dev/pinned": null}}})
        );
    }
}

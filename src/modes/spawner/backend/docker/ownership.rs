//! Finding a session's container and workspace volume by name, and proving they are the session's
//! own by their labels (`tale.session`, `tale.org`) before anything uses, replaces or removes them.
//!
//! A session's objects are looked for under its current name first, then under the name the
//! previous release gave it (see `backend::names`): an object under the current name that is
//! labelled for someone else is a conflict the caller reports; one under the legacy name that is
//! labelled for another session is simply not this session's (the legacy name of a long id is a
//! short id's current name) and is left alone.
use super::super::names::{candidate_base_names, judge, Found, NameRules};
use super::super::{BackendError, BackendResult};
use super::{engine, is_not_found, DockerBackend};
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::InspectContainerOptions;
use std::collections::HashMap;

/// Suffix of the workspace volume's name after the session's base name.
pub const WORKSPACE_VOLUME_SUFFIX: &str = "-ws";

/// The container names to look under, current first.
pub fn container_names(session_id: &str) -> Vec<String> {
    candidate_base_names(session_id, NameRules::Docker)
}

/// The workspace volume names to look under, current first.
pub fn volume_names(session_id: &str) -> Vec<String> {
    container_names(session_id)
        .into_iter()
        .map(|base| format!("{base}{WORKSPACE_VOLUME_SUFFIX}"))
        .collect()
}

impl DockerBackend {
    /// The session's container, label-checked (the organization too when `org` is given).
    pub(super) async fn find_container(
        &self,
        session_id: &str,
        org: Option<&str>,
    ) -> BackendResult<Found<ContainerInspectResponse>> {
        for (index, name) in container_names(session_id).into_iter().enumerate() {
            let inspect = match self
                .docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => inspect,
                Err(err) if is_not_found(&err) => continue,
                Err(err) => return Err(engine("cannot inspect the session container")(err)),
            };
            let labels = inspect.config.as_ref().and_then(|c| c.labels.clone());
            let recorded = |key: &str| labels.as_ref().and_then(|l| l.get(key)).cloned();
            let (owner, owner_org) = (recorded("tale.session"), recorded("tale.org"));
            if let Some(found) = judge(
                "container",
                name,
                inspect,
                index,
                (session_id, org),
                (owner.as_deref(), owner_org.as_deref()),
            ) {
                return Ok(found);
            }
        }
        Ok(Found::Absent)
    }

    /// The session's workspace volume, label-checked (the organization too when `org` is given
    /// and the volume records one: volumes made before this release do not).
    pub(super) async fn find_workspace_volume(
        &self,
        session_id: &str,
        org: Option<&str>,
    ) -> BackendResult<Found<()>> {
        for (index, name) in volume_names(session_id).into_iter().enumerate() {
            let volume = match self.docker.inspect_volume(&name).await {
                Ok(volume) => volume,
                Err(err) if is_not_found(&err) => continue,
                Err(err) => return Err(engine("cannot inspect the workspace volume")(err)),
            };
            let recorded = |key: &str| volume.labels.get(key).map(String::as_str);
            if let Some(found) = judge(
                "volume",
                name,
                (),
                index,
                (session_id, org),
                (recorded("tale.session"), recorded("tale.org")),
            ) {
                return Ok(found);
            }
        }
        Ok(Found::Absent)
    }

    /// Checks the labels a volume create returned (the volume as it really is, created now or
    /// before) before the session mounts it.
    pub(super) fn check_volume_labels(
        name: &str,
        session_id: &str,
        org: &str,
        labels: &HashMap<String, String>,
    ) -> BackendResult<()> {
        let recorded = |key: &str| labels.get(key).map(String::as_str);
        match judge(
            "volume",
            name.to_owned(),
            (),
            0,
            (session_id, Some(org)),
            (recorded("tale.session"), recorded("tale.org")),
        ) {
            Some(Found::Ours { .. }) => Ok(()),
            _ => Err(mismatch("volume", name, session_id)),
        }
    }
}

/// The error a create answers (409 `owner_mismatch`) when an object in its way is someone else's.
pub fn mismatch(object: &'static str, name: &str, session_id: &str) -> BackendError {
    BackendError::OwnerMismatch {
        object,
        name: name.to_owned(),
        session_id: session_id.to_owned(),
    }
}

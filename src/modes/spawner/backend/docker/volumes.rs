//! Workspace and cache volumes: created once (nonce label), size-limited when disk quotas are on,
//! scoped to the deployment's stack, and claimed for a session only when its labels say so.
use super::*;

impl DockerBackend {
    /// Creates `name` if missing; returns whether it existed before, and its labels as they are.
    /// One engine call: creating an existing volume returns it unchanged, so a fresh nonce label
    /// tells the two cases apart.
    pub(super) async fn ensure_volume(
        &self,
        name: &str,
        mut labels: HashMap<String, String>,
    ) -> BackendResult<(bool, HashMap<String, String>)> {
        let nonce = crate::shared::hex::random::<8>();
        labels.insert(VOLUME_NONCE_LABEL.into(), nonce.clone());
        labels = self.with_stack(labels);
        let volume = self
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(engine("cannot create a volume"))?;
        let existed = volume.labels.get(VOLUME_NONCE_LABEL) != Some(&nonce);
        self.refuse_other_stack(name, &volume.labels)?;
        Ok((existed, volume.labels))
    }

    /// A volume of the same name made by another stack on this engine is never used.
    pub(super) fn refuse_other_stack(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> BackendResult<()> {
        if let (Some(ours), Some(theirs)) = (&self.config.stack_label, labels.get(STACK_LABEL)) {
            if ours != theirs {
                return Err(BackendError::Invalid {
                    what: "volume (it belongs to another stack)",
                    value: format!("{name} ({STACK_LABEL}={theirs})"),
                });
            }
        }
        Ok(())
    }

    /// An organization's cache volume: `<prefix>-<org>`, or `<prefix>-<stack>-<org>` with a stack
    /// label, so two stacks on one engine never share (or remove) each other's caches.
    pub(super) fn cache_volume(&self, prefix: &str, org: &str) -> String {
        match &self.config.stack_label {
            Some(stack) => format!("{prefix}-{stack}-{org}"),
            None => format!("{prefix}-{org}"),
        }
    }

    /// `labels` plus the stack label, when one is configured.
    pub(super) fn with_stack(
        &self,
        mut labels: HashMap<String, String>,
    ) -> HashMap<String, String> {
        if let Some(stack) = &self.config.stack_label {
            labels.insert(STACK_LABEL.into(), stack.clone());
        }
        labels
    }

    /// [`Self::ensure_volume`], or a quota'd volume of `bytes` when disk quotas are on; whether it
    /// existed before, and its labels as they are now.
    pub(super) async fn ensure_sized_volume(
        &self,
        name: &str,
        bytes: u64,
        labels: HashMap<String, String>,
    ) -> BackendResult<(bool, HashMap<String, String>)> {
        match &self.quotas {
            Some(quotas) => {
                let (existed, actual) = quotas
                    .ensure_volume(name, bytes, self.with_stack(labels))
                    .await?;
                self.refuse_other_stack(name, &actual)?;
                Ok((existed, actual))
            }
            None => self.ensure_volume(name, labels).await,
        }
    }

    /// Removes a volume (and its quota image and loop device); whether it existed.
    pub(super) async fn remove_sized_volume(&self, name: &str) -> BackendResult<bool> {
        if let Some(quotas) = &self.quotas {
            return quotas.remove_volume(name).await;
        }
        match self
            .docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(engine("cannot remove the workspace volume")(err)),
        }
    }

    /// Starts reclaiming, in the background, this deployment's leftover disk quota helper
    /// containers (any killed spawner's; also with quotas off now, as they may have been on), then,
    /// with disk quotas on, its quota images whose volume was removed without the helper. The
    /// outcomes go to the log.
    pub fn spawn_boot_reclaim(&self) {
        let docker = self.docker.clone();
        let owner = self.config.network.clone();
        let stack = self.config.stack_label.clone();
        let quotas = self.quotas.clone();
        tokio::spawn(async move {
            let grace = crate::modes::spawner::test_hooks::quota_helper_grace(
                super::super::docker_quota::HELPER_RECLAIM_GRACE,
            );
            match super::super::docker_quota::reclaim_leftover_helpers(
                &docker,
                &owner,
                stack.as_deref(),
                grace,
            )
            .await
            {
                Ok(removed) => {
                    tracing::info!(removed = removed.len(), "disk quota helper reclaim done")
                }
                Err(err) => tracing::warn!(%err, "disk quota helper reclaim failed"),
            }
            let Some(quotas) = quotas else {
                return;
            };
            match quotas.reclaim_orphans().await {
                Ok(volumes) => {
                    tracing::info!(reclaimed = volumes.len(), "disk quota orphan reclaim done")
                }
                Err(err) => tracing::warn!(%err, "disk quota orphan reclaim failed"),
            }
        });
    }

    /// The session's workspace volume: its own under the current or the legacy name, else a new
    /// one under the current name. Returns the name and whether it existed before.
    pub(super) async fn claim_workspace_volume(
        &self,
        spec: &SessionSpec,
    ) -> BackendResult<(String, bool)> {
        let id = &spec.session_id;
        let org = &spec.organization_id;
        let name = match self.find_workspace_volume(id, Some(org)).await? {
            Found::Ours { name, .. } => name,
            Found::Foreign { name } => return Err(mismatch("volume", &name, id)),
            Found::Absent => workspace_volume(id),
        };
        let labels = HashMap::from([
            ("tale.sandbox-workspace".to_string(), "1".to_string()),
            ("tale.session".to_string(), id.clone()),
            ("tale.org".to_string(), org.clone()),
        ]);
        let (preexisting, actual) = self
            .ensure_sized_volume(&name, spec.resources.disk_quota_bytes, labels)
            .await?;
        // The volume as it is now (a concurrent create may have made it first).
        Self::check_volume_labels(&name, id, org, &actual)?;
        Ok((name, preexisting))
    }
}

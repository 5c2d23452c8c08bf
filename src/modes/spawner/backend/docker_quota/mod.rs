//! Disk quotas for the docker backend: every quota'd volume (a session's workspace, each
//! per-organization cache) is a size-limited ext4 filesystem in a sparse image file
//! `<dir>/<volume>.ext4`, attached to a loop device and mounted by the engine's `local` volume
//! driver (`type=ext4`, `device=/dev/loopN`). A write past the size fails with ENOSPC inside the
//! session, and the host never holds more than the image's size for it.
//!
//! Why this mechanism: the host filesystem is ext4 without XFS project quotas, overlay2 on ext4
//! has no `--storage-opt size`, and the `local` driver passes its options straight to mount(2),
//! which takes no `loop` option (that is mount(8)'s work), so the loop device must exist first.
//! The spawner itself is unprivileged; it prepares images through the engine: a short-lived helper
//! container (the session image, which has a POSIX shell, `truncate`, `mke2fs`/`mkfs.ext4` and
//! `losetup`) with `CAP_SYS_ADMIN`, `/dev/loop-control` and the loop block devices only — no
//! network, no other device, no `--privileged`.
//!
//! Loop devices do not survive a host reboot: every ensure (create or resume) finds the image's
//! device by its backing file and re-attaches when none has it, and re-points the volume when the
//! device number changed. Removing a volume detaches the device and deletes the image — through
//! the spawner (destroy), `tale docker-volumes rm` (operators, `scripts/quickstart.sh --down`, the
//! tests), or the spawner's boot-time reclaim of images whose volume was removed some other way
//! (`reclaim`). Helper containers left behind by a killed spawner are removed at boot
//! (`leftovers`).
mod helper;
mod leftovers;
mod reclaim;

pub use helper::{HELPER_LABEL, HELPER_OWNER_LABEL, QUOTA_HELPER_TIMEOUT};
pub use leftovers::{reclaim_leftover_helpers, HELPER_RECLAIM_GRACE};
pub use reclaim::{remove_any_volume, Removed, ORPHAN_RECLAIM_GRACE};

use super::{BackendError, BackendResult};
use bollard::query_parameters::RemoveVolumeOptions;
use bollard::Docker;
use helper::parse_attached;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Label on quota'd volumes: the image size in bytes.
pub const QUOTA_BYTES_LABEL: &str = "tale.disk-quota-bytes";
/// Default directory of the image files on the Docker host.
pub const DEFAULT_DISK_QUOTA_DIR: &str = "/var/lib/tale-sandbox/quota";
/// Smallest quota accepted (ext4 needs room for its own metadata).
pub const MIN_DISK_QUOTA_BYTES: u64 = 16 << 20;
/// Mount options of quota'd volumes (device files and set-uid bits are never honoured there).
const VOLUME_MOUNT_OPTIONS: &str = "nodev,nosuid";

/// Where and how quota images are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskQuotaConfig {
    /// Directory of the image files, as a path on the Docker host.
    pub dir: String,
    /// Image the helper container runs (needs `sh`, `truncate`, `mke2fs` or `mkfs.ext4`, `losetup`).
    pub helper_image: String,
    /// Size of each per-organization cache volume, in bytes.
    pub org_cache_bytes: u64,
}

/// Image file of a volume.
pub fn image_path(config: &DiskQuotaConfig, volume: &str) -> String {
    format!("{}/{volume}.ext4", config.dir.trim_end_matches('/'))
}

/// The `local` driver options mounting `device`.
pub fn volume_options(device: &str) -> HashMap<String, String> {
    HashMap::from([
        ("type".to_string(), "ext4".to_string()),
        ("device".to_string(), device.to_string()),
        ("o".to_string(), VOLUME_MOUNT_OPTIONS.to_string()),
    ])
}

/// Quota'd volumes over one engine. Clones share the per-volume locks.
#[derive(Clone)]
pub struct DiskQuotas {
    docker: Docker,
    config: DiskQuotaConfig,
    /// The deployment whose images these are (its sandbox network: every replica shares it),
    /// recorded next to each image so the boot-time reclaim only ever touches its own; also a
    /// label of its helper containers. Empty: unknown (nothing is recorded or labelled).
    owner: String,
    /// The deployment's stack label, put on its helper containers.
    stack: Option<String>,
    /// One operation at a time per volume (two sessions of one organization share caches).
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

fn engine(context: &str) -> impl FnOnce(bollard::errors::Error) -> BackendError + '_ {
    move |err| BackendError::Engine(format!("{context}: {err}"))
}

fn status_of(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DiskQuotas {
    pub fn new(
        docker: Docker,
        config: DiskQuotaConfig,
        owner: &str,
        stack: Option<&str>,
    ) -> DiskQuotas {
        DiskQuotas {
            docker,
            config,
            owner: owner.to_owned(),
            stack: stack.map(str::to_owned),
            locks: Arc::default(),
        }
    }

    pub fn config(&self) -> &DiskQuotaConfig {
        &self.config
    }

    fn lock_for(&self, volume: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(volume.to_owned()).or_default().clone()
    }

    /// Makes `volume` a quota'd volume of `bytes` (creating, re-attaching or re-pointing as
    /// needed). Returns whether its data existed before (the image, or a plain volume made before
    /// quotas were on, which is kept as it is).
    pub async fn ensure_volume(
        &self,
        volume: &str,
        bytes: u64,
        mut labels: HashMap<String, String>,
    ) -> BackendResult<(bool, HashMap<String, String>)> {
        let lock = self.lock_for(volume);
        let _held = lock.lock().await;
        let existing = match self.docker.inspect_volume(volume).await {
            Ok(v) => Some(v),
            Err(err) if status_of(&err) == Some(404) => None,
            Err(err) => return Err(engine("cannot inspect a volume")(err)),
        };
        if let Some(v) = &existing {
            if v.options.get("type").map(String::as_str) != Some("ext4") {
                tracing::warn!(volume, "volume predates disk quotas: kept without a quota");
                return Ok((true, v.labels.clone()));
            }
        }
        let image = image_path(&self.config, volume);
        let output = self
            .run_helper(&[
                "ensure".into(),
                image.clone(),
                bytes.to_string(),
                self.owner.clone(),
            ])
            .await?;
        let attached = parse_attached(&output).ok_or_else(|| {
            BackendError::Engine(format!("disk quota helper gave no loop device: {output}"))
        })?;
        if let Some(v) = existing {
            if v.options.get("device") == Some(&attached.device) {
                return Ok((true, v.labels));
            }
            // The device number changed (a reboot): the volume is only a pointer, re-point it.
            tracing::info!(volume, device = %attached.device, "re-pointing a quota volume at its loop device");
            self.docker
                .remove_volume(volume, None::<RemoveVolumeOptions>)
                .await
                .map_err(engine("cannot re-point a quota volume"))?;
        }
        labels.insert(QUOTA_BYTES_LABEL.into(), bytes.to_string());
        let created = self
            .docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(volume.to_owned()),
                driver: Some("local".into()),
                driver_opts: Some(volume_options(&attached.device)),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(engine("cannot create a quota volume"))?;
        Ok((!attached.new, created.labels))
    }

    /// Removes `volume`, detaches its loop device and deletes its image. Returns whether the
    /// volume existed.
    pub async fn remove_volume(&self, volume: &str) -> BackendResult<bool> {
        let lock = self.lock_for(volume);
        let _held = lock.lock().await;
        let existed = match self
            .docker
            .remove_volume(volume, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => true,
            Err(err) if status_of(&err) == Some(404) => false,
            Err(err) => return Err(engine("cannot remove a quota volume")(err)),
        };
        let output = self
            .run_helper(&["remove".into(), image_path(&self.config, volume)])
            .await?;
        if !output.lines().any(|l| l == "REMOVED") {
            return Err(BackendError::Engine(format!(
                "disk quota helper did not remove the image: {output}"
            )));
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The volume's options point the `local` driver at the loop device, mounted nodev,nosuid.
    #[test]
    fn volume_options_mount_the_device() {
        assert_eq!(volume_options("/dev/loop3")["device"], "/dev/loop3");
        assert_eq!(volume_options("/dev/loop3")["type"], "ext4");
        assert_eq!(volume_options("/dev/loop3")["o"], "nodev,nosuid");
    }
}

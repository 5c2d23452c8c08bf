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
//! device number changed. Removing a volume detaches the device and deletes the image.
use super::{BackendError, BackendResult};
use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, WaitContainerOptions,
};
use bollard::Docker;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Label on quota'd volumes: the image size in bytes.
pub const QUOTA_BYTES_LABEL: &str = "tale.disk-quota-bytes";
/// Default directory of the image files on the Docker host.
pub const DEFAULT_DISK_QUOTA_DIR: &str = "/var/lib/tale-sandbox/quota";
/// Smallest quota accepted (ext4 needs room for its own metadata).
pub const MIN_DISK_QUOTA_BYTES: u64 = 16 << 20;
/// Time allowed for one helper run (create + mkfs + attach, or detach + delete).
pub const QUOTA_HELPER_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of helper output read back.
const HELPER_OUTPUT_MAX_BYTES: usize = 16 * 1024;
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

/// The helper: `ensure IMAGE SIZE` prints `LOOP <device> <new|old>`; `remove IMAGE` detaches
/// the image's device(s) and deletes it. The image's device is found by its backing file's name
/// (the path shown in sysfs depends on the mount namespace that attached it; names are unique).
const HELPER_SCRIPT: &str = r#"set -eu
# Debian images keep losetup and mkfs in /sbin, outside a non-root PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
mode=$1; img=$2; name=${img##*/}
for tool in losetup truncate mknod; do
  command -v "$tool" >/dev/null 2>&1 || { echo "the helper image has no $tool (install mount and e2fsprogs)" >&2; exit 2; }
done
command -v mkfs.ext4 >/dev/null 2>&1 || command -v mke2fs >/dev/null 2>&1 ||
  { echo "the helper image has no mkfs.ext4 or mke2fs (install e2fsprogs)" >&2; exit 2; }
find_loops() {
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case "$(cat "$f")" in
      */"$name"|*/"$name (deleted)") d=${f#/sys/block/}; echo "/dev/${d%%/*}";;
    esac
  done
}
node() { [ -b "$1" ] || mknod "$1" b 7 "${1#/dev/loop}"; }
if [ "$mode" = remove ]; then
  for dev in $(find_loops); do node "$dev"; losetup -d "$dev"; done
  rm -f "$img" "$img.new"
  echo REMOVED
  exit 0
fi
size=$3
dev=$(find_loops | head -n 1)
if [ -n "$dev" ]; then echo "LOOP $dev old"; exit 0; fi
state=old
if [ ! -e "$img" ]; then
  mkdir -p "${img%/*}"
  rm -f "$img.new"
  truncate -s "$size" "$img.new"
  if command -v mkfs.ext4 >/dev/null 2>&1; then mkfs.ext4 -q -F -m 0 "$img.new" >&2
  else mke2fs -F -m 0 "$img.new" >&2; fi
  mv "$img.new" "$img"
  state=new
fi
tries=0
while :; do
  dev=$(losetup -f)
  node "$dev"
  if losetup "$dev" "$img"; then echo "LOOP $dev $state"; exit 0; fi
  tries=$((tries + 1))
  [ "$tries" -lt 20 ] || { echo "no free loop device" >&2; exit 1; }
done
"#;

/// A loop device the helper reported.
#[derive(Debug, PartialEq, Eq)]
struct Attached {
    device: String,
    /// The image was made by this call.
    new: bool,
}

/// Reads the helper's `LOOP /dev/loopN new|old` line; anything else is refused.
fn parse_attached(output: &str) -> Option<Attached> {
    let line = output.lines().rev().find(|l| l.starts_with("LOOP "))?;
    let mut words = line.split_whitespace().skip(1);
    let device = words.next()?;
    let digits = device.strip_prefix("/dev/loop")?;
    if digits.is_empty() || digits.len() > 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let new = match words.next()? {
        "new" => true,
        "old" => false,
        _ => return None,
    };
    Some(Attached {
        device: device.to_owned(),
        new,
    })
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

/// The helper container: the loop devices and `CAP_SYS_ADMIN`, nothing else.
fn helper_body(config: &DiskQuotaConfig, args: &[String]) -> ContainerCreateBody {
    let mut cmd = vec![
        "-c".to_string(),
        HELPER_SCRIPT.to_string(),
        "tale-disk-quota".to_string(),
    ];
    cmd.extend(args.iter().cloned());
    ContainerCreateBody {
        image: Some(config.helper_image.clone()),
        entrypoint: Some(vec!["/bin/sh".into()]),
        cmd: Some(cmd),
        user: Some("0:0".into()),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(
            "tale.disk-quota-helper".into(),
            "1".into(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            cap_add: Some(vec!["SYS_ADMIN".into()]),
            devices: Some(vec![DeviceMapping {
                path_on_host: Some("/dev/loop-control".into()),
                path_in_container: Some("/dev/loop-control".into()),
                cgroup_permissions: Some("rwm".into()),
            }]),
            // Loop block devices (major 7) only; nodes are made as needed.
            device_cgroup_rules: Some(vec!["b 7:* rwm".into()]),
            // Same path inside and out, so messages name the host path.
            binds: Some(vec![format!("{0}:{0}", config.dir)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Quota'd volumes over one engine.
pub struct DiskQuotas {
    docker: Docker,
    config: DiskQuotaConfig,
    /// One operation at a time per volume (two sessions of one organization share caches).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
    pub fn new(docker: Docker, config: DiskQuotaConfig) -> DiskQuotas {
        DiskQuotas {
            docker,
            config,
            locks: Mutex::new(HashMap::new()),
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
            .run_helper(&["ensure".into(), image.clone(), bytes.to_string()])
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

    /// Runs the helper to completion (bounded by [`QUOTA_HELPER_TIMEOUT`]) and returns its output;
    /// the container is removed whatever happens.
    async fn run_helper(&self, args: &[String]) -> BackendResult<String> {
        let name = format!("tale-disk-quota-{}", crate::shared::hex::random::<8>());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(options), helper_body(&self.config, args))
            .await
            .map_err(engine("cannot create the disk quota helper"))?;
        let outcome = tokio::time::timeout(QUOTA_HELPER_TIMEOUT, self.run_created(&name)).await;
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(err) = self.docker.remove_container(&name, Some(remove)).await {
            tracing::warn!(%err, helper = %name, "cannot remove the disk quota helper");
        }
        match outcome {
            Ok(result) => result,
            Err(_) => Err(BackendError::Engine(format!(
                "the disk quota helper did not finish within {} s",
                QUOTA_HELPER_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn run_created(&self, name: &str) -> BackendResult<String> {
        use futures_util::StreamExt;
        self.docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(engine("cannot start the disk quota helper"))?;
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        let code = match wait.next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(err)) => return Err(engine("cannot wait for the disk quota helper")(err)),
            None => -1,
        };
        let logs = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut stream = self.docker.logs(name, Some(logs));
        let mut output = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let text = chunk.to_string();
            let room = HELPER_OUTPUT_MAX_BYTES.saturating_sub(output.len());
            let mut end = text.len().min(room);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            output.push_str(&text[..end]);
        }
        if code != 0 {
            return Err(BackendError::Engine(format!(
                "the disk quota helper ({}) failed (exit {code}): {} (set SANDBOX_DISK_QUOTA_HELPER_IMAGE, or SANDBOX_DISK_QUOTAS=0 to run without quotas)",
                self.config.helper_image,
                output.trim()
            )));
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a well-formed `LOOP /dev/loopN new|old` line is believed.
    #[test]
    fn helper_output_is_parsed_strictly() {
        assert_eq!(
            parse_attached("mke2fs noise\nLOOP /dev/loop12 new\n"),
            Some(Attached {
                device: "/dev/loop12".into(),
                new: true
            })
        );
        assert_eq!(
            parse_attached("LOOP /dev/loop0 old").map(|a| a.new),
            Some(false)
        );
        for bad in [
            "",
            "LOOP /dev/sda old",
            "LOOP /dev/loop old",
            "LOOP /dev/loop1x new",
            "LOOP /dev/loop1 maybe",
            "LOOP /dev/loop1",
        ] {
            assert_eq!(parse_attached(bad), None, "{bad:?}");
        }
    }

    /// A helper image without the tools fails with a message naming the missing one (before it
    /// touches anything).
    #[test]
    fn helper_names_a_missing_tool() {
        let output = std::process::Command::new("/bin/sh")
            .args(["-c", HELPER_SCRIPT, "tale-disk-quota", "ensure"])
            .args(["/nonexistent/v.ext4", "1048576"])
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        // losetup may be found in the sbin directories the script adds; truncate is in /usr/bin.
        assert!(stderr.contains("has no truncate"), "{stderr}");
    }

    /// The helper gets the loop devices, `CAP_SYS_ADMIN` and the image directory, and nothing
    /// else: no privileged mode, no network.
    #[test]
    fn helper_is_narrow() {
        let config = DiskQuotaConfig {
            dir: "/srv/q".into(),
            helper_image: "img".into(),
            org_cache_bytes: 1 << 30,
        };
        let body = helper_body(&config, &["remove".into(), image_path(&config, "v")]);
        let host = body.host_config.unwrap();
        assert_eq!(host.privileged, None);
        assert_eq!(host.cap_add, Some(vec!["SYS_ADMIN".to_string()]));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.binds, Some(vec!["/srv/q:/srv/q".to_string()]));
        assert_eq!(
            host.device_cgroup_rules,
            Some(vec!["b 7:* rwm".to_string()])
        );
        assert_eq!(body.cmd.unwrap().last().unwrap(), "/srv/q/v.ext4");
        assert_eq!(volume_options("/dev/loop3")["device"], "/dev/loop3");
        assert_eq!(volume_options("/dev/loop3")["type"], "ext4");
    }
}

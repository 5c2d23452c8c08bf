//! The disk quota helper: a short-lived container (the session image) that makes, attaches,
//! detaches and deletes image files with `CAP_SYS_ADMIN` and the loop devices only. Its script is
//! the one place the host-side steps live; the spawner and `tale docker-volumes` both run it.
use super::{engine, DiskQuotaConfig, DiskQuotas};
use crate::modes::spawner::backend::docker::STACK_LABEL;
use crate::modes::spawner::backend::{BackendError, BackendResult};
use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptions,
};
use std::collections::HashMap;

/// Time allowed for one helper run (create + mkfs + attach, or detach + delete).
pub const QUOTA_HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Most bytes of helper output read back.
const HELPER_OUTPUT_MAX_BYTES: usize = 64 * 1024;
/// Label on helper containers (value `1`).
pub const HELPER_LABEL: &str = "tale.disk-quota-helper";
/// Label on helper containers: the deployment that made them (its sandbox network, as in the
/// images' records), so a boot reclaims only its own deployment's leftovers.
pub const HELPER_OWNER_LABEL: &str = "tale.disk-quota-owner";

/// The helper's modes:
/// - `ensure IMAGE SIZE OWNER` prints `LOOP <device> <new|old>` (records OWNER first, see below);
/// - `remove IMAGE` detaches the image's device(s) and deletes it, printing `REMOVED`;
/// - `owned DIR OWNER` prints `NOW <epoch>` and `OWNED <mtime> <volume>` per image recorded for
///   OWNER;
/// - `reclaim IMAGE OWNER GRACE` is `remove`, only while the record still names OWNER and is older
///   than GRACE seconds (else `KEPT`): the last check against an ensure of another replica.
///
/// `<image>.owner` records which deployment uses an image (its sandbox network); every ensure
/// rewrites it, so its age is the time since the image was last ensured. Every mode but `owned`
/// holds `<image>.lock` (a directory: `mkdir` is atomic on the host's filesystem) while it works,
/// so helpers of several replicas never make, attach or delete one image at once; a lock older
/// than the helper timeout is a killed helper's and is broken. The image's device is
/// found by its backing file's name (the path shown in sysfs depends on the mount namespace that
/// attached it; names are unique).
pub(super) const HELPER_SCRIPT_TEMPLATE: &str = r#"set -eu
# Debian images keep losetup and mkfs in /sbin, outside a non-root PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
mode=$1; img=$2; name=${img##*/}
for tool in losetup truncate mknod stat; do
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
lock() {
  mkdir -p "${img%/*}"
  waited=0
  until mkdir "$img.lock" 2>/dev/null; do
    held=$(stat -c %Y "$img.lock" 2>/dev/null || date +%s)
    if [ $(( $(date +%s) - held )) -gt LOCK_STALE_SECS ]; then rmdir "$img.lock" 2>/dev/null || true; continue; fi
    waited=$((waited + 1))
    [ "$waited" -le LOCK_WAIT_SECS ] || { echo "$img is locked by another helper" >&2; exit 1; }
    sleep 1
  done
  trap 'rmdir "$img.lock" 2>/dev/null || true' EXIT
}
remove() {
  for dev in $(find_loops); do node "$dev"; losetup -d "$dev"; done
  rm -f "$img" "$img.new" "$img.owner" "$img.owner.new"
  echo REMOVED
  exit 0
}
[ "$mode" = owned ] || lock
case $mode in
remove) remove ;;
owned)
  echo "NOW $(date +%s)"
  for f in "$img"/*.ext4.owner; do
    [ -f "$f" ] || continue
    [ "$(cat "$f")" = "$3" ] || continue
    v=${f##*/}
    echo "OWNED $(stat -c %Y "$f") ${v%.ext4.owner}"
  done
  exit 0 ;;
reclaim)
  [ -f "$img.owner" ] && [ "$(cat "$img.owner")" = "$3" ] &&
    [ $(( $(date +%s) - $(stat -c %Y "$img.owner") )) -ge "$4" ] || { echo KEPT; exit 0; }
  remove ;;
ensure) ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
size=$3
printf '%s\n' "$4" > "$img.owner.new"
mv -f "$img.owner.new" "$img.owner"
dev=$(find_loops | head -n 1)
if [ -n "$dev" ]; then echo "LOOP $dev old"; exit 0; fi
state=old
if [ ! -e "$img" ]; then
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

/// A lock older than this is a killed helper's (helpers are bounded by [`QUOTA_HELPER_TIMEOUT`]).
const LOCK_STALE_SECS: u64 = QUOTA_HELPER_TIMEOUT.as_secs() + 5;
/// Longest a helper waits for another's lock on the same image before it fails.
const LOCK_WAIT_SECS: u64 = 100;

/// The helper's script with its limits filled in.
pub(super) fn helper_script() -> String {
    HELPER_SCRIPT_TEMPLATE
        .replace("LOCK_STALE_SECS", &LOCK_STALE_SECS.to_string())
        .replace("LOCK_WAIT_SECS", &LOCK_WAIT_SECS.to_string())
}

/// A loop device the helper reported.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Attached {
    pub(super) device: String,
    /// The image was made by this call.
    pub(super) new: bool,
}

/// Reads the helper's `LOOP /dev/loopN new|old` line; anything else is refused.
pub(super) fn parse_attached(output: &str) -> Option<Attached> {
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

/// The labels of a helper container made by deployment `owner` (its sandbox network; empty:
/// unknown) of stack `stack`: the helper label, the owner and the stack label when known.
pub(super) fn helper_labels(owner: &str, stack: Option<&str>) -> HashMap<String, String> {
    let mut labels = HashMap::from([(HELPER_LABEL.to_string(), "1".to_string())]);
    if !owner.is_empty() {
        labels.insert(HELPER_OWNER_LABEL.into(), owner.into());
    }
    if let Some(stack) = stack {
        labels.insert(STACK_LABEL.into(), stack.into());
    }
    labels
}

/// The helper container: the loop devices and `CAP_SYS_ADMIN`, nothing else.
pub(super) fn helper_body(
    config: &DiskQuotaConfig,
    labels: HashMap<String, String>,
    args: &[String],
) -> ContainerCreateBody {
    let mut cmd = vec![
        "-c".to_string(),
        helper_script(),
        "tale-disk-quota".to_string(),
    ];
    cmd.extend(args.iter().cloned());
    ContainerCreateBody {
        image: Some(config.helper_image.clone()),
        entrypoint: Some(vec!["/bin/sh".into()]),
        cmd: Some(cmd),
        user: Some("0:0".into()),
        network_disabled: Some(true),
        labels: Some(labels),
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

impl DiskQuotas {
    /// Runs the helper to completion (bounded by [`QUOTA_HELPER_TIMEOUT`]) and returns its output;
    /// the container is removed whatever happens — unless this process dies first, which is what
    /// the boot's reclaim of leftover helpers (`leftovers`) is for.
    pub(super) async fn run_helper(&self, args: &[String]) -> BackendResult<String> {
        let name = format!("tale-disk-quota-{}", crate::shared::hex::random::<8>());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let labels = helper_labels(&self.owner, self.stack.as_deref());
        self.docker
            .create_container(Some(options), helper_body(&self.config, labels, args))
            .await
            .map_err(engine("cannot create the disk quota helper"))?;
        crate::modes::spawner::test_hooks::pause_at("quota_helper_created").await;
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
    use super::super::image_path;
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
            .args(["-c", &helper_script(), "tale-disk-quota", "ensure"])
            .args(["/nonexistent/v.ext4", "1048576", "net"])
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
        let labels = helper_labels("net", Some("qs"));
        let body = helper_body(
            &config,
            labels,
            &["remove".into(), image_path(&config, "v")],
        );
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
        let labels = body.labels.unwrap();
        assert_eq!(labels[HELPER_OWNER_LABEL], "net");
        assert_eq!(labels[STACK_LABEL], "qs");
    }

    /// A helper says which deployment (sandbox network) and stack made it when they are known;
    /// one of an unknown deployment carries only the helper label.
    #[test]
    fn helper_labels_name_the_deployment() {
        assert_eq!(
            helper_labels("tale-sandbox-net", None),
            HashMap::from([
                (HELPER_LABEL.to_string(), "1".to_string()),
                (
                    HELPER_OWNER_LABEL.to_string(),
                    "tale-sandbox-net".to_string()
                ),
            ])
        );
        assert_eq!(
            helper_labels("", None),
            HashMap::from([(HELPER_LABEL.to_string(), "1".to_string())])
        );
    }
}

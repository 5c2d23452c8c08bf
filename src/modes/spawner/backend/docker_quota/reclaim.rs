//! Quota images whose volume is gone: removing a volume by name the right way (the volume, its
//! loop device, its image), and the spawner's boot-time reclaim of images left behind when a
//! volume was removed without the helper (a plain `docker volume rm`).
use super::{engine, image_path, status_of, DiskQuotas, QUOTA_BYTES_LABEL};
use crate::modes::spawner::backend::{BackendError, BackendResult};
use bollard::query_parameters::RemoveVolumeOptions;
use bollard::Docker;
use std::time::Duration;

/// An image is reclaimed only when its deployment record has not been rewritten for this long:
/// every ensure rewrites it, so a create in flight (the image made, its volume not yet) or a
/// volume being re-pointed is never mistaken for an orphan. Longer than a helper run can take.
pub const ORPHAN_RECLAIM_GRACE: Duration = Duration::from_secs(600);
/// Most orphan candidates one boot looks at (the rest wait for the next boot).
pub const ORPHAN_RECLAIM_MAX: usize = 1000;

/// A Docker volume name as the engine allows it; anything else the helper reports is ignored.
fn is_volume_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 255
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The helper's `owned` report: the volumes whose record names this deployment and is at least
/// `grace` old by the helper's clock (the host's), at most [`ORPHAN_RECLAIM_MAX`].
fn stale_records(output: &str, grace: Duration) -> Option<Vec<String>> {
    let now: u64 = output
        .lines()
        .find_map(|l| l.strip_prefix("NOW "))?
        .trim()
        .parse()
        .ok()?;
    Some(
        output
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("OWNED ")?.split(' ');
                let mtime: u64 = words.next()?.parse().ok()?;
                let name = words.next()?;
                (words.next().is_none()
                    && is_volume_name(name)
                    && now.saturating_sub(mtime) >= grace.as_secs())
                .then(|| name.to_owned())
            })
            .take(ORPHAN_RECLAIM_MAX)
            .collect(),
    )
}

impl DiskQuotas {
    /// Detaches and deletes this deployment's images whose volume no longer exists; returns the
    /// volumes whose images went. Images of other deployments (another sandbox network's record)
    /// and images without a record (made before records existed) are never touched.
    pub async fn reclaim_orphans(&self) -> BackendResult<Vec<String>> {
        let output = self
            .run_helper(&["owned".into(), self.config.dir.clone(), self.owner.clone()])
            .await?;
        let candidates = stale_records(&output, ORPHAN_RECLAIM_GRACE).ok_or_else(|| {
            BackendError::Engine(format!("disk quota helper gave no listing: {output}"))
        })?;
        let mut reclaimed = Vec::new();
        for volume in candidates {
            let lock = self.lock_for(&volume);
            let _held = lock.lock().await;
            match self.docker.inspect_volume(&volume).await {
                Ok(_) => continue,
                Err(err) if status_of(&err) == Some(404) => {}
                Err(err) => return Err(engine("cannot inspect a volume")(err)),
            }
            let output = self
                .run_helper(&[
                    "reclaim".into(),
                    image_path(&self.config, &volume),
                    self.owner.clone(),
                    ORPHAN_RECLAIM_GRACE.as_secs().to_string(),
                ])
                .await?;
            if output.lines().any(|l| l == "REMOVED") {
                tracing::info!(
                    volume,
                    "reclaimed the disk quota image and loop device of a removed volume"
                );
                reclaimed.push(volume);
            }
        }
        Ok(reclaimed)
    }
}

/// What [`remove_any_volume`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    /// No such volume.
    Absent,
    /// A plain volume, removed.
    Plain,
    /// A quota'd volume: removed, its loop device detached and its image deleted.
    Quota,
}

/// Removes the volume `name` the right way for what it is: a quota'd one (an `ext4` volume
/// carrying the quota label) with its loop device and image, any other one as the engine does.
pub async fn remove_any_volume(
    docker: &Docker,
    quotas: &DiskQuotas,
    name: &str,
) -> BackendResult<Removed> {
    let volume = match docker.inspect_volume(name).await {
        Ok(volume) => volume,
        Err(err) if status_of(&err) == Some(404) => return Ok(Removed::Absent),
        Err(err) => return Err(engine("cannot inspect a volume")(err)),
    };
    let quota = volume.options.get("type").map(String::as_str) == Some("ext4")
        && volume.labels.contains_key(QUOTA_BYTES_LABEL);
    if quota {
        quotas.remove_volume(name).await?;
        return Ok(Removed::Quota);
    }
    match docker
        .remove_volume(name, None::<RemoveVolumeOptions>)
        .await
    {
        Ok(()) => Ok(Removed::Plain),
        Err(err) if status_of(&err) == Some(404) => Ok(Removed::Absent),
        Err(err) => Err(engine("cannot remove a volume")(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::helper::helper_script;
    use super::*;
    use std::path::Path;

    /// Only well-formed records at least the grace old are candidates; a listing without the
    /// helper's clock is refused.
    #[test]
    fn stale_records_are_parsed_strictly() {
        let grace = Duration::from_secs(600);
        let out = "NOW 10000\nOWNED 9000 old-ws\nOWNED 9500 fresh-ws\nOWNED 1 ../x\n\
                   OWNED 1 a b\nOWNED x bad-ws\nnoise\nOWNED 9400 edge-ws\n";
        assert_eq!(
            stale_records(out, grace),
            Some(vec!["old-ws".to_string(), "edge-ws".to_string()])
        );
        assert_eq!(stale_records("OWNED 1 v", grace), None);
        assert!(is_volume_name("tale-sbx-ses-a_b.c-ws"));
        for bad in ["", "-x", ".x", "a/b", "a b", &"v".repeat(256)] {
            assert!(!is_volume_name(bad), "{bad:?}");
        }
    }

    fn helper(args: &[&str]) -> String {
        let output = std::process::Command::new("/bin/sh")
            .args(["-c", &helper_script(), "tale-disk-quota"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    fn age(path: &Path, secs: u64) {
        let then = std::time::SystemTime::now() - Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    /// The helper lists only this deployment's records, and `reclaim` deletes an image (and its
    /// record) only while the record is this deployment's and older than the grace: a fresh one
    /// (an ensure in flight) or another deployment's is kept. Runs the script on a scratch
    /// directory (no loop device is attached to these names).
    #[test]
    fn reclaim_touches_only_old_records_of_its_own_deployment() {
        let dir = std::env::temp_dir().join(format!("tale-reclaim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        for (volume, owner, secs) in [
            ("old", "netA", 700),
            ("fresh", "netA", 0),
            ("theirs", "netB", 700),
        ] {
            std::fs::write(dir.join(format!("{volume}.ext4")), b"image").unwrap();
            std::fs::write(
                dir.join(format!("{volume}.ext4.owner")),
                format!("{owner}\n"),
            )
            .unwrap();
            age(&dir.join(format!("{volume}.ext4.owner")), secs);
        }
        std::fs::write(dir.join("legacy.ext4"), b"image").unwrap();
        let listing = helper(&["owned", d, "netA"]);
        let mut names = stale_records(&listing, Duration::ZERO).unwrap();
        names.sort();
        assert_eq!(names, ["fresh", "old"], "{listing}");
        assert_eq!(
            stale_records(&listing, ORPHAN_RECLAIM_GRACE).unwrap(),
            ["old"]
        );
        for volume in ["old", "fresh", "theirs", "legacy"] {
            let image = format!("{d}/{volume}.ext4");
            let said = helper(&["reclaim", &image, "netA", "600"]);
            let gone = !dir.join(format!("{volume}.ext4")).exists();
            assert_eq!(gone, volume == "old", "{volume}: {said}");
            assert_eq!(said.trim(), if gone { "REMOVED" } else { "KEPT" });
        }
        assert!(!dir.join("old.ext4.owner").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Which source networks may open connections to runnerd at all.
//!
//! Sessions on one Docker network can reach each other's runnerd. The token keeps them from doing
//! anything with it, but not from holding connections (descriptors, per-source slots). So a
//! backend may name the networks its spawner replicas connect from in a file (one network per
//! line, `#` comments; see [`crate::shared::cidr`]) and runnerd closes every connection from
//! elsewhere right after `accept`, before reading a byte. Loopback is always admitted.
//!
//! The file is the truth and may change while runnerd runs (replicas come and go): it is looked at
//! again on every accept and re-read when its identity (inode, size, mtime) changes.
//! - No file: no restriction (the local backend, Kubernetes with network policies).
//! - A file runnerd cannot trust (not a regular file, a symlink, not owned by runnerd's user, or
//!   writable by group/others), or one that does not parse: only loopback is admitted, and the
//!   reason is logged once per change. Failing open would hand the session the other sessions.
use crate::shared::cidr::Cidr;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the allowlist inside runnerd's state base.
pub const ALLOWED_SOURCES_FILE: &str = "allowed-sources";
/// Largest allowlist file read.
pub const MAX_ALLOWED_SOURCES_BYTES: u64 = 64 * 1024;

/// What the file said the last time it was read.
#[derive(Clone, Debug, PartialEq)]
enum Policy {
    /// No file: every source.
    Everyone,
    /// Loopback plus these networks (an unusable file leaves the list empty).
    Only(Vec<Cidr>),
}

type Identity = Option<(u64, u64, u64, i64, i64)>;

struct Loaded {
    /// The file's identity when it was last read; `None` before the first read.
    identity: Option<Identity>,
    policy: Policy,
}

/// The allowlist, reloaded when its file changes.
pub struct SourceAllowlist {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    Some((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// Reads and checks the file; `Err` says why it cannot be trusted.
fn read_policy(path: &Path) -> Result<Policy, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Policy::Everyone),
        Err(err) => return Err(format!("cannot open it: {err}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:o}: only runnerd's user may be able to write it",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    file.take(MAX_ALLOWED_SOURCES_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_ALLOWED_SOURCES_BYTES {
        return Err(format!("larger than {MAX_ALLOWED_SOURCES_BYTES} bytes"));
    }
    Cidr::parse_list(&text)
        .map(Policy::Only)
        .map_err(|e| e.to_string())
}

impl SourceAllowlist {
    /// The allowlist kept in `path` (read at once, then on change).
    pub fn new(path: PathBuf) -> SourceAllowlist {
        let list = SourceAllowlist {
            path,
            loaded: Mutex::new(Loaded {
                identity: None,
                policy: Policy::Everyone,
            }),
        };
        list.refresh();
        list
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn refresh(&self) -> Policy {
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .and_then(|m| identity(&m));
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.identity == Some(current) {
            return loaded.policy.clone();
        }
        let policy = match read_policy(&self.path) {
            Ok(policy) => {
                tracing::info!(path = %self.path.display(), ?policy, "connection source allowlist loaded");
                policy
            }
            Err(reason) => {
                tracing::error!(path = %self.path.display(), %reason, "connection source allowlist unusable: admitting loopback only");
                Policy::Only(Vec::new())
            }
        };
        loaded.identity = Some(current);
        loaded.policy = policy.clone();
        policy
    }

    /// Whether a connection from `source` may be served.
    pub fn admits(&self, source: IpAddr) -> bool {
        if source.to_canonical().is_loopback() {
            return true;
        }
        match self.refresh() {
            Policy::Everyone => true,
            Policy::Only(networks) => networks.iter().any(|n| n.contains(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// No file admits everyone; a written file admits loopback and its networks only; a rewrite
    /// takes effect at the next connection; removing it lifts the restriction.
    #[test]
    fn follows_the_file() {
        let dir = std::env::temp_dir().join(format!("tale-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(ALLOWED_SOURCES_FILE);
        let list = SourceAllowlist::new(path.clone());
        assert!(list.admits(ip("10.9.9.9")));
        std::fs::write(&path, "10.213.0.0/28 # control range\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(list.admits(ip("10.213.0.5")));
        assert!(!list.admits(ip("10.213.0.77")), "a session address");
        assert!(list.admits(ip("127.0.0.1")) && list.admits(ip("::1")));
        // Same size, new content: the identity includes the mtime (and the rename gives a new inode).
        let next = dir.join("next");
        std::fs::write(&next, "10.213.0.64/28\n").unwrap();
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(list.admits(ip("10.213.0.77")));
        assert!(!list.admits(ip("10.213.0.5")));
        std::fs::remove_file(&path).unwrap();
        assert!(list.admits(ip("10.213.0.5")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file others may write, a symlink, or one that does not parse admits loopback only.
    #[test]
    fn untrusted_files_fail_closed() {
        let dir = std::env::temp_dir().join(format!("tale-allow-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(ALLOWED_SOURCES_FILE);
        std::fs::write(&path, "0.0.0.0/0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let list = SourceAllowlist::new(path.clone());
        assert!(!list.admits(ip("10.1.1.1")), "world-writable file");
        assert!(list.admits(ip("127.0.0.1")));
        std::fs::remove_file(&path).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "0.0.0.0/0\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(!list.admits(ip("10.1.1.1")), "symlink");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "10.0.0.0/8 not-a-network\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!list.admits(ip("10.1.1.1")), "parse error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

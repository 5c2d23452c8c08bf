//! Per-operation git credentials. The platform grants a credential for one host (`PUT
//! /credentials/git`); runnerd keeps it in memory only — never in an exec's environment, never in a
//! log line — and hands it to the git credential helper (`tale git-credential get`) over a unix
//! socket that only the exec user can connect to, one host per request. Revoking or expiry takes
//! effect at the next git operation because nothing is cached anywhere else. Every access is
//! logged (host only) and counted in `/healthz` as `credentialAccesses`.
use super::limits::{
    CREDENTIAL_QUERY_TIMEOUT, MAX_CREDENTIAL_FIELD_BYTES, MAX_CREDENTIAL_QUERY_BYTES,
    MAX_GIT_CREDENTIALS,
};
use crate::shared::protocol::runnerd::{CredentialAnswer, CredentialQuery, GitCredentialGrant};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// Environment variable through which execs (and so the helper) learn the socket path.
pub use crate::shared::protocol::runnerd::CREDENTIAL_SOCKET_ENV;

/// Why a grant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// The host is not a host[:port] git would send.
    #[error("host must be a host name or address with an optional :port")]
    BadHost,
    /// A field holds a newline or NUL (git's helper protocol is line based) or is too long.
    #[error("username and password must be at most {MAX_CREDENTIAL_FIELD_BYTES} bytes without newlines or NUL")]
    BadField,
    /// Too many hosts.
    #[error("at most {MAX_GIT_CREDENTIALS} hosts may hold a git credential")]
    TooMany,
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

fn valid_field(value: &str) -> bool {
    value.len() <= MAX_CREDENTIAL_FIELD_BYTES && !value.contains(['\n', '\r', '\0'])
}

/// The granted credentials, keyed by lower-cased host.
#[derive(Default)]
pub struct CredentialStore {
    grants: Mutex<HashMap<String, GitCredentialGrant>>,
    accesses: AtomicU64,
}

impl CredentialStore {
    fn grants(&self) -> MutexGuard<'_, HashMap<String, GitCredentialGrant>> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces the credential for `grant.host`.
    pub fn grant(&self, mut grant: GitCredentialGrant) -> Result<(), GrantError> {
        grant.host = grant.host.to_ascii_lowercase();
        if !valid_host(&grant.host) {
            return Err(GrantError::BadHost);
        }
        if !valid_field(&grant.username) || !valid_field(&grant.password) {
            return Err(GrantError::BadField);
        }
        let mut grants = self.grants();
        if !grants.contains_key(&grant.host) && grants.len() >= MAX_GIT_CREDENTIALS {
            return Err(GrantError::TooMany);
        }
        tracing::info!(host = %grant.host, expires_at_ms = ?grant.expires_at_ms, "git credential granted");
        grants.insert(grant.host.clone(), grant);
        Ok(())
    }

    /// Removes the credential for `host`; returns whether there was one.
    pub fn revoke(&self, host: &str) -> bool {
        let existed = self.grants().remove(&host.to_ascii_lowercase()).is_some();
        tracing::info!(host, existed, "git credential revoked");
        existed
    }

    /// The credential for `host` if granted and unexpired at `now_ms`; counts and logs the access.
    pub fn lookup(&self, host: &str, now_ms: u64) -> CredentialAnswer {
        let host = host.to_ascii_lowercase();
        let mut grants = self.grants();
        let expired = grants
            .get(&host)
            .is_some_and(|g| g.expires_at_ms.is_some_and(|at| at <= now_ms));
        if expired {
            grants.remove(&host);
        }
        let answer = grants
            .get(&host)
            .map(|g| CredentialAnswer {
                username: Some(g.username.clone()),
                password: Some(g.password.clone()),
            })
            .unwrap_or_default();
        drop(grants);
        let served = answer.password.is_some();
        if served {
            self.accesses.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(%host, served, expired, "git credential requested");
        answer
    }

    /// Credentials served since boot.
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }
}

/// Binds the credential socket `name` in the directory `dir` (opened by the caller, so the bind,
/// the stale-file removal and the ownership change all go through that descriptor, never a path
/// someone could redirect): owned by the exec user (when given) with mode 0600, so no other user
/// can ask. A stale socket file from an earlier run is replaced.
pub fn bind_socket(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<UnixListener> {
    use nix::sys::stat::{fchmodat, fstatat, FchmodatFlags, Mode, SFlag};
    use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
    use std::os::fd::AsRawFd;
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(errno) => return Err(errno.into()),
    }
    // bind(2) takes a path; naming the directory through its descriptor keeps the bind where
    // the caller opened, whatever happens to the path meanwhile.
    let through_fd = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    let listener = UnixListener::bind(through_fd)?;
    let stat = fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(std::io::Error::other("the bound socket was replaced"));
    }
    fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(0o600),
        FchmodatFlags::FollowSymlink,
    )?;
    if let Some((uid, gid)) = owner {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(listener)
}

/// Answers helper queries until shutdown drains: one JSON line in, one JSON line out, per
/// connection. Each connection is bounded by [`CREDENTIAL_QUERY_TIMEOUT`] and owned by a set that
/// is aborted when this returns.
pub async fn serve_socket(
    listener: UnixListener,
    store: Arc<CredentialStore>,
    path: PathBuf,
    mut stage: tokio::sync::watch::Receiver<super::listener::Stage>,
) {
    let mut queries = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stage.wait_for(|s| *s >= super::listener::Stage::Drain) => return,
            Some(_) = queries.join_next(), if !queries.is_empty() => continue,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, socket = %path.display(), "credential socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let store = store.clone();
        queries.spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_CREDENTIAL_QUERY_BYTES as u64));
            let read =
                tokio::time::timeout(CREDENTIAL_QUERY_TIMEOUT, reader.read_line(&mut line)).await;
            let answer = match (
                read,
                serde_json::from_str::<CredentialQuery>(line.trim_end()),
            ) {
                (Ok(Ok(_)), Ok(query)) => store.lookup(&query.host, crate::shared::clock::now_ms()),
                _ => CredentialAnswer::default(),
            };
            let mut reply = serde_json::to_vec(&answer).expect("answers serialize");
            reply.push(b'\n');
            let _ = tokio::time::timeout(CREDENTIAL_QUERY_TIMEOUT, write.write_all(&reply)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(host: &str, expires: Option<u64>) -> GitCredentialGrant {
        GitCredentialGrant {
            host: host.into(),
            username: "u".into(),
            password: "p".into(),
            expires_at_ms: expires,
        }
    }

    /// Granted hosts answer (case-insensitively), others get nothing, revocation and expiry apply
    /// at the next lookup, and only served lookups count.
    #[test]
    fn grant_lookup_revoke_expire() {
        let store = CredentialStore::default();
        store.grant(grant("Git.Example:8443", None)).unwrap();
        assert_eq!(
            store.lookup("git.example:8443", 0).password.as_deref(),
            Some("p")
        );
        assert_eq!(
            store.lookup("other.example", 0),
            CredentialAnswer::default()
        );
        assert_eq!(store.accesses(), 1);
        assert!(store.revoke("GIT.example:8443"));
        assert_eq!(
            store.lookup("git.example:8443", 0),
            CredentialAnswer::default()
        );
        store.grant(grant("h", Some(100))).unwrap();
        assert!(store.lookup("h", 99).password.is_some());
        assert!(store.lookup("h", 100).password.is_none());
        assert!(!store.revoke("h"), "expired grants are dropped");
    }

    /// Fields that could inject helper-protocol lines, and bad hosts, are refused.
    #[test]
    fn grant_validation() {
        let store = CredentialStore::default();
        let mut bad = grant("h", None);
        bad.password = "p\nhost=evil".into();
        assert_eq!(store.grant(bad), Err(GrantError::BadField));
        assert_eq!(store.grant(grant("a b", None)), Err(GrantError::BadHost));
        assert_eq!(store.grant(grant("", None)), Err(GrantError::BadHost));
        for i in 0..MAX_GIT_CREDENTIALS {
            store.grant(grant(&format!("h{i}"), None)).unwrap();
        }
        assert_eq!(
            store.grant(grant("one-more", None)),
            Err(GrantError::TooMany)
        );
        store.grant(grant("h0", None)).unwrap();
    }

    /// The password is redacted in debug output.
    #[test]
    fn debug_output_redacts_the_password() {
        let text = format!("{:?}", grant("h", None));
        assert!(!text.contains("\"p\""), "{text}");
    }
}

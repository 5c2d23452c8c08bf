//! runnerd's own state (the journal spool and the git credential socket), kept where the exec user
//! can neither delete, rename nor replace it, and the files API cannot reach it: a fresh directory
//! created at boot inside a base directory outside the workspace (`--state-dir`, default
//! `/run/tale`, else the system temp dir). The fresh name (`runnerd-<pid>-<n>`) is made with
//! `mkdirat`, which fails if anything already has that name, so nothing planted is ever reused;
//! the base must not let the exec user rename its entries (owned by root and not writable by
//! others, or sticky like `/tmp`). The directory is mode 0711: the exec user may connect to the
//! socket inside (0600, its own) but cannot list or change anything. Removed on clean shutdown.
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Base directory of runnerd's state when `--state-dir` is not given.
pub const DEFAULT_STATE_BASE: &str = "/run/tale";
/// Mode of the fresh state directory: others may reach the socket by name, nothing more.
const STATE_DIR_MODE: u32 = 0o711;
/// Mode of the journal spool directory inside it.
const JOURNAL_DIR_MODE: u32 = 0o700;

/// Why the state directory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A system call failed.
    #[error("{path}: {call} failed: {source}")]
    Io {
        path: PathBuf,
        call: &'static str,
        #[source]
        source: Errno,
    },
    /// The base lets other users rename or replace its entries.
    #[error("{path} is writable by other users and not sticky: another user could replace runnerd's state there")]
    NotPrivate { path: PathBuf },
}

/// The fresh state directory of this runnerd.
pub struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

fn flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl StateDir {
    /// Makes the state directory in `base` when given (failure is fatal), else in
    /// [`DEFAULT_STATE_BASE`] and, failing that (read-only root filesystem, not root), in the
    /// system temp dir.
    pub fn create(base: Option<&Path>) -> Result<StateDir, StateDirError> {
        if let Some(base) = base {
            return StateDir::create_in(base);
        }
        match StateDir::create_in(Path::new(DEFAULT_STATE_BASE)) {
            Ok(dir) => Ok(dir),
            Err(err) => {
                let fallback = std::env::temp_dir();
                tracing::info!(%err, fallback = %fallback.display(), "default state base unusable; using the temp dir");
                StateDir::create_in(&fallback)
            }
        }
    }

    fn create_in(base: &Path) -> Result<StateDir, StateDirError> {
        let io = |path: &Path, call, source| StateDirError::Io {
            path: path.to_path_buf(),
            call,
            source,
        };
        let from_io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(base)
            .map_err(|e| io(base, "mkdir", from_io(e)))?;
        let base_fd = nix::fcntl::open(
            base,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(base, "open", e))?;
        let stat = fstat(&base_fd).map_err(|e| io(base, "fstat", e))?;
        let me = nix::unistd::geteuid();
        // When runnerd is root, the exec user is someone else: it must not be able to rename
        // entries of the base (writable by group/other without the sticky bit, or owned by it).
        // When runnerd is not root, the exec user is runnerd's own user and nothing can be hidden
        // from it; the state is then only out of the files API's reach.
        let others_may_rename = stat.st_mode & 0o022 != 0 && stat.st_mode & 0o1000 == 0;
        if me.is_root() && (stat.st_uid != 0 || others_may_rename) {
            return Err(StateDirError::NotPrivate {
                path: base.to_path_buf(),
            });
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let name = format!(
                "runnerd-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let path = base.join(&name);
            match mkdirat(&base_fd, name.as_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                // A leftover of an earlier runnerd with the same pid (or a planted name): skip it.
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io(&path, "mkdir", e)),
            }
            let fd = openat(&base_fd, name.as_str(), flags(), Mode::empty())
                .map_err(|e| io(&path, "open", e))?;
            fchmod(&fd, Mode::from_bits_truncate(STATE_DIR_MODE))
                .map_err(|e| io(&path, "fchmod", e))?;
            let dir = StateDir { path, fd };
            dir.make_child("journal", JOURNAL_DIR_MODE)?;
            return Ok(dir);
        }
    }

    fn make_child(&self, name: &str, mode: u32) -> Result<(), StateDirError> {
        let path = self.path.join(name);
        let io = |call, source| StateDirError::Io {
            path: path.clone(),
            call,
            source,
        };
        mkdirat(&self.fd, name, Mode::from_bits_truncate(mode)).map_err(|e| io("mkdir", e))?;
        let fd = openat(&self.fd, name, flags(), Mode::empty()).map_err(|e| io("open", e))?;
        let stat = fstat(&fd).map_err(|e| io("fstat", e))?;
        debug_assert_eq!(
            SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT,
            SFlag::S_IFDIR
        );
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| io("fchmod", e))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the directory (sockets are bound relative to it).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Where the journal spool goes.
    pub fn journal_dir(&self) -> PathBuf {
        self.path.join("journal")
    }

    /// Where the git credential socket is bound.
    pub fn credential_socket(&self) -> PathBuf {
        self.path.join("credential.sock")
    }

    /// Removes the directory and what is in it (clean shutdown).
    pub fn remove(&self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(%err, path = %self.path.display(), "state directory not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Two state dirs in one base are distinct, private (0711, journal 0700) and removable.
    #[test]
    fn fresh_private_dirs() {
        let base = std::env::temp_dir().join(format!("tale-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let a = StateDir::create(Some(&base)).unwrap();
        let b = StateDir::create(Some(&base)).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::metadata(a.path()).unwrap().mode() & 0o7777, 0o711);
        assert_eq!(
            std::fs::metadata(a.journal_dir()).unwrap().mode() & 0o7777,
            0o700
        );
        a.remove();
        assert!(!a.path().exists());
        b.remove();
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// As root, a base other users may write (without the sticky bit) is refused.
    #[test]
    fn shared_writable_base_is_refused_as_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let base = std::env::temp_dir().join(format!("tale-statedir-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            StateDir::create(Some(&base)),
            Err(StateDirError::NotPrivate { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! The directories runnerd prepares at boot, as root, in places the exec user may control.
//!
//! The exec user owns the workspace root, so any name in it (`.home`, a cache dir beneath it) may
//! be a symlink it planted to make root chown or chmod something outside. Every step here is
//! descriptor-relative: each path component is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from the directory above it (or `O_NOFOLLOW` for a configured directory
//! outside the workspace), the opened descriptor is checked to be a directory, and ownership and
//! mode are changed on that descriptor (`fchown`/`fchmod`), never through a path. A planted
//! symlink fails the step; the caller logs it and goes on without that directory.
use super::files::beneath::normalize;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, Gid, Uid};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why a directory was not prepared.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A component is a symlink (or the walk would leave the workspace): refused, never followed.
    #[error("{path}: a symlink is in the way; refused (runnerd never follows it)")]
    Symlink { path: PathBuf },
    /// A file (or device, socket…) sits where the path needs a directory; it is left alone.
    #[error("{path}: exists and is not a directory")]
    NotDirectory { path: PathBuf },
    /// Any other failure of the system call named.
    #[error("{path}: {call} failed: {source}")]
    Io {
        path: PathBuf,
        call: &'static str,
        #[source]
        source: Errno,
    },
}

/// Mode given to directories created on the way.
const CREATED_DIR_MODE: u32 = 0o755;

fn flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
}

fn classify(path: &Path, call: &'static str, errno: Errno) -> DirError {
    let path = path.to_path_buf();
    match errno {
        // ELOOP: O_NOFOLLOW / RESOLVE_NO_SYMLINKS met a symlink; EXDEV: it tried to leave.
        Errno::ELOOP | Errno::EXDEV => DirError::Symlink { path },
        Errno::ENOTDIR => DirError::NotDirectory { path },
        source => DirError::Io { path, call, source },
    }
}

/// Opens the single component `name` of `dir` as a directory, creating it (mode 0755) if missing.
/// `beneath` resolves with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; otherwise `O_NOFOLLOW`.
fn open_or_create_child(
    dir: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    beneath: bool,
) -> Result<OwnedFd, DirError> {
    let open = || {
        if beneath {
            openat2(
                dir,
                name,
                OpenHow::new().flags(flags()).resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                ),
            )
        } else {
            openat(dir, name, flags(), Mode::empty())
        }
    };
    // With O_DIRECTORY a symlink fails as ENOTDIR: tell it apart for the log.
    let refused = |errno| match errno {
        Errno::ENOTDIR
            if fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|stat| {
                SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
            }) =>
        {
            DirError::Symlink {
                path: shown.to_path_buf(),
            }
        }
        errno => classify(shown, "open", errno),
    };
    match open() {
        Ok(fd) => return checked_dir(fd, shown),
        Err(Errno::ENOENT) => {}
        Err(errno) => return Err(refused(errno)),
    }
    match mkdirat(dir, name, Mode::from_bits_truncate(CREATED_DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(classify(shown, "mkdir", errno)),
    }
    let fd = open().map_err(refused)?;
    checked_dir(fd, shown)
}

/// Checks with `fstat` that what was opened is a directory.
fn checked_dir(fd: OwnedFd, shown: &Path) -> Result<OwnedFd, DirError> {
    let stat = fstat(&fd).map_err(|errno| classify(shown, "fstat", errno))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(DirError::NotDirectory {
            path: shown.to_path_buf(),
        });
    }
    Ok(fd)
}

/// The workspace root, created if missing, opened, and (as root) handed to the exec user. The root
/// itself is configuration (its parent is not the exec user's), so it is canonicalized first.
pub fn prepare_root(
    root: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(PathBuf, OwnedFd), std::io::Error> {
    std::fs::create_dir_all(root)?;
    let canonical = std::fs::canonicalize(root)?;
    let fd = nix::fcntl::open(&canonical, flags(), Mode::empty())?;
    let fd = checked_dir(fd, &canonical).map_err(std::io::Error::other)?;
    if let Some((uid, gid)) = owner {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    Ok((canonical, fd))
}

/// What to do with a directory once it is safely open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// `fchown` to this uid:gid.
    pub owner: Option<(u32, u32)>,
    /// `fchmod` to this mode.
    pub mode: Option<u32>,
}

/// Creates (if missing) the directory `path` and applies `settings` to it, never following a
/// symlink the exec user may have planted. A path beneath the workspace root is walked component
/// by component from `root_fd`; a path elsewhere is configuration up to its parent (created and
/// canonicalized) and opened with `O_NOFOLLOW` for its last component.
pub fn prepare(
    root: &Path,
    root_fd: &OwnedFd,
    path: &Path,
    settings: Settings,
) -> Result<(), DirError> {
    let fd = match path.to_str().and_then(|text| normalize(root, text)) {
        Some(rel) if path.is_relative() || path.starts_with(root) => {
            let mut current = root_fd.try_clone().map_err(|e| {
                classify(root, "dup", Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            })?;
            let mut shown = root.to_path_buf();
            for component in rel.as_path().components() {
                let Component::Normal(name) = component else {
                    continue;
                };
                shown.push(name);
                current = open_or_create_child(&current, name, &shown, true)?;
            }
            current
        }
        _ => open_outside(path)?,
    };
    apply(&fd, path, settings)
}

fn open_outside(path: &Path) -> Result<OwnedFd, DirError> {
    let io = |call, e: std::io::Error| {
        classify(path, call, Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(DirError::NotDirectory {
            path: path.to_path_buf(),
        });
    };
    std::fs::create_dir_all(parent).map_err(|e| io("mkdir", e))?;
    let parent = std::fs::canonicalize(parent).map_err(|e| io("canonicalize", e))?;
    let parent_fd = nix::fcntl::open(&parent, flags(), Mode::empty())
        .map_err(|errno| classify(&parent, "open", errno))?;
    open_or_create_child(&parent_fd, name, path, false)
}

fn apply(fd: &OwnedFd, path: &Path, settings: Settings) -> Result<(), DirError> {
    if let Some(mode) = settings.mode {
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(|errno| classify(path, "fchmod", errno))?;
    }
    if let Some((uid, gid)) = settings.owner {
        fchown(
            fd.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|errno| classify(path, "fchown", errno))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tale-bootdirs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ws")).unwrap();
        dir
    }

    /// A symlink planted at a name beneath the root, or at a configured dir's last component,
    /// is refused and its target keeps its mode.
    #[test]
    fn planted_symlinks_are_refused() {
        let base = scratch("symlink");
        let victim = base.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (root, root_fd) = prepare_root(&base.join("ws"), None).unwrap();
        std::os::unix::fs::symlink(&victim, root.join(".home")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("cache")).unwrap();
        std::os::unix::fs::symlink(&victim, base.join("outside")).unwrap();
        let chmod = Settings {
            owner: None,
            mode: Some(0o1777),
        };
        for path in [
            root.join(".home"),
            root.join("cache/npm"),
            base.join("outside"),
        ] {
            let err = prepare(&root, &root_fd, &path, chmod).unwrap_err();
            assert!(matches!(err, DirError::Symlink { .. }), "{path:?}: {err}");
        }
        let mode = std::fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert!(!victim.join("npm").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// Missing directories are created, beneath the root and outside it, and get their mode.
    #[test]
    fn creates_and_sets_mode() {
        let base = scratch("create");
        let (root, root_fd) = prepare_root(&base.join("ws"), None).unwrap();
        let settings = Settings {
            owner: None,
            mode: Some(0o1777),
        };
        for path in [root.join("a/b"), base.join("c/d"), PathBuf::from(".rel")] {
            prepare(&root, &root_fd, &path, settings).unwrap();
            let full = if path.is_relative() {
                root.join(&path)
            } else {
                path
            };
            assert_eq!(std::fs::metadata(&full).unwrap().mode() & 0o7777, 0o1777);
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! The blocking, descriptor-relative file operations behind [`super::Workspace`].
use super::beneath::{open_beneath, open_dir_beneath, RelPath};
use super::{FileError, NotFound};
use crate::shared::protocol::runnerd::{DirEntry, EntryType, ListReply};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Deepest directory tree `delete` removes.
const MAX_DELETE_DEPTH: usize = 512;
/// Skipped reason (stage) for a path that is a FIFO, socket or device.
pub const NOT_REGULAR: &str = "not_a_regular_file";

/// FIFO, socket, character or block device: files whose "content" can block or has side effects.
pub(super) fn is_special(mode: u32) -> bool {
    matches!(
        SFlag::from_bits_truncate(mode) & SFlag::S_IFMT,
        SFlag::S_IFIFO | SFlag::S_IFSOCK | SFlag::S_IFCHR | SFlag::S_IFBLK
    )
}

pub(super) fn reason(errno: Errno) -> String {
    match errno {
        // The kernel refused to leave the root (RESOLVE_BENEATH) or to follow a magic link.
        Errno::EXDEV | Errno::ELOOP => "unsafe_path".into(),
        other => other.desc().to_string(),
    }
}

pub(super) fn chown_at(
    dir: impl AsFd,
    name: &OsStr,
    owner: Option<(u32, u32)>,
) -> Result<(), Errno> {
    match owner {
        Some((uid, gid)) => fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ),
        None => Ok(()),
    }
}

/// Opens the parent directory of `rel`, creating missing directories one at a time beneath the
/// root (each owned by `owner`).
pub(super) fn ensure_parent(
    root: &OwnedFd,
    rel: &RelPath,
    owner: Option<(u32, u32)>,
) -> Result<(OwnedFd, std::ffi::OsString), String> {
    let (parent, name) = rel.split().ok_or("unsafe_path")?;
    let name = name.to_os_string();
    let mut current = root.try_clone().map_err(|e| e.to_string())?;
    for prefix in parent.prefixes() {
        current = match open_dir_beneath(root, &prefix) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let (_, component) = prefix.split().ok_or("unsafe_path")?;
                match mkdirat(&current, component, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => chown_at(&current, component, owner).map_err(reason)?,
                    Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(reason(errno)),
                }
                open_dir_beneath(root, &prefix).map_err(reason)?
            }
            Err(errno) => return Err(reason(errno)),
        };
    }
    Ok((current, name))
}

/// A temporary file next to the final name, not yet renamed into place.
pub struct Staging {
    pub file: std::fs::File,
    pub temp_name: std::ffi::OsString,
}

/// Creates a fresh temporary file in the (created) parent of `rel`.
pub fn create_temp(
    root: &OwnedFd,
    rel: &RelPath,
    owner: Option<(u32, u32)>,
) -> Result<Staging, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (parent, name) = ensure_parent(root, rel, owner)?;
    // Replacing a FIFO, socket or device by a file is refused like reading one: the caller named
    // something that is not a file.
    if let Ok(stat) = fstatat(&parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        if is_special(stat.st_mode) {
            return Err(NOT_REGULAR.into());
        }
    }
    let temp_name: std::ffi::OsString = format!(
        ".tale-stage-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .into();
    let fd = openat(
        &parent,
        temp_name.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(reason)?;
    chown_at(&parent, &temp_name, owner).map_err(reason)?;
    Ok(Staging {
        file: std::fs::File::from(fd),
        temp_name,
    })
}

/// Renames the temporary file over the final name (replacing a symlink there, never following it).
pub fn commit_temp(root: &OwnedFd, rel: &RelPath, temp_name: &OsStr) -> Result<(), String> {
    let (parent_rel, name) = rel.split().ok_or("unsafe_path")?;
    let parent = open_dir_beneath(root, &parent_rel).map_err(reason)?;
    renameat(&parent, temp_name, &parent, name).map_err(|errno| {
        let _ = unlinkat(&parent, temp_name, UnlinkatFlags::NoRemoveDir);
        reason(errno)
    })
}

/// Removes a temporary file after a failed download.
pub fn discard_temp(root: &OwnedFd, rel: &RelPath, temp_name: &OsStr) {
    if let Some((parent_rel, _)) = rel.split() {
        if let Ok(parent) = open_dir_beneath(root, &parent_rel) {
            let _ = unlinkat(&parent, temp_name, UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Writes a whole file at `rel` through a temporary file; `fill` writes the content.
pub fn write_file(
    root: &OwnedFd,
    rel: &RelPath,
    owner: Option<(u32, u32)>,
    fill: impl FnOnce(&mut std::fs::File) -> Result<u64, String>,
) -> Result<u64, String> {
    let mut staging = create_temp(root, rel, owner)?;
    let written = fill(&mut staging.file);
    drop(staging.file);
    match written {
        Ok(bytes) => {
            commit_temp(root, rel, &staging.temp_name)?;
            Ok(bytes)
        }
        Err(err) => {
            discard_temp(root, rel, &staging.temp_name);
            Err(err)
        }
    }
}

/// `rm -rf` of `rel` (never the root), never following a symlink.
pub fn delete(root: &OwnedFd, rel: &RelPath) -> Result<(), String> {
    let (parent_rel, name) = rel.split().ok_or("unsafe_path")?;
    let parent = match open_dir_beneath(root, &parent_rel) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        Err(errno) => return Err(reason(errno)),
    };
    match fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(reason(errno)),
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            remove_tree(&parent, name, 0).map_err(reason)
        }
        Ok(_) => unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir).map_err(reason),
    }
}

fn remove_tree(parent: &OwnedFd, name: &OsStr, depth: usize) -> Result<(), Errno> {
    if depth > MAX_DELETE_DEPTH {
        return Err(Errno::ELOOP);
    }
    let dir_fd = openat(
        parent,
        name,
        OFlag::O_RDONLY
            | OFlag::O_DIRECTORY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let at = dir_fd.try_clone().map_err(|_| Errno::EMFILE)?;
    let mut dir = nix::dir::Dir::from_fd(dir_fd)?;
    let names: Vec<std::ffi::OsString> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|entry| {
            <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(entry.file_name().to_bytes())
                .to_os_string()
        })
        .filter(|n: &std::ffi::OsString| n != "." && n != "..")
        .collect();
    drop(dir);
    for child in names {
        match fstatat(&at, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat)
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR =>
            {
                remove_tree(&at, &child, depth + 1)?
            }
            Ok(_) => unlinkat(&at, child.as_os_str(), UnlinkatFlags::NoRemoveDir)?,
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno),
        }
    }
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno),
    }
}

fn entry_type(mode: u32) -> EntryType {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => EntryType::Dir,
        SFlag::S_IFREG => EntryType::File,
        _ => EntryType::Other,
    }
}

/// The entries of directory `rel`, sorted by name.
pub fn list(root: &OwnedFd, rel: &RelPath) -> Result<ListReply, NotFound> {
    let fd = open_beneath(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
    )
    .map_err(|_| NotFound)?;
    let at = fd.try_clone().map_err(|_| NotFound)?;
    let mut dir = nix::dir::Dir::from_fd(fd).map_err(|_| NotFound)?;
    let mut entries: Vec<DirEntry> = dir
        .iter()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = String::from_utf8_lossy(entry.file_name().to_bytes()).into_owned();
            if name == "." || name == ".." {
                return None;
            }
            Some(
                match fstatat(&at, entry.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(stat) => DirEntry {
                        name,
                        kind: entry_type(stat.st_mode),
                        size: stat.st_size.max(0) as u64,
                        mtime_ms: (stat.st_mtime.max(0) as u64) * 1000
                            + (stat.st_mtime_nsec.max(0) as u64) / 1_000_000,
                    },
                    Err(_) => DirEntry {
                        name,
                        kind: EntryType::Other,
                        size: 0,
                        mtime_ms: 0,
                    },
                },
            )
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ListReply { entries })
}

/// The bytes of the regular file `rel`, if it has at most `cap` bytes. Opened with `O_NONBLOCK`
/// (a FIFO with no writer would block the open forever) and checked with `fstat` before any read.
pub fn read(root: &OwnedFd, rel: &RelPath, cap: u64) -> Result<Vec<u8>, FileError> {
    let fd = open_beneath(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )
    .map_err(|errno| match errno {
        // open(2) refuses a unix socket (or a device with no driver behind it) with ENXIO,
        // before there is a descriptor to `fstat`: a special file all the same.
        Errno::ENXIO => FileError::NotRegular,
        _ => FileError::NotFound,
    })?;
    let stat = nix::sys::stat::fstat(&fd).map_err(|_| NotFound)?;
    if is_special(stat.st_mode) {
        return Err(FileError::NotRegular);
    }
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|_| NotFound)?;
    if !meta.is_file() || meta.len() > cap {
        return Err(FileError::NotFound);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| NotFound)?;
    if bytes.len() as u64 > cap {
        return Err(FileError::NotFound);
    }
    Ok(bytes)
}

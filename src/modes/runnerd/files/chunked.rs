//! Files of any size in pieces: a ranged read (`GET /fs/read?offset=&length=`) and a chunked
//! write (`POST /files/write?path=&offset=[&commit=true]`, the chunk as the raw body).
//!
//! A chunked write grows a hidden staging file next to the final name (`.<name>.tale-upload`);
//! the chunk at offset 0 creates it afresh, every later chunk must start exactly where it ends,
//! and `commit` renames it over the final name (replacing a symlink there, never following it).
//! The exec user can touch the staging file between two chunks, so a later chunk opens it with
//! `O_NOFOLLOW | O_NONBLOCK` beneath the root and writes only into a regular file with one link
//! that the exec user owns: never a symlink's, FIFO's or hard link's target.
use super::beneath::{open_beneath, open_dir_beneath, RelPath};
use super::ops::{ensure_parent, is_special, reason};
use super::{FileError, NotFound};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

/// Why a chunk was not written.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The path is not allowed or a file operation failed (the reason, e.g. `unsafe_path`).
    Path(String),
    /// The chunk does not start where the staging file ends (its size; 0 when there is none).
    Offset(u64),
    /// The final name is a FIFO, socket or device.
    NotRegular,
}

/// The staging file's name for the final name `name`.
pub fn staging_name(name: &OsStr) -> OsString {
    let mut staging = OsString::from(".");
    staging.push(name);
    staging.push(".tale-upload");
    staging
}

/// Writes `data` at `offset` of the staging file of `rel` and, with `commit`, renames it into
/// place. Returns the staging file's size after the write.
pub fn write_chunk(
    root: &OwnedFd,
    rel: &RelPath,
    owner: Option<(u32, u32)>,
    offset: u64,
    data: &[u8],
    commit: bool,
) -> Result<u64, WriteFailure> {
    let (parent, name) = if offset == 0 {
        ensure_parent(root, rel, owner).map_err(WriteFailure::Path)?
    } else {
        let (parent_rel, name) = rel
            .split()
            .ok_or(WriteFailure::Path("unsafe_path".into()))?;
        let parent = open_dir_beneath(root, &parent_rel).map_err(|_| WriteFailure::Offset(0))?;
        (parent, name.to_os_string())
    };
    if let Ok(stat) = fstatat(&parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        if is_special(stat.st_mode) {
            return Err(WriteFailure::NotRegular);
        }
    }
    let staging = staging_name(&name);
    let mut file = if offset == 0 {
        match unlinkat(&parent, staging.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(WriteFailure::Path(reason(errno))),
        }
        let fd = openat(
            &parent,
            staging.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|errno| WriteFailure::Path(reason(errno)))?;
        super::ops::chown_at(&parent, &staging, owner)
            .map_err(|errno| WriteFailure::Path(reason(errno)))?;
        std::fs::File::from(fd)
    } else {
        let fd = openat(
            &parent,
            staging.as_os_str(),
            OFlag::O_WRONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            Errno::ENOENT => WriteFailure::Offset(0),
            // A FIFO without a reader (O_NONBLOCK): not a file runnerd writes.
            Errno::ENXIO => WriteFailure::Path("unsafe_path".into()),
            other => WriteFailure::Path(reason(other)),
        })?;
        let stat = fstat(&fd).map_err(|errno| WriteFailure::Path(reason(errno)))?;
        let regular = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        let owned = owner.is_none_or(|(uid, _)| stat.st_uid == uid);
        if !regular || stat.st_nlink != 1 || !owned {
            return Err(WriteFailure::Path("unsafe_path".into()));
        }
        let size = stat.st_size.max(0) as u64;
        if size != offset {
            return Err(WriteFailure::Offset(size));
        }
        let mut file = std::fs::File::from(fd);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| WriteFailure::Path(e.to_string()))?;
        file
    };
    file.write_all(data)
        .map_err(|e| WriteFailure::Path(e.to_string()))?;
    drop(file);
    if commit {
        renameat(&parent, staging.as_os_str(), &parent, name.as_os_str())
            .map_err(|errno| WriteFailure::Path(reason(errno)))?;
    }
    Ok(offset + data.len() as u64)
}

/// At most `length` bytes of the regular file `rel` from `offset`, and the file's size.
pub fn read_range(
    root: &OwnedFd,
    rel: &RelPath,
    offset: u64,
    length: u64,
) -> Result<(Vec<u8>, u64), FileError> {
    let fd = open_beneath(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )
    .map_err(|_| NotFound)?;
    let stat = fstat(&fd).map_err(|_| NotFound)?;
    if is_special(stat.st_mode) {
        return Err(FileError::NotRegular);
    }
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|_| NotFound)?;
    if !meta.is_file() {
        return Err(FileError::NotFound);
    }
    let size = meta.len();
    let mut bytes = Vec::with_capacity(length.min(size.saturating_sub(offset)) as usize);
    file.seek(SeekFrom::Start(offset)).map_err(|_| NotFound)?;
    file.take(length)
        .read_to_end(&mut bytes)
        .map_err(|_| NotFound)?;
    Ok((bytes, size))
}

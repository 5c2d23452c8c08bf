//! The only module allowed to use `unsafe`: pre-exec hooks and process-level system calls.
//!
//! Everything here is a thin wrapper that gives the rest of the crate a safe signature.
#![allow(unsafe_code)]

pub mod pidfd;
pub mod proctree;
pub mod pty;
pub mod rlimit;

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the spawned child the leader of a new session (and so of a new process group whose id is
/// its pid), detached from any controlling terminal. runnerd signals the whole group with
/// `kill(-pgid)` on cancel and deadline, which reaches grandchildren that stayed in the group.
pub fn spawn_in_new_session(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec; it only calls setsid(2), which is
    // async-signal-safe, and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        })
    }
}

/// Drops the spawned child to `uid`:`gid` with exactly `groups` as its supplementary groups. std's
/// own `uid`/`gid` would clear the supplementary groups, which would lose runnerd's per-exec mark
/// group. Needs root (CAP_SETGID and CAP_SETUID); after setuid the child holds no capability, so
/// neither it nor its descendants can drop or change these groups.
pub fn drop_privileges<'a>(
    command: &'a mut Command,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> &'a mut Command {
    let groups: Vec<nix::unistd::Gid> = groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // SAFETY: the closure runs in the forked child before exec; setgroups(2), setgid(2) and
    // setuid(2) are async-signal-safe, and `groups` was allocated before the fork (the closure only
    // reads it).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)).map_err(std::io::Error::from)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(std::io::Error::from)?;
            Ok(())
        })
    }
}

/// Marks this process as a child subreaper: orphans of its descendants are re-parented to it, so
/// the same reaping code path runs whether runnerd is PID 1 or not (tests, local backend).
pub fn become_child_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// mimalloc options (the `mi_option_e` order in mimalloc v3's mimalloc.h).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_ARENA_RESERVE: libmimalloc_sys::mi_option_t = 23;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// First arena mimalloc reserves, in KiB; more arenas follow as a process needs them.
const ARENA_RESERVE_KIB: core::ffi::c_long = 16 * 1024;

/// Commit allocator arenas lazily (eager commit would make every idle runnerd pay several MiB of
/// RSS for memory it never touches), and start with a 16 MiB arena instead of 1 GiB, whose
/// bookkeeping alone is ~150 KiB of touched memory (measured on runnerd's idle RSS). Call first
/// thing in `main`.
pub fn tune_allocator() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; any value is valid.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_RESERVE, ARENA_RESERVE_KIB);
    }
}

/// Give freed memory back to the system at once. mimalloc's default delays the purge (1 s here) and
/// runs it only when an allocating thread comes back, so a spawner that absorbed a burst of request
/// bodies and then went idle kept that memory (measured: 79 MiB an idle minute after a flood whose
/// bodies were all freed, against 27 MiB before it). The spawner's allocations are not hot enough
/// for the extra purges to matter; runnerd keeps the default.
pub fn purge_freed_memory_at_once() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; any value is valid.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// Reads exactly `len` bytes of `file` at `offset` into fresh memory, without zero-filling it
/// first (the journal's spool reads run at stream speed; a memset per read is measurable there).
pub fn read_exact_at(
    file: &std::fs::File,
    len: usize,
    offset: u64,
) -> std::io::Result<bytes::Bytes> {
    use std::os::fd::AsRawFd;
    let mut buffer = bytes::BytesMut::with_capacity(len);
    while buffer.len() < len {
        let filled = buffer.len();
        let at = offset + filled as u64;
        let spare = &mut buffer.spare_capacity_mut()[..len - filled];
        // SAFETY: pread(2) writes at most `spare.len()` bytes into `spare`, which is owned,
        // writable memory of that length; the kernel never reads it.
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        match read {
            -1 => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                // SAFETY: pread initialised the first `n` bytes of the spare capacity.
                unsafe { buffer.set_len(filled + n as usize) }
            }
        }
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    /// The option numbers name the options we mean: their defaults are mimalloc v3's (eager
    /// commit "2 = on overcommit systems", a 1 GiB first arena, a 1 s purge delay). Run before any
    /// `tune_allocator`.
    #[test]
    fn mimalloc_option_numbers_match_v3() {
        // SAFETY: mi_option_get only reads mimalloc's option table.
        let (eager, reserve, purge_delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_RESERVE),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!((eager, reserve, purge_delay), (2, 1024 * 1024, 1000));
    }
}

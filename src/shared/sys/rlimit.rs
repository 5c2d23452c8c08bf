//! runnerd's own descriptor limit: raised to the hard limit at boot so connections and execs do not
//! compete for the default 1024, while execs get back the soft limit runnerd inherited (programs
//! that use `select(2)` break above 1024 descriptors).
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

/// The `RLIMIT_NOFILE` runnerd started with (soft, hard), recorded by [`raise_nofile_limit`].
static INHERITED_NOFILE: OnceLock<(libc::rlim_t, libc::rlim_t)> = OnceLock::new();

fn get_nofile() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set_nofile(soft: libc::rlim_t, hard: libc::rlim_t) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and remembers the inherited one
/// for [`restore_inherited_nofile_limit`]. Returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let (soft, hard) = get_nofile()?;
    let _ = INHERITED_NOFILE.set((soft, hard));
    if soft < hard {
        set_nofile(hard, hard)?;
    }
    Ok(hard)
}

/// The soft `RLIMIT_NOFILE` in force now.
pub fn nofile_soft_limit() -> std::io::Result<u64> {
    get_nofile().map(|(soft, _)| soft)
}

/// Gives the child the `RLIMIT_NOFILE` runnerd inherited (when [`raise_nofile_limit`] ran).
pub fn restore_inherited_nofile_limit(command: &mut Command) -> &mut Command {
    let Some(&(soft, hard)) = INHERITED_NOFILE.get() else {
        return command;
    };
    // SAFETY: the closure runs in the forked child before exec; it only calls setrlimit(2), a
    // plain system call, on values copied into it.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

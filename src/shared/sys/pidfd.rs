//! Signalling one process by a handle that cannot be recycled: a pidfd (Linux ≥ 5.3) refers to the
//! process it was opened for, so a signal sent through it never reaches a later process that
//! happens to get the same pid. Older kernels fall back to `kill(2)` by pid.
#![allow(unsafe_code)]

use nix::sys::signal::Signal;
use std::os::fd::{FromRawFd, OwnedFd};

/// A handle on one process, taken before its `/proc` entry is re-checked.
#[derive(Debug)]
pub enum ProcessHandle {
    /// A pidfd: signals reach this process or nobody.
    Fd(OwnedFd),
    /// The kernel has no pidfd_open: signals go by pid (a recycled pid is possible, if unlikely).
    Pid(i32),
}

impl ProcessHandle {
    /// Opens a handle on `pid`; `Err` when no such process exists any more.
    pub fn open(pid: i32) -> std::io::Result<ProcessHandle> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it touches
        // no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the kernel just handed us this descriptor; nobody else owns it.
            return Ok(ProcessHandle::Fd(unsafe {
                OwnedFd::from_raw_fd(fd as i32)
            }));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS) => Ok(ProcessHandle::Pid(pid)),
            _ => Err(err),
        }
    }

    /// Sends `signal`; `Err(ESRCH)` when the process is gone (also when it is a zombie waiting to
    /// be reaped, for pidfds).
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        match self {
            ProcessHandle::Fd(fd) => {
                use std::os::fd::AsRawFd;
                // SAFETY: pidfd_send_signal with a null siginfo behaves like kill(2) on the
                // process the descriptor refers to; it reads no memory of ours.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal as libc::c_int,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
            ProcessHandle::Pid(pid) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal)
                    .map_err(std::io::Error::from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle signals its own process; after that process is reaped, the handle reaches nobody.
    #[test]
    fn handle_outlives_its_process_safely() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let handle = ProcessHandle::open(child.id() as i32).unwrap();
        handle.signal(Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        if let ProcessHandle::Fd(_) = handle {
            let err = handle.signal(Signal::SIGKILL).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        }
    }
}

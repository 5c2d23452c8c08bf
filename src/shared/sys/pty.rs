//! Pseudo-terminals: open a pair, make the slave a child's controlling terminal, and read or set
//! a terminal's window size.
use nix::fcntl::OFlag;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

/// Both ends of a new pseudo-terminal.
pub struct PtyPair {
    /// The side runnerd reads output from and writes keystrokes to.
    pub master: OwnedFd,
    /// The side the exec gets as its stdin, stdout, stderr and controlling terminal.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal pair of `size`. Both ends are close-on-exec, so an exec spawned by
/// another thread at the same moment never inherits them (an inherited slave would keep the
/// master from ever reporting the end of output); the child gets the slave through its stdio.
pub fn open_pty(size: WindowSize) -> std::io::Result<PtyPair> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let path = nix::pty::ptsname_r(&master)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)?
        .into();
    let master: OwnedFd = master.into();
    set_window_size(master.as_fd(), size)?;
    Ok(PtyPair { master, slave })
}

/// Sets the window size of the terminal behind `fd` (either end of a pty); the kernel sends
/// SIGWINCH to the terminal's foreground process group when it changes.
pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> std::io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points at a live,
    // initialised value on this stack frame; `fd` is a valid open descriptor for the call.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
    if result == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The window size of the terminal behind `fd`, or `None` when it is not a terminal.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    let mut winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points at a live
    // value of that type on this stack frame; `fd` is a valid open descriptor for the call.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut winsize) };
    (result == 0).then_some(WindowSize {
        cols: winsize.ws_col,
        rows: winsize.ws_row,
    })
}

/// Makes the child's stdin (the pty slave, by then) its controlling terminal. Must be added after
/// [`super::spawn_in_new_session`]: only a session leader without a terminal may take one.
pub fn take_controlling_terminal(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec; it only calls ioctl(2), which is
    // async-signal-safe, on the child's own fd 0, and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A new pair carries the asked size, resizes are seen from the slave, and bytes written to
    /// the master come out of the slave (the line discipline in between).
    #[test]
    fn pair_size_and_bytes() {
        let pair = open_pty(WindowSize { cols: 91, rows: 17 }).unwrap();
        assert_eq!(
            window_size(pair.slave.as_fd()),
            Some(WindowSize { cols: 91, rows: 17 })
        );
        set_window_size(
            pair.master.as_fd(),
            WindowSize {
                cols: 120,
                rows: 40,
            },
        )
        .unwrap();
        assert_eq!(
            window_size(pair.slave.as_fd()),
            Some(WindowSize {
                cols: 120,
                rows: 40
            })
        );
        let mut master = std::fs::File::from(pair.master);
        let mut slave = std::fs::File::from(pair.slave);
        master.write_all(b"hi\n").unwrap();
        let mut got = [0u8; 3];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi\n");
        let pipe = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(window_size(pipe.as_fd()), None);
    }
}

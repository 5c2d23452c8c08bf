//! The local terminal of `tale session shell` and interactive `attach`: raw mode that is restored
//! on every way out, its size, and the detach key sequence.
use super::client::CliError;
use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::{AsFd, BorrowedFd};

/// The detach sequence when `--detach-keys` is not given (as Docker's).
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Local stdin in raw mode (no echo, no line editing, no signals from keys: Ctrl-C is a byte the
/// remote terminal gets). The saved mode comes back when this is dropped, which every exit path
/// of the interactive loop does (including a panic's unwinding).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> Result<RawMode, CliError> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| CliError::local(format!("cannot read the terminal's mode: {e}")))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)
            .map_err(|e| CliError::local(format!("cannot put the terminal in raw mode: {e}")))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The local terminal's size (stdout's, else stdin's), or 80x24 when neither is a terminal.
pub fn local_size() -> (u16, u16) {
    let of = |fd: BorrowedFd<'_>| crate::shared::sys::pty::window_size(fd);
    of(std::io::stdout().as_fd())
        .or_else(|| of(std::io::stdin().as_fd()))
        .filter(|size| size.cols > 0 && size.rows > 0)
        .map_or((80, 24), |size| (size.cols, size.rows))
}

/// Parses `--detach-keys`: comma-separated keys, each `ctrl-<letter or one of @[\]^_>` or a
/// single printable character; an empty text disables detaching.
pub fn parse_detach_keys(text: &str) -> Result<Vec<u8>, CliError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|key| {
            let key = key.trim();
            let control = key
                .strip_prefix("ctrl-")
                .and_then(|rest| match rest.as_bytes() {
                    [c @ (b'a'..=b'z' | b'A'..=b'Z')] => Some(c.to_ascii_uppercase() & 0x1f),
                    [c @ (b'@' | b'[' | b'\\' | b']' | b'^' | b'_')] => Some(c & 0x1f),
                    _ => None,
                });
            match (control, key.as_bytes()) {
                (Some(byte), _) => Ok(byte),
                (None, [c]) if c.is_ascii_graphic() => Ok(*c),
                _ => Err(CliError::local(format!(
                    "--detach-keys: {key:?} is not a key (use ctrl-<letter> or one character, \
                     comma-separated, e.g. {DEFAULT_DETACH_KEYS})"
                ))),
            }
        })
        .collect()
}

/// Finds the detach sequence in typed bytes. Keys that start the sequence are held back until it
/// completes (detach) or breaks (then they are forwarded, in order, with what follows).
pub struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

/// What one chunk of typed bytes means.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes for the remote terminal.
    pub forward: Vec<u8>,
    /// The sequence completed (bytes after it in the chunk are dropped).
    pub detach: bool,
}

impl DetachScanner {
    pub fn new(keys: Vec<u8>) -> DetachScanner {
        DetachScanner { keys, matched: 0 }
    }

    pub fn feed(&mut self, input: &[u8]) -> Scanned {
        let mut forward = Vec::with_capacity(input.len());
        for &byte in input {
            if self.keys.is_empty() {
                forward.push(byte);
                continue;
            }
            if byte == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Scanned {
                        forward,
                        detach: true,
                    };
                }
                continue;
            }
            // The sequence broke: what was held goes out, and this byte may start it anew.
            forward.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if byte == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return Scanned {
                        forward,
                        detach: true,
                    };
                }
            } else {
                forward.push(byte);
            }
        }
        Scanned {
            forward,
            detach: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key names map to the bytes a terminal sends; bad names are refused with the syntax.
    #[test]
    fn detach_key_names() {
        assert_eq!(
            parse_detach_keys(DEFAULT_DETACH_KEYS).unwrap(),
            [0x10, 0x11]
        );
        assert_eq!(
            parse_detach_keys("ctrl-A, x,ctrl-]").unwrap(),
            [1, b'x', 0x1d]
        );
        assert_eq!(parse_detach_keys("").unwrap(), Vec::<u8>::new());
        for bad in ["ctrl-", "ctrl-1", "xy", "ctrl-p,,ctrl-q", " "] {
            assert!(
                parse_detach_keys(bad)
                    .unwrap_err()
                    .message
                    .contains("--detach-keys"),
                "{bad:?}"
            );
        }
    }

    /// The sequence detaches across chunk boundaries; a broken prefix is forwarded in order;
    /// no keys means everything is forwarded.
    #[test]
    fn detach_scanning() {
        let mut scanner = DetachScanner::new(vec![0x10, 0x11]);
        let not = |forward: &[u8]| Scanned {
            forward: forward.to_vec(),
            detach: false,
        };
        assert_eq!(scanner.feed(b"ls\r"), not(b"ls\r"));
        assert_eq!(scanner.feed(b"a\x10"), not(b"a"));
        assert_eq!(scanner.feed(b"b"), not(b"\x10b"));
        assert_eq!(scanner.feed(b"\x10\x10"), not(b"\x10"));
        assert_eq!(
            scanner.feed(b"\x11rest"),
            Scanned {
                forward: Vec::new(),
                detach: true
            }
        );
        assert_eq!(
            scanner.feed(b"x\x10\x11"),
            Scanned {
                forward: b"x".to_vec(),
                detach: true
            }
        );
        let mut single = DetachScanner::new(vec![0x1d]);
        assert_eq!(
            single.feed(b"ab\x1d"),
            Scanned {
                forward: b"ab".to_vec(),
                detach: true
            }
        );
        let mut none = DetachScanner::new(Vec::new());
        assert_eq!(none.feed(b"\x10\x11"), not(b"\x10\x11"));
    }
}

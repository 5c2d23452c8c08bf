//! Path resolution that cannot leave the workspace.
//!
//! A request path is first normalised lexically (NUL refused; absolute paths must lie under the
//! root; `..` may not climb above it). The result is then resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to a descriptor of the root, so a
//! symlink planted in the workspace cannot redirect an operation outside it — whatever it points
//! to, and even if it changes between two checks. Symlinks that stay inside are followed as usual.
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// A path that is the root or beneath it, relative to the root (`""` is the root itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath(PathBuf);

impl RelPath {
    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The path to hand to `openat2`: `.` for the root.
    pub fn as_path(&self) -> &Path {
        if self.is_root() {
            Path::new(".")
        } else {
            &self.0
        }
    }

    /// Parent (the root's parent is `None`) and final name.
    pub fn split(&self) -> Option<(RelPath, &OsStr)> {
        let name = self.0.file_name()?;
        let parent = self.0.parent().map(Path::to_path_buf).unwrap_or_default();
        Some((RelPath(parent), name))
    }

    /// Each prefix of the path, shortest first (`a`, `a/b`, `a/b/c`).
    pub fn prefixes(&self) -> Vec<RelPath> {
        let mut out = Vec::new();
        let mut acc = PathBuf::new();
        for component in self.0.components() {
            acc.push(component);
            out.push(RelPath(acc.clone()));
        }
        out
    }
}

/// Lexical check: `None` when the path contains NUL, is absolute outside `root`, or climbs above it.
pub fn normalize(root: &Path, input: &str) -> Option<RelPath> {
    if input.contains('\0') {
        return None;
    }
    let path = Path::new(input);
    let relative = if path.is_absolute() {
        let mut normal = PathBuf::new();
        for component in path.components() {
            match component {
                Component::RootDir => normal.push("/"),
                Component::CurDir => {}
                Component::ParentDir => {
                    normal.pop();
                }
                Component::Normal(part) => normal.push(part),
                Component::Prefix(_) => return None,
            }
        }
        normal.strip_prefix(root).ok()?.to_path_buf()
    } else {
        path.to_path_buf()
    };
    let mut out = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(RelPath(out))
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `rel` beneath `root` with `flags`. `EXDEV` means the resolution tried to leave the root.
pub fn open_beneath(root: impl AsFd, rel: &RelPath, flags: OFlag) -> Result<OwnedFd, Errno> {
    openat2(root, rel.as_path(), how(flags))
}

/// An `O_PATH` descriptor of the directory `rel` beneath `root`.
pub fn open_dir_beneath(root: impl AsFd, rel: &RelPath) -> Result<OwnedFd, Errno> {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lexical rules: NUL, absolute paths outside, and climbing above the root are refused.
    #[test]
    fn lexical_rules() {
        let root = Path::new("/ws");
        let ok = |p: &str| normalize(root, p).map(|r| r.0.display().to_string());
        assert_eq!(ok("a/b"), Some("a/b".into()));
        assert_eq!(ok("./a/../b"), Some("b".into()));
        assert_eq!(ok("."), Some("".into()));
        assert_eq!(ok("/ws"), Some("".into()));
        assert_eq!(ok("/ws/a/./b"), Some("a/b".into()));
        assert_eq!(ok("/ws/../etc"), None);
        assert_eq!(ok("/wsx/a"), None);
        assert_eq!(ok("/etc/passwd"), None);
        assert_eq!(ok(".."), None);
        assert_eq!(ok("a/../../b"), None);
        assert_eq!(ok("a\0b"), None);
    }
}

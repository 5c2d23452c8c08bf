//! Workspace file operations: stage (inline or URL), delete, list, read — all confined to the
//! workspace root by the kernel (see [`beneath`]), never by string checks alone.
//!
//! Security model. runnerd may run as root, so every path a request names is resolved with
//! `RESOLVE_BENEATH` from a descriptor of the root: symlinks and `..` that would leave the workspace
//! fail the operation (`unsafe_path`) instead of reaching the host. Stage creates parents one
//! directory at a time beneath the root, writes to a fresh temporary file, then renames it over the
//! final name — so a symlink at the final name is replaced, never written through. Delete removes a
//! symlink itself, never its target, and removes trees with descriptor-relative calls that never
//! follow links. Files and directories stage creates belong to the exec user.
pub mod beneath;
pub mod chunked;
pub mod fetch;
mod ops;

use super::limits::{
    FILE_OPS_AT_ONCE, FILE_OP_TIMEOUT, MAX_READ_FILE_BYTES, MAX_STAGE_INLINE_BYTES,
    MAX_STAGE_URL_BYTES, STAGE_URL_TIMEOUT,
};
use crate::shared::protocol::runnerd::decode_lenient_base64;
use crate::shared::protocol::runnerd::{
    DeleteReply, DeleteRequest, ListReply, SkippedPath, StageItem, StageReply, StageRequest,
    StagedFile,
};
use beneath::{normalize, RelPath};
use nix::fcntl::OFlag;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the workspace could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The root is missing or not a directory.
    #[error("cannot open the workspace root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A path was not found, not allowed, or not the right kind: the three are not told apart.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFound;

/// Why `list` or `read` gave nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum FileError {
    /// Missing, not allowed, or a directory where a file was asked for (or the reverse).
    NotFound,
    /// A FIFO, socket or device: its content is never opened for reading.
    NotRegular,
    /// The operation did not finish within [`FILE_OP_TIMEOUT`].
    TimedOut,
}

impl From<NotFound> for FileError {
    fn from(_: NotFound) -> FileError {
        FileError::NotFound
    }
}

/// Skipped reason of a stage or delete that did not finish within [`FILE_OP_TIMEOUT`].
const TIMED_OUT: &str = "timed_out";

/// The workspace: its canonical root, a descriptor of it, and who owns what stage creates.
pub struct Workspace {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    owner: Option<(u32, u32)>,
    /// One permit per blocking file operation running: file work can never take every blocking
    /// thread (spawns need them).
    permits: Arc<tokio::sync::Semaphore>,
}

/// Why a blocking file operation gave no answer.
enum Blocking {
    /// The task panicked or was cancelled.
    Failed,
    /// It did not finish within [`FILE_OP_TIMEOUT`]; it keeps its permit until it does finish.
    TimedOut,
}

impl Workspace {
    pub fn open(root: &Path, owner: Option<(u32, u32)>) -> Result<Workspace, FilesError> {
        let fail = |source| FilesError::Root {
            path: root.to_path_buf(),
            source,
        };
        let root = std::fs::canonicalize(root).map_err(fail)?;
        let fd = nix::fcntl::open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| fail(e.into()))?;
        Ok(Workspace {
            root,
            root_fd: Arc::new(fd),
            owner,
            permits: Arc::new(tokio::sync::Semaphore::new(FILE_OPS_AT_ONCE)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs blocking work on the workspace off the async runtime, at most [`FILE_OPS_AT_ONCE`] at
    /// a time and within [`FILE_OP_TIMEOUT`] (waiting for a permit included).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Blocking> {
        let permits = self.permits.clone();
        let run = async move {
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|_| Blocking::Failed)?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
            .map_err(|_| Blocking::Failed)
        };
        tokio::time::timeout(FILE_OP_TIMEOUT, run)
            .await
            .map_err(|_| Blocking::TimedOut)?
    }

    fn rel(&self, path: &str) -> Option<RelPath> {
        normalize(&self.root, path)
    }

    /// Stages every item in order; each ends up in `staged` or `skipped`.
    pub async fn stage(&self, request: StageRequest) -> StageReply {
        let mut reply = StageReply::default();
        for item in request.files {
            let path = item.path.clone();
            match self.stage_one(item).await {
                Ok(bytes) => reply.staged.push(StagedFile { path, bytes }),
                Err(reason) => reply.skipped.push(SkippedPath { path, reason }),
            }
        }
        reply
    }

    async fn stage_one(&self, item: StageItem) -> Result<u64, String> {
        let rel = self
            .rel(&item.path)
            .filter(|r| !r.is_root())
            .ok_or("unsafe_path")?;
        let root_fd = self.root_fd.clone();
        let owner = self.owner;
        if let Some(b64) = item.content_base64 {
            let bytes = decode_lenient_base64(&b64).map_err(|_| "bad_base64".to_string())?;
            if bytes.len() as u64 > MAX_STAGE_INLINE_BYTES {
                return Err("too_large".into());
            }
            return self
                .blocking(move || {
                    ops::write_file(&root_fd, &rel, owner, |file| {
                        use std::io::Write;
                        file.write_all(&bytes).map_err(|e| e.to_string())?;
                        Ok(bytes.len() as u64)
                    })
                })
                .await
                .unwrap_or_else(|err| Err(skipped(err, "stage task failed")));
        }
        let Some(url) = item.url else {
            return Err("no_source".into());
        };
        let download = async {
            let body = fetch::start(&url, MAX_STAGE_URL_BYTES)
                .await
                .map_err(|e| e.reason())?;
            let staging = {
                let (root_fd, rel) = (root_fd.clone(), rel.clone());
                self.blocking(move || ops::create_temp(&root_fd, &rel, owner))
                    .await
                    .map_err(|err| skipped(err, "stage task failed"))??
            };
            match fetch::copy_to(body, staging.file, MAX_STAGE_URL_BYTES).await {
                Ok((bytes, file)) => {
                    drop(file);
                    let (root_fd, rel, temp) = (root_fd.clone(), rel.clone(), staging.temp_name);
                    self.blocking(move || ops::commit_temp(&root_fd, &rel, &temp))
                        .await
                        .map_err(|err| skipped(err, "stage task failed"))??;
                    Ok(bytes)
                }
                Err(err) => {
                    let (root_fd, rel, temp) = (root_fd.clone(), rel.clone(), staging.temp_name);
                    let _ = self
                        .blocking(move || ops::discard_temp(&root_fd, &rel, &temp))
                        .await;
                    Err(err.reason())
                }
            }
        };
        tokio::time::timeout(STAGE_URL_TIMEOUT, download)
            .await
            .unwrap_or_else(|_| Err("fetch timed out".into()))
    }

    /// Deletes every path (`rm -rf` beneath the root; missing counts as deleted).
    pub async fn delete(&self, request: DeleteRequest) -> DeleteReply {
        let mut reply = DeleteReply::default();
        for path in request.paths {
            let result = match self.rel(&path).filter(|r| !r.is_root()) {
                None => Err("unsafe_path".to_string()),
                Some(rel) => {
                    let root_fd = self.root_fd.clone();
                    self.blocking(move || ops::delete(&root_fd, &rel))
                        .await
                        .unwrap_or_else(|err| Err(skipped(err, "delete task failed")))
                }
            };
            match result {
                Ok(()) => reply.deleted.push(path),
                Err(reason) => reply.skipped.push(SkippedPath { path, reason }),
            }
        }
        reply
    }

    /// Lists a directory (`""` or `.` is the root).
    pub async fn list(&self, path: &str) -> Result<ListReply, FileError> {
        let rel = self
            .rel(if path.is_empty() { "." } else { path })
            .ok_or(FileError::NotFound)?;
        let root_fd = self.root_fd.clone();
        Ok(self
            .blocking(move || ops::list(&root_fd, &rel))
            .await
            .map_err(file_error)??)
    }

    /// Reads a regular file of at most [`MAX_READ_FILE_BYTES`].
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, FileError> {
        let rel = self.rel(path).ok_or(FileError::NotFound)?;
        let root_fd = self.root_fd.clone();
        self.blocking(move || ops::read(&root_fd, &rel, MAX_READ_FILE_BYTES))
            .await
            .map_err(file_error)?
    }
}

impl Workspace {
    /// Writes one chunk of a file sent in pieces (see [`chunked`]); the staging file's size after
    /// it.
    pub async fn write_chunk(
        &self,
        path: &str,
        offset: u64,
        data: bytes::Bytes,
        commit: bool,
    ) -> Result<u64, WriteError> {
        let rel = self
            .rel(path)
            .filter(|r| !r.is_root())
            .ok_or(WriteError::Failed(chunked::WriteFailure::Path(
                "unsafe_path".into(),
            )))?;
        let (root_fd, owner) = (self.root_fd.clone(), self.owner);
        match self
            .blocking(move || chunked::write_chunk(&root_fd, &rel, owner, offset, &data, commit))
            .await
        {
            Ok(result) => result.map_err(WriteError::Failed),
            Err(Blocking::TimedOut) => Err(WriteError::TimedOut),
            Err(Blocking::Failed) => Err(WriteError::Failed(chunked::WriteFailure::Path(
                "write task failed".into(),
            ))),
        }
    }

    /// At most `length` bytes (capped at [`MAX_READ_FILE_BYTES`]) of a regular file from
    /// `offset`, and the file's size.
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<u8>, u64), FileError> {
        let rel = self.rel(path).ok_or(FileError::NotFound)?;
        let root_fd = self.root_fd.clone();
        let length = length.min(MAX_READ_FILE_BYTES);
        self.blocking(move || chunked::read_range(&root_fd, &rel, offset, length))
            .await
            .map_err(file_error)?
    }
}

/// Why a chunked write failed.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    Failed(chunked::WriteFailure),
    /// The write did not finish within [`FILE_OP_TIMEOUT`].
    TimedOut,
}

fn skipped(err: Blocking, failed: &str) -> String {
    match err {
        Blocking::Failed => failed.into(),
        Blocking::TimedOut => TIMED_OUT.into(),
    }
}

fn file_error(err: Blocking) -> FileError {
    match err {
        Blocking::Failed => FileError::NotFound,
        Blocking::TimedOut => FileError::TimedOut,
    }
}

#[cfg(test)]
mod tests;

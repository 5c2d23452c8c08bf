//! `tale session cp`: files and directory trees of any size between this machine and a session,
//! in pieces — chunked writes (`POST …/files/write`) up and ranged reads
//! (`GET …/files/content?offset=&length=`) down, so no request or reply holds a whole file.
use super::client::{refusal, session_missing, CliClient, CliError};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes per uploaded chunk: under the spawner's default 2 MiB request body cap.
pub const CP_WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes asked for per ranged read.
pub const CP_READ_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Deepest directory tree copied (either way).
pub const CP_MAX_DEPTH: usize = 64;

/// One side of a copy: a local path, or `SESSION:PATH` in a session's workspace.
#[derive(Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote { session: String, path: String },
}

impl Location {
    /// `SESSION:PATH` when the text before the first `:` is a valid session id (`./a:b` is local).
    pub fn parse(text: &str) -> Location {
        match text.split_once(':') {
            Some((session, path))
                if crate::shared::protocol::runnerd::is_valid_id(session) && !path.is_empty() =>
            {
                Location::Remote {
                    session: session.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Location::Local(PathBuf::from(text)),
        }
    }
}

/// What a copy moved.
#[derive(Debug, Default, serde::Serialize)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    /// Symlinks and special files left out (their paths).
    pub skipped: Vec<String>,
}

fn query(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn local_error(path: &Path, err: std::io::Error) -> CliError {
    CliError::local(format!("{}: {err}", path.display()))
}

/// Copies `source` to `dest` (exactly one of them in a session).
pub async fn copy(
    client: &CliClient,
    source: Location,
    dest: Location,
) -> Result<Copied, CliError> {
    let mut copied = Copied::default();
    match (source, dest) {
        (Location::Local(from), Location::Remote { session, path }) => {
            super::client::check_id("session", &session)?;
            upload(client, &session, &from, &path, 0, &mut copied).await?;
        }
        (Location::Remote { session, path }, Location::Local(to)) => {
            super::client::check_id("session", &session)?;
            download(client, &session, &path, &to, &mut copied).await?;
        }
        _ => {
            return Err(CliError::local(
                "cp copies between this machine and a session: one side must be SESSION:PATH, the other a local path",
            ))
        }
    }
    Ok(copied)
}

/// Uploads a file, or a directory's files (recursively) under `remote`.
async fn upload(
    client: &CliClient,
    session: &str,
    local: &Path,
    remote: &str,
    depth: usize,
    copied: &mut Copied,
) -> Result<(), CliError> {
    let meta = std::fs::symlink_metadata(local).map_err(|e| local_error(local, e))?;
    if meta.is_file() {
        copied.bytes += upload_file(client, session, local, remote).await?;
        copied.files += 1;
    } else if meta.is_dir() {
        if depth >= CP_MAX_DEPTH {
            return Err(CliError::local(format!(
                "{}: deeper than {CP_MAX_DEPTH} directories",
                local.display()
            )));
        }
        let mut names: Vec<_> = std::fs::read_dir(local)
            .map_err(|e| local_error(local, e))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| local_error(local, e))?;
        names.sort();
        for name in names {
            let Some(text) = name.to_str() else {
                copied.skipped.push(local.join(&name).display().to_string());
                continue;
            };
            let child_remote = format!("{}/{text}", remote.trim_end_matches('/'));
            Box::pin(upload(
                client,
                session,
                &local.join(&name),
                &child_remote,
                depth + 1,
                copied,
            ))
            .await?;
        }
    } else {
        copied.skipped.push(local.display().to_string());
    }
    Ok(())
}

/// Sends one local file in chunks; the last one commits it. Returns its size.
async fn upload_file(
    client: &CliClient,
    session: &str,
    local: &Path,
    remote: &str,
) -> Result<u64, CliError> {
    let mut file = std::fs::File::open(local).map_err(|e| local_error(local, e))?;
    let mut offset = 0u64;
    let mut chunk = vec![0u8; CP_WRITE_CHUNK_BYTES];
    let mut filled = read_full(&mut file, &mut chunk).map_err(|e| local_error(local, e))?;
    loop {
        // One chunk ahead tells whether this one is the last.
        let mut next = vec![0u8; CP_WRITE_CHUNK_BYTES];
        let next_filled = if filled == CP_WRITE_CHUNK_BYTES {
            read_full(&mut file, &mut next).map_err(|e| local_error(local, e))?
        } else {
            0
        };
        let commit = next_filled == 0;
        let path = format!(
            "/v1/sessions/{session}/files/write?path={}&offset={offset}&commit={commit}",
            query(remote)
        );
        let reply = client
            .send_bytes(
                Method::POST,
                &path,
                chunk[..filled].to_vec(),
                Some("application/octet-stream"),
            )
            .await?;
        let status = reply.status().as_u16();
        if status != 200 {
            let body = body_json(reply).await?;
            return Err(match status {
                404 if body["error"] == "not_found" => session_missing(session),
                _ => with_path(refusal(status, &body), remote),
            });
        }
        let _ = body_json(reply).await?;
        offset += filled as u64;
        if commit {
            return Ok(offset);
        }
        chunk = next;
        filled = next_filled;
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

async fn body_json(reply: hyper::Response<hyper::body::Incoming>) -> Result<Value, CliError> {
    let bytes = body_bytes(reply).await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn body_bytes(
    reply: hyper::Response<hyper::body::Incoming>,
) -> Result<bytes::Bytes, CliError> {
    Ok(reply
        .into_body()
        .collect()
        .await
        .map_err(|e| CliError::local(format!("the reply broke off: {e}")))?
        .to_bytes())
}

fn with_path(err: CliError, remote: &str) -> CliError {
    CliError {
        message: format!("{remote}: {}", err.message),
        code: err.code,
    }
}

/// Downloads a file (into `local`, or into `local/<name>` when `local` is a directory), or a
/// directory tree as `local`.
async fn download(
    client: &CliClient,
    session: &str,
    remote: &str,
    local: &Path,
    copied: &mut Copied,
) -> Result<(), CliError> {
    match list(client, session, remote).await? {
        Some(entries) => {
            download_tree(client, session, remote, local, entries, 0, copied).await?;
        }
        None => {
            let target = if local.is_dir() {
                let name = remote
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or(remote);
                local.join(name)
            } else {
                local.to_path_buf()
            };
            copied.bytes += download_file(client, session, remote, &target).await?;
            copied.files += 1;
        }
    }
    Ok(())
}

/// A directory's entries, or `None` when `remote` is not a directory.
async fn list(
    client: &CliClient,
    session: &str,
    remote: &str,
) -> Result<Option<Vec<Value>>, CliError> {
    let path = format!("/v1/sessions/{session}/files?path={}", query(remote));
    let reply = client.json(Method::GET, &path, None).await?;
    match reply.status {
        200 => Ok(Some(
            reply.body["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )),
        404 => Ok(None),
        status => Err(with_path(refusal(status, &reply.body), remote)),
    }
}

async fn download_tree(
    client: &CliClient,
    session: &str,
    remote: &str,
    local: &Path,
    entries: Vec<Value>,
    depth: usize,
    copied: &mut Copied,
) -> Result<(), CliError> {
    if depth >= CP_MAX_DEPTH {
        return Err(CliError::local(format!(
            "{remote}: deeper than {CP_MAX_DEPTH} directories"
        )));
    }
    std::fs::create_dir_all(local).map_err(|e| local_error(local, e))?;
    for entry in entries {
        let Some(name) = entry["name"].as_str() else {
            continue;
        };
        // Names come from the session: never let one climb out of `local`.
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            copied.skipped.push(format!("{remote}/{name}"));
            continue;
        }
        let child_remote = format!("{}/{name}", remote.trim_end_matches('/'));
        let child_local = local.join(name);
        match entry["type"].as_str() {
            Some("file") => {
                copied.bytes += download_file(client, session, &child_remote, &child_local).await?;
                copied.files += 1;
            }
            Some("dir") => {
                let Some(children) = list(client, session, &child_remote).await? else {
                    continue;
                };
                Box::pin(download_tree(
                    client,
                    session,
                    &child_remote,
                    &child_local,
                    children,
                    depth + 1,
                    copied,
                ))
                .await?;
            }
            _ => copied.skipped.push(child_remote),
        }
    }
    Ok(())
}

/// Fetches a remote file in ranged reads into `local`. Returns its size.
async fn download_file(
    client: &CliClient,
    session: &str,
    remote: &str,
    local: &Path,
) -> Result<u64, CliError> {
    let mut file = std::fs::File::create(local).map_err(|e| local_error(local, e))?;
    let mut offset = 0u64;
    loop {
        let path = format!(
            "/v1/sessions/{session}/files/content?path={}&offset={offset}&length={CP_READ_CHUNK_BYTES}",
            query(remote)
        );
        let reply = client.send(Method::GET, &path, None).await?;
        let status = reply.status().as_u16();
        let size = reply
            .headers()
            .get(crate::shared::protocol::runnerd::FILE_SIZE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if status != 200 {
            let body = body_json(reply).await?;
            let _ = std::fs::remove_file(local);
            return Err(match status {
                404 => CliError::refused(format!(
                    "{remote}: not found in session {session:?} (or the session does not exist)"
                )),
                _ => with_path(refusal(status, &body), remote),
            });
        }
        let bytes = body_bytes(reply).await?;
        file.write_all(&bytes).map_err(|e| local_error(local, e))?;
        offset += bytes.len() as u64;
        if bytes.is_empty() || size.is_none_or(|size| offset >= size) {
            return Ok(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SESSION:PATH` is remote only when SESSION is a valid id; anything else is a local path.
    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("s1:dir/a.bin"),
            Location::Remote {
                session: "s1".into(),
                path: "dir/a.bin".into()
            }
        );
        for local in ["./a:b", "a.bin", "/tmp/x", "s1:", "a b:c"] {
            assert_eq!(
                Location::parse(local),
                Location::Local(local.into()),
                "{local}"
            );
        }
    }
}

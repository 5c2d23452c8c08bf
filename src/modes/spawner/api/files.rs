//! File routes. A lost session answers 502 `upstream_error` here, never 404: 404 means "no such path"
//! (a session whose compute the backend lost and brought back answers 503 `session_restarted`).
use super::{bad_request, not_found, ok, ApiError, ApiRequest, Reply};
use crate::modes::spawner::runnerd_client::{RawReply, RunnerdError, FILE_SIZE_HEADER};
use crate::modes::spawner::state::Spawner;
use crate::shared::protocol::runnerd::DeleteRequest;

/// A runnerd error of a file route: a 400 is the caller's input; a session whose compute was lost
/// is healed (503 `session_restarted`: retry); everything else 502 (after evicting a session
/// whose compute is gone).
async fn upstream(spawner: &Spawner, id: &str, err: RunnerdError) -> ApiError {
    if err.is_transport() {
        match spawner.heal_after_loss(id).await {
            Ok(true) => return crate::modes::spawner::heal::restarted(id),
            Ok(false) => {}
            Err(refusal) => return refusal,
        }
        spawner.evict_if_gone(id).await;
    }
    err.into()
}

/// The stage route's body: `{files: [...]}`; each item's rules are runnerd's.
pub fn stage_body(body: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    if !body.get("files").is_some_and(serde_json::Value::is_array) {
        return Err(bad_request(
            "files must be an array of {path, url?, contentBase64?}",
        ));
    }
    Ok(body)
}

/// The delete route's body: `{paths: [string]}`.
pub fn delete_body(body: serde_json::Value) -> Result<DeleteRequest, ApiError> {
    serde_json::from_value(body).map_err(|_| bad_request("paths must be an array of strings"))
}

pub async fn stage(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let body = stage_body(request.json()?)?;
    match entry.runnerd.stage(&body).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

pub async fn delete(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let body = delete_body(request.json()?)?;
    match entry.runnerd.delete_files(&body).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

pub async fn list(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let path = request.query("path").unwrap_or_else(|| ".".into());
    match entry.runnerd.list(&path).await {
        Ok(Some(reply)) => Ok(ok(&reply)),
        Ok(None) => Err(not_found()),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

pub async fn content(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let path = request
        .query("path")
        .ok_or_else(|| bad_request("path is required"))?;
    if request.query("offset").is_some() || request.query("length").is_some() {
        let offset = u64_query(request, "offset")?.unwrap_or(0);
        let length = u64_query(request, "length")?;
        return match entry.runnerd.read_range(&path, offset, length).await {
            Ok(reply) => relay(ranged_read_supported(reply)?, "application/octet-stream"),
            Err(err) => Err(upstream(spawner, id, err).await),
        };
    }
    match entry.runnerd.read(&path).await {
        Ok(Some(bytes)) => {
            let mut response = hyper::Response::new(crate::shared::http::full(bytes));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            Ok(response)
        }
        Ok(None) => Err(not_found()),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

/// `POST …/files/write?path=&offset=[&commit=true]`: one chunk (the raw body) of a file written in
/// pieces; runnerd's answer relayed.
pub async fn write(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let path = request
        .query("path")
        .ok_or_else(|| bad_request("path is required"))?;
    let offset = u64_query(request, "offset")?.ok_or_else(|| bad_request("offset is required"))?;
    let commit = match request.query("commit").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad_request("commit must be true or false")),
    };
    match entry
        .runnerd
        .write_chunk(&path, offset, commit, request.body.to_vec())
        .await
    {
        Ok(reply) => relay(chunked_write_supported(reply)?, "application/json"),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

/// The message of a runnerd from before files in pieces (an old session image).
const NO_PIECES: &str =
    "the session's runnerd does not serve files in pieces: update the session image";

/// Such a runnerd answers a ranged read with the whole file and no size header: a 502 that says
/// so, never a piece a client would take for the file.
fn ranged_read_supported(reply: RawReply) -> Result<RawReply, ApiError> {
    if reply.status.is_success() && reply.file_size.is_none() {
        return Err(ApiError::upstream(NO_PIECES));
    }
    Ok(reply)
}

/// Such a runnerd answers a chunked write 404 (no such route; the route itself never does): a
/// 502 that says so, never a "not found".
fn chunked_write_supported(reply: RawReply) -> Result<RawReply, ApiError> {
    if reply.status == hyper::StatusCode::NOT_FOUND {
        return Err(ApiError::upstream(NO_PIECES));
    }
    Ok(reply)
}

fn u64_query(request: &ApiRequest, name: &str) -> Result<Option<u64>, ApiError> {
    request
        .query(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| bad_request(format!("{name} must be a non-negative integer")))
        })
        .transpose()
}

/// runnerd's 200 (with the file size header) or its 4xx refusal (`{error, message}`, the same
/// envelope) as it is; anything else is a 502.
fn relay(reply: RawReply, content_type: &'static str) -> Reply {
    let status = reply.status;
    // runnerd's 401 is the spawner's own token trouble, never the caller's.
    if !(status.is_success() || status.is_client_error())
        || status == hyper::StatusCode::UNAUTHORIZED
    {
        return Err(ApiError::upstream(format!(
            "runnerd answered {status}: {}",
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(500)
                .collect::<String>()
        )));
    }
    let content_type = if status.is_success() {
        content_type
    } else {
        "application/json"
    };
    let mut response = hyper::Response::new(crate::shared::http::full(reply.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Some(size) = reply.file_size {
        headers.insert(FILE_SIZE_HEADER, hyper::header::HeaderValue::from(size));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, file_size: Option<u64>, body: &'static [u8]) -> RawReply {
        RawReply {
            status: hyper::StatusCode::from_u16(status).unwrap(),
            file_size,
            body: bytes::Bytes::from_static(body),
        }
    }

    /// A runnerd without files in pieces (an old session image) is a 502 that says so: its whole
    /// file for a ranged read is never relayed as a piece, its 404 for a write never as "not
    /// found"; a current runnerd's answers pass, refusals included.
    #[test]
    fn an_old_runnerd_is_named_not_misread() {
        let old_read = ranged_read_supported(reply(200, None, b"whole file")).unwrap_err();
        assert_eq!(
            (old_read.status.as_u16(), old_read.code),
            (502, "upstream_error")
        );
        assert_eq!(old_read.message.as_deref(), Some(NO_PIECES));
        let old_write =
            chunked_write_supported(reply(404, None, br#"{"error":"not_found"}"#)).unwrap_err();
        assert_eq!(
            (old_write.status.as_u16(), old_write.code),
            (502, "upstream_error")
        );
        assert!(ranged_read_supported(reply(200, Some(3), b"abc")).is_ok());
        assert!(ranged_read_supported(reply(404, None, b"{}")).is_ok());
        assert!(chunked_write_supported(reply(200, None, b"{}")).is_ok());
        assert!(chunked_write_supported(reply(409, None, b"{}")).is_ok());
    }
}

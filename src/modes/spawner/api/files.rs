//! File routes. A lost session answers 502 `upstream_error` here, never 404: 404 means "no such path".
use super::{bad_request, not_found, ok, ApiError, ApiRequest, Reply};
use crate::modes::spawner::runnerd_client::RunnerdError;
use crate::modes::spawner::state::Spawner;
use crate::shared::protocol::runnerd::DeleteRequest;

/// A runnerd error of a file route: a 400 is the caller's input, everything else 502 (after
/// evicting a session whose compute is gone).
async fn upstream(spawner: &Spawner, id: &str, err: RunnerdError) -> ApiError {
    if err.is_transport() {
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
    let entry = spawner.lookup(id).await.ok_or_else(not_found)?;
    let body = stage_body(request.json()?)?;
    match entry.runnerd.stage(&body).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

pub async fn delete(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup(id).await.ok_or_else(not_found)?;
    let body = delete_body(request.json()?)?;
    match entry.runnerd.delete_files(&body).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

pub async fn list(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup(id).await.ok_or_else(not_found)?;
    let path = request.query("path").unwrap_or_else(|| ".".into());
    match entry.runnerd.list(&path).await {
        Ok(Some(reply)) => Ok(ok(&reply)),
        Ok(None) => Err(not_found()),
        Err(err) => Err(upstream(spawner, id, err).await),
    }
}

pub async fn content(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup(id).await.ok_or_else(not_found)?;
    let path = request
        .query("path")
        .ok_or_else(|| bad_request("path is required"))?;
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

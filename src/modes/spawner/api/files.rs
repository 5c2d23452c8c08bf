//! File routes. A lost session answers 502 `upstream_error` here, never 404: 404 means "no such path".
use super::{bad_request, not_found, ok, upstream_error, ApiRequest};
use crate::modes::spawner::state::Spawner;
use crate::shared::http::HttpResponse;
use crate::shared::protocol::runnerd::DeleteRequest;

async fn upstream(
    spawner: &Spawner,
    id: &str,
    err: crate::modes::spawner::runnerd_client::RunnerdError,
) -> HttpResponse {
    if err.is_transport() {
        spawner.evict_if_gone(id).await;
    }
    upstream_error(err.to_string())
}

pub async fn stage(spawner: &Spawner, id: &str, request: &ApiRequest) -> HttpResponse {
    let Some(entry) = spawner.lookup(id).await else {
        return not_found();
    };
    let body = match request.json() {
        Ok(body) => body,
        Err(response) => return response,
    };
    if !body.get("files").is_some_and(serde_json::Value::is_array) {
        return bad_request("files must be an array of {path, url?, contentBase64?}");
    }
    match entry.runnerd.stage(&body).await {
        Ok(reply) => ok(&reply),
        Err(crate::modes::spawner::runnerd_client::RunnerdError::Status { status, body })
            if status == hyper::StatusCode::BAD_REQUEST =>
        {
            bad_request(body)
        }
        Err(err) => upstream(spawner, id, err).await,
    }
}

pub async fn delete(spawner: &Spawner, id: &str, request: &ApiRequest) -> HttpResponse {
    let Some(entry) = spawner.lookup(id).await else {
        return not_found();
    };
    let body: DeleteRequest = match request.json().and_then(|v| {
        serde_json::from_value(v).map_err(|_| bad_request("paths must be an array of strings"))
    }) {
        Ok(body) => body,
        Err(response) => return response,
    };
    match entry.runnerd.delete_files(&body).await {
        Ok(reply) => ok(&reply),
        Err(err) => upstream(spawner, id, err).await,
    }
}

pub async fn list(spawner: &Spawner, id: &str, request: &ApiRequest) -> HttpResponse {
    let Some(entry) = spawner.lookup(id).await else {
        return not_found();
    };
    let path = request.query("path").unwrap_or_else(|| ".".into());
    match entry.runnerd.list(&path).await {
        Ok(Some(reply)) => ok(&reply),
        Ok(None) => not_found(),
        Err(err) => upstream(spawner, id, err).await,
    }
}

pub async fn content(spawner: &Spawner, id: &str, request: &ApiRequest) -> HttpResponse {
    let Some(entry) = spawner.lookup(id).await else {
        return not_found();
    };
    let Some(path) = request.query("path") else {
        return bad_request("path is required");
    };
    match entry.runnerd.read(&path).await {
        Ok(Some(bytes)) => {
            let mut response = hyper::Response::new(crate::shared::http::full(bytes));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Ok(None) => not_found(),
        Err(err) => upstream(spawner, id, err).await,
    }
}

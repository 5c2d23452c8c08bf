//! The spawner's HTTP API (spec era B, byte-compatible): routing, the signed-request check, body
//! caps, and the error envelope `{error, message?}`.
// Handlers return `Result<T, HttpResponse>` so a refusal is the response itself; its size is fine here.
#![allow(clippy::result_large_err)]

mod agent_runs;
mod credentials;
mod exec;
mod execute;
mod files;
mod sessions;
mod sse;

use super::state::Spawner;
use crate::shared::hmac::{Presented, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::shared::http::{error, json, read_body, BodyError, HttpResponse};
use crate::shared::protocol::runnerd::is_valid_id;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode};
use std::sync::Arc;

/// A request after its body was read and its signature checked.
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiRequest {
    /// The body as JSON (400 `bad_request` when it is not).
    pub fn json(&self) -> Result<serde_json::Value, HttpResponse> {
        serde_json::from_slice(&self.body)
            .map_err(|err| bad_request(format!("the body is not valid JSON: {err}")))
    }

    /// Where an attach resumes: `Last-Event-ID` (an SSE client reconnecting) wins over the
    /// `sinceSeq` query; `None` when neither parses.
    pub fn resume_position<T>(&self, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(&parse)
            .or_else(|| self.query("sinceSeq").as_deref().and_then(&parse))
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

pub fn bad_request(message: impl Into<String>) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, "bad_request", Some(message.into()))
}

pub fn not_found() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "not_found", None)
}

pub fn upstream_error(message: impl Into<String>) -> HttpResponse {
    error(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        Some(message.into()),
    )
}

/// Answers one request.
pub async fn handle(spawner: Arc<Spawner>, request: Request<Incoming>) -> HttpResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if method == Method::GET && path == "/health" {
        return sessions::health(&spawner).await;
    }
    if method == Method::GET && path == "/metrics" {
        spawner.refresh_gauge();
        let mut response =
            hyper::Response::new(crate::shared::http::full(spawner.metrics.render()));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return response;
    }
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers().clone();
    // The body is read (capped) before the signature check: the signature covers it.
    let body = match read_body(request, spawner.config.max_request_body_bytes as usize).await {
        Ok(body) => body,
        Err(err @ BodyError::TooLarge(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some(err.to_string()),
            )
        }
        Err(err) => return bad_request(err.to_string()),
    };
    let request = ApiRequest {
        method,
        path,
        query,
        headers,
        body,
    };
    if let Err(reason) = authenticate(&spawner, &request) {
        tracing::info!(reason, method = %request.method, path = %request.path, "request refused");
        return error(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    route(spawner, request).await
}

fn authenticate(spawner: &Spawner, request: &ApiRequest) -> Result<(), &'static str> {
    let Some(verifier) = &spawner.verifier else {
        return Ok(());
    };
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let path_and_query = match &request.query {
        Some(query) => format!("{}?{query}", request.path),
        None => request.path.clone(),
    };
    let presented = Presented {
        method: request.method.as_str(),
        path_and_query: &path_and_query,
        signature: header(SIGNATURE_HEADER),
        timestamp: header(TIMESTAMP_HEADER),
        nonce: header(NONCE_HEADER),
        body: &request.body,
    };
    verifier
        .verify(&presented, crate::shared::clock::now_ms() as i64)
        .map_err(|failure| match failure {
            crate::shared::hmac::AuthFailure::MissingSignature => "missing_signature",
            crate::shared::hmac::AuthFailure::MissingTimestamp => "missing_timestamp",
            crate::shared::hmac::AuthFailure::BadTimestamp => "bad_timestamp",
            crate::shared::hmac::AuthFailure::TimestampSkew => "timestamp_skew",
            crate::shared::hmac::AuthFailure::BadSignature => "bad_signature",
            crate::shared::hmac::AuthFailure::Replay => "replay",
            crate::shared::hmac::AuthFailure::ReplayCacheFull => "replay_cache_full",
        })
}

async fn route(spawner: Arc<Spawner>, request: ApiRequest) -> HttpResponse {
    let path = request.path.clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method.clone();
    use Method as M;
    match (&method, segments.as_slice()) {
        (&M::POST, ["v1", "sessions"]) => sessions::create(&spawner, &request).await,
        (&M::GET, ["v1", "sessions"]) => sessions::list(&spawner, &request),
        (&M::POST, ["v1", "execute"]) => execute::execute(spawner, &request).await,
        (_, ["v1", "sessions", id, rest @ ..]) if is_valid_id(id) => {
            let id = id.to_string();
            session_route(spawner, &request, &method, &id, rest).await
        }
        _ => not_found(),
    }
}

async fn session_route(
    spawner: Arc<Spawner>,
    request: &ApiRequest,
    method: &Method,
    id: &str,
    rest: &[&str],
) -> HttpResponse {
    use Method as M;
    match (method, rest) {
        (&M::GET, []) => sessions::get(&spawner, id).await,
        (&M::DELETE, []) => sessions::destroy(&spawner, id, request).await,
        (&M::PATCH, ["env"]) => sessions::patch_env(&spawner, id, request).await,
        (&M::PATCH, ["pin"]) => sessions::pin(&spawner, id, request).await,
        (&M::POST, ["exec"]) => exec::start(spawner, id, request).await,
        (&M::GET, ["exec"]) => exec::list(&spawner, id).await,
        (&M::POST, ["exec", exec_id, "cancel"]) if is_valid_id(exec_id) => {
            exec::cancel(&spawner, id, exec_id).await
        }
        (&M::GET, ["exec", exec_id, "attach"]) if is_valid_id(exec_id) => {
            exec::attach(spawner, id, exec_id, request).await
        }
        (&M::POST, ["exec", exec_id, "stdin"]) if is_valid_id(exec_id) => {
            exec::stdin(&spawner, id, exec_id, request).await
        }
        (&M::GET, ["exec", exec_id]) if is_valid_id(exec_id) => {
            exec::status(&spawner, id, exec_id).await
        }
        (&M::POST, ["agent-runs"]) => agent_runs::start(spawner, id, request).await,
        (&M::GET, ["agent-runs", exec_id, "attach"]) if is_valid_id(exec_id) => {
            agent_runs::attach(spawner, id, exec_id, request).await
        }
        (&M::POST, ["agent-runs", exec_id, "steer"]) if is_valid_id(exec_id) => {
            agent_runs::steer(&spawner, id, exec_id, request).await
        }
        (&M::POST, ["files", "stage"]) => files::stage(&spawner, id, request).await,
        (&M::POST, ["files", "delete"]) => files::delete(&spawner, id, request).await,
        (&M::GET, ["files", "content"]) => files::content(&spawner, id, request).await,
        (&M::GET, ["files"]) => files::list(&spawner, id, request).await,
        (&M::PUT, ["credentials", "git"]) => credentials::grant(&spawner, id, request).await,
        (&M::DELETE, ["credentials", "git", host]) => credentials::revoke(&spawner, id, host).await,
        _ => not_found(),
    }
}

/// A JSON 200.
pub fn ok<T: serde::Serialize>(value: &T) -> HttpResponse {
    json(StatusCode::OK, value)
}

//! The spawner's HTTP API (spec era B, byte-compatible): the signed-request check in two steps
//! around the bounded body read (see `super::edge`), routing, and the error envelope
//! `{error, message?}` ([`ApiError`]).

mod agent_runs;
mod credentials;
mod error;
mod exec;
mod execute;
mod files;
#[cfg(test)]
mod fuzz;
mod sessions;
mod sse;

use super::edge::body::{BodyLease, BodyRefusal};
use super::edge::connections::ConnectionTicket;
use super::edge::BUSY_RETRY_AFTER_SECS;
use super::state::Spawner;
use crate::shared::hmac::{AuthFailure, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::shared::http::{discard_body, json, HttpResponse};
use crate::shared::protocol::runnerd::is_valid_id;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{HeaderMap, Method, Request, StatusCode};
use std::sync::Arc;

pub use error::ApiError;

/// What a route answers: its response, or the refusal in the error envelope.
pub type Reply = Result<HttpResponse, ApiError>;

/// A request after its body was read and its signature checked.
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body's share of the in-flight budget, given back when the request is dropped.
    _lease: BodyLease,
}

impl ApiRequest {
    /// The body as JSON (400 `bad_request` when it is not).
    pub fn json(&self) -> Result<serde_json::Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|err| ApiError::bad_request(format!("the body is not valid JSON: {err}")))
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

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

pub fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Answers one request. A signed route reads its body only after the signature's shape and the
/// timestamp passed, within the body budget and the read deadline; then the signature is checked
/// over the whole request.
pub async fn handle(spawner: Arc<Spawner>, mut request: Request<Incoming>) -> HttpResponse {
    let ticket = request.extensions_mut().remove::<Arc<ConnectionTicket>>();
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
    let (parts, mut body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let prechecked = match &spawner.verifier {
        None => None,
        Some(verifier) => {
            let now = crate::shared::clock::now_ms() as i64;
            match verifier.precheck(header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER), now) {
                Ok(prechecked) => Some(prechecked),
                Err(failure) => return unauthorized(&spawner, failure, &method, &path),
            }
        }
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let edge = &spawner.config.edge;
    let cap = spawner.config.max_request_body_bytes as usize;
    let (body, lease) = match spawner
        .body_budget
        .read(&mut body, declared, cap, edge.body_read_timeout)
        .await
    {
        Ok(read) => read,
        Err(refusal) => {
            if matches!(refusal, BodyRefusal::TooLarge(_)) {
                // Signed (or dev mode): read and discard the rest (bounded) so the client sees the
                // 413 instead of a reset.
                discard_body(&mut body, declared.unwrap_or(u64::MAX)).await;
            }
            return body_refused(&spawner, refusal);
        }
    };
    let request = ApiRequest {
        method,
        path,
        query,
        headers: parts.headers,
        body,
        _lease: lease,
    };
    if let (Some(verifier), Some(prechecked)) = (&spawner.verifier, &prechecked) {
        let path_and_query = match &request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.clone(),
        };
        let nonce = request
            .headers
            .get(NONCE_HEADER)
            .and_then(|v| v.to_str().ok());
        let now = crate::shared::clock::now_ms() as i64;
        if let Err(failure) = verifier.verify_prechecked(
            prechecked,
            request.method.as_str(),
            &path_and_query,
            nonce,
            &request.body,
            now,
        ) {
            return unauthorized(&spawner, failure, &request.method, &request.path);
        }
    }
    if let Some(ticket) = ticket {
        ticket.authenticated();
    }
    route(spawner, request)
        .await
        .unwrap_or_else(HttpResponse::from)
}

/// 401 `unauthorized`; the reason is logged (at debug: a flood of strangers must not flood the
/// log; the metric counts them), never returned. Sent before any body byte was read when the
/// headers alone fail, so the connection closes after it.
fn unauthorized(
    spawner: &Spawner,
    failure: AuthFailure,
    method: &Method,
    path: &str,
) -> HttpResponse {
    tracing::debug!(reason = %failure, %method, path, "request refused");
    spawner.metrics.edge_refused("unauthorized");
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", None).into()
}

fn body_refused(spawner: &Spawner, refusal: BodyRefusal) -> HttpResponse {
    let message = Some(refusal.to_string());
    match refusal {
        BodyRefusal::TooLarge(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).into()
        }
        BodyRefusal::Busy => {
            spawner.metrics.edge_refused("server_busy");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_busy", message)
                .retry_after(BUSY_RETRY_AFTER_SECS)
                .into()
        }
        BodyRefusal::Timeout(_) => {
            spawner.metrics.edge_refused("request_timeout");
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message).into()
        }
        BodyRefusal::Unreadable(_) => ApiError::bad_request(refusal.to_string()).into(),
    }
}

async fn route(spawner: Arc<Spawner>, request: ApiRequest) -> Reply {
    let path = request.path.clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method.clone();
    use Method as M;
    match (&method, segments.as_slice()) {
        (&M::POST, ["v1", "sessions"]) => sessions::create(&spawner, &request).await,
        (&M::GET, ["v1", "sessions"]) => sessions::list(&spawner, &request).await,
        (&M::POST, ["v1", "execute"]) => execute::execute(spawner, &request).await,
        (_, ["v1", "sessions", id, rest @ ..]) if is_valid_id(id) => {
            let id = id.to_string();
            spawner.await_adoption(&id).await?;
            session_route(spawner, &request, &method, &id, rest).await
        }
        _ => Err(not_found()),
    }
}

async fn session_route(
    spawner: Arc<Spawner>,
    request: &ApiRequest,
    method: &Method,
    id: &str,
    rest: &[&str],
) -> Reply {
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
        (&M::POST, ["exec", exec_id, "resize"]) if is_valid_id(exec_id) => {
            exec::resize(&spawner, id, exec_id, request).await
        }
        (&M::GET, ["exec", exec_id]) if is_valid_id(exec_id) => {
            exec::status(&spawner, id, exec_id).await
        }
        (&M::POST, ["agent-runs"]) => Ok(agent_runs::start(spawner, id, request).await),
        (&M::GET, ["agent-runs", exec_id, "attach"]) if is_valid_id(exec_id) => {
            Ok(agent_runs::attach(spawner, id, exec_id, request).await)
        }
        (&M::POST, ["agent-runs", exec_id, "steer"]) if is_valid_id(exec_id) => {
            Ok(agent_runs::steer(&spawner, id, exec_id, request).await)
        }
        (&M::POST, ["files", "stage"]) => files::stage(&spawner, id, request).await,
        (&M::POST, ["files", "delete"]) => files::delete(&spawner, id, request).await,
        (&M::POST, ["files", "write"]) => files::write(&spawner, id, request).await,
        (&M::GET, ["files", "content"]) => files::content(&spawner, id, request).await,
        (&M::GET, ["files"]) => files::list(&spawner, id, request).await,
        (&M::PUT, ["credentials", "git"]) => credentials::grant(&spawner, id, request).await,
        (&M::DELETE, ["credentials", "git", host]) => credentials::revoke(&spawner, id, host).await,
        _ => Err(not_found()),
    }
}

/// A JSON 200.
pub fn ok<T: serde::Serialize>(value: &T) -> HttpResponse {
    json(StatusCode::OK, value)
}

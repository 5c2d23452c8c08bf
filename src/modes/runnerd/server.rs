//! runnerd's HTTP routes (spec era B, byte-compatible) and the token check.
use super::exec::driver::{refusal_event, start_exec};
use super::exec::journal::JournalCursor;
use super::exec::stdin::{parse_line, parse_raw};
use super::files::FileError;
use super::limits::MAX_REQUEST_BODY_BYTES;
use super::state::Daemon;
use super::stream::CursorBody;
use crate::shared::http::{
    constant_time_eq, error, json, query_param, read_body, BodyError, HttpResponse,
};
use crate::shared::protocol::runnerd::{
    is_valid_id, CancelReply, CredentialReply, DeleteRequest, EnvPatch, EnvReply, ExecList,
    ExecRequestWire, ExecStatus, ExecStatusState, ExecSummary, GitCredentialGrant, HealthReport,
    PtySize, ResizeRefusal, ResizeReply, SeedMark, SeedStatus, StageRequest, StdinReply,
    StdinRequest, TOKEN_HEADER,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Answers one request.
pub async fn handle(daemon: Arc<Daemon>, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    if method == Method::GET && segments == ["readyz"] {
        return json(StatusCode::OK, &serde_json::json!({"ok": true}));
    }
    if !authorized(&daemon, &request) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => health(&daemon).await,
        (&Method::POST, ["execs"]) => exec(daemon, request).await,
        (&Method::GET, ["execs"]) => list_execs(&daemon),
        (&Method::GET, ["execs", id, "attach"]) if is_valid_id(id) => attach(&daemon, id, &request),
        (&Method::POST, ["execs", id, "cancel"]) if is_valid_id(id) => cancel(&daemon, id),
        (&Method::POST, ["execs", id, "stdin"]) if is_valid_id(id) => {
            let id = id.to_string();
            stdin(&daemon, &id, request).await
        }
        (&Method::POST, ["execs", id, "resize"]) if is_valid_id(id) => {
            let id = id.to_string();
            resize(&daemon, &id, request).await
        }
        (&Method::GET, ["execs", id]) if is_valid_id(id) => status(&daemon, id),
        (&Method::POST, ["env"]) => env(&daemon, request).await,
        (&Method::GET, ["seed"]) => json(StatusCode::OK, &*daemon.seed()),
        (&Method::PUT, ["seed"]) => mark_seeded(&daemon, request).await,
        (&Method::POST, ["files", "stage"]) => stage(&daemon, request).await,
        (&Method::POST, ["files", "delete"]) => delete(&daemon, request).await,
        (&Method::POST, ["files", "write"]) => write_chunk(&daemon, request).await,
        (&Method::GET, ["fs", "list"]) => list(&daemon, &request).await,
        (&Method::GET, ["fs", "read"]) => read(&daemon, &request).await,
        (&Method::PUT, ["credentials", "git"]) => grant_credential(&daemon, request).await,
        (&Method::DELETE, ["credentials", "git", host]) => revoke_credential(&daemon, host),
        _ => not_found(),
    }
}

fn not_found() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "not_found", None)
}

/// Whether the request carries the right token (always, with `--insecure-no-token`).
pub fn authorized(daemon: &Daemon, request: &Request<Incoming>) -> bool {
    let Some(expected) = &daemon.token else {
        return true;
    };
    request
        .headers()
        .get(TOKEN_HEADER)
        .is_some_and(|given| constant_time_eq(&super::token_digest(given.as_bytes()), expected))
}

/// Reads and parses a JSON body: 413 over the cap, 400 when unreadable or not the expected shape,
/// 408 `request_timeout` when it does not arrive whole within the body read timeout (the
/// connection is then closed: hyper does not keep a connection whose body was left unread).
async fn json_body<T: DeserializeOwned>(
    daemon: &Daemon,
    request: Request<Incoming>,
) -> Result<T, HttpResponse> {
    let bytes = raw_body(daemon, request, MAX_REQUEST_BODY_BYTES).await?;
    decode_body(&bytes)
        .map_err(|message| error(StatusCode::BAD_REQUEST, "bad_request", Some(message)))
}

/// Reads a whole body of at most `cap` bytes within the body read timeout (413, 400 or 408).
async fn raw_body(
    daemon: &Daemon,
    request: Request<Incoming>,
    cap: usize,
) -> Result<Bytes, HttpResponse> {
    let timeout = daemon.body_read_timeout();
    tokio::time::timeout(timeout, read_body(request, cap))
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                Some(format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                )),
            )
        })?
        .map_err(|err| match err {
            BodyError::TooLarge(_) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some(err.to_string()),
            ),
            BodyError::Unreadable(_) => error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some(err.to_string()),
            ),
        })
}

/// A whole body as the route's type, or the message of its 400 `bad_request`.
pub(super) fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    // Every body is an object: serde would also read a struct from an array of its fields.
    if !starts_json_object(bytes) {
        return Err("the body must be a JSON object".into());
    }
    serde_json::from_slice(bytes).map_err(|err| format!("the body is not the expected JSON: {err}"))
}

/// Whether JSON text starts an object (`{` after optional whitespace); the parse checks the rest.
fn starts_json_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// 200 with the report while an exec could be spawned; 503 with the same report, `ok: false` and
/// `unhealthy: <reason>` when the spawn probe fails (see [`super::health`]).
async fn health(daemon: &Arc<Daemon>) -> HttpResponse {
    #[derive(serde::Serialize)]
    struct Report {
        #[serde(flatten)]
        report: HealthReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        unhealthy: Option<String>,
    }
    let probe = daemon.spawn_probe.check(daemon).await;
    let status = if probe.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &Report {
            unhealthy: probe.as_ref().err().map(ToString::to_string),
            report: health_report(daemon, probe.is_ok()),
        },
    )
}

fn health_report(daemon: &Daemon, ok: bool) -> HealthReport {
    HealthReport {
        ok,
        booted_at_ms: daemon.activity.booted_at_ms,
        last_activity_at_ms: daemon.activity.last_activity_at_ms(),
        live_execs: daemon.execs.live_count() as u64,
        active_screencasts: 0,
        reaped_orphans: daemon.reaper.orphans_reaped(),
        credential_accesses: daemon.credentials.accesses(),
    }
}

async fn exec(daemon: Arc<Daemon>, request: Request<Incoming>) -> HttpResponse {
    let wire: ExecRequestWire = match json_body(&daemon, request).await {
        Ok(wire) => wire,
        Err(response) => return response,
    };
    match start_exec(&daemon, wire).await {
        Ok(cursor) => ndjson_stream(cursor),
        Err(refused) => {
            let line = refusal_event(refused).to_line();
            ndjson_response(http_body_util::Full::new(Bytes::from(line)).boxed_unsync())
        }
    }
}

fn attach(daemon: &Daemon, id: &str, request: &Request<Incoming>) -> HttpResponse {
    let since_seq = match parse_since_seq(query_param(request, "sinceSeq").as_deref()) {
        Ok(seq) => seq,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", Some(message.into())),
    };
    let Some(exec) = daemon.execs.get(id) else {
        return not_found();
    };
    exec.rearm_deadline();
    ndjson_stream(exec.journal.cursor(since_seq))
}

/// The `sinceSeq` of an attach: absent is 0, else a decimal `u64`, or the message of the 400.
pub(super) fn parse_since_seq(value: Option<&str>) -> Result<u64, &'static str> {
    match value {
        None => Ok(0),
        Some(value) => value
            .parse::<u64>()
            .map_err(|_| "sinceSeq must be a non-negative integer"),
    }
}

/// `GET /execs` (tale, additive): live and retained execs with their state.
fn list_execs(daemon: &Daemon) -> HttpResponse {
    let execs = daemon
        .execs
        .all()
        .iter()
        .map(|exec| {
            let (state, exit_code) = match exec.status() {
                ExecStatusState::Running { .. } => ("running", None),
                ExecStatusState::Exited { exit_code } => ("exited", exit_code),
                ExecStatusState::Gone {} => ("gone", None),
            };
            ExecSummary {
                exec_id: exec.id.clone(),
                state: state.to_owned(),
                started_at_ms: exec.started_at_ms,
                exit_code,
                pty: exec.is_pty(),
            }
        })
        .collect();
    json(StatusCode::OK, &ExecList { execs })
}

fn cancel(daemon: &Daemon, id: &str) -> HttpResponse {
    let killed = daemon
        .execs
        .get(id)
        .is_some_and(|exec| exec.cancel(&daemon.trees));
    if killed {
        daemon.activity.touch();
    }
    json(StatusCode::OK, &CancelReply { killed })
}

async fn stdin(daemon: &Daemon, id: &str, request: Request<Incoming>) -> HttpResponse {
    let body: StdinRequest = match json_body(daemon, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(StdinRequest::EMPTY_MESSAGE.into()),
        );
    }
    let reply = |result: Result<(), _>| {
        json(
            StatusCode::OK,
            &StdinReply {
                ok: result.is_ok(),
                reason: result.err(),
            },
        )
    };
    let Some(exec) = daemon.execs.get(id).filter(|e| e.is_live()) else {
        return reply(Err(
            crate::shared::protocol::runnerd::StdinRefusal::NotFound,
        ));
    };
    let parse = if exec.has_raw_stdin() {
        parse_raw
    } else {
        parse_line
    };
    let line = match body.b64.as_deref() {
        None | Some("") => None,
        Some(b64) => match parse(b64) {
            Ok(line) => Some(line),
            Err(refusal) => return reply(Err(refusal)),
        },
    };
    reply(
        exec.write_stdin(line, body.eof.unwrap_or(false), &daemon.activity)
            .await,
    )
}

/// `POST /execs/:id/resize` (tale, additive): `{cols, rows}` for a running pty exec.
async fn resize(daemon: &Daemon, id: &str, request: Request<Incoming>) -> HttpResponse {
    let body: serde_json::Value = match json_body(daemon, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let size = match PtySize::from_value(&body) {
        Ok(size) => size,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", Some(message)),
    };
    let result = match daemon.execs.get(id) {
        Some(exec) => exec.resize(size, &daemon.activity),
        None => Err(ResizeRefusal::NotFound),
    };
    json(
        StatusCode::OK,
        &ResizeReply {
            ok: result.is_ok(),
            reason: result.err(),
        },
    )
}

fn status(daemon: &Daemon, id: &str) -> HttpResponse {
    match daemon.execs.get(id) {
        Some(exec) => json(
            StatusCode::OK,
            &ExecStatus {
                exec_id: id.to_owned(),
                state: exec.status(),
            },
        ),
        None => json(
            StatusCode::NOT_FOUND,
            &ExecStatus {
                exec_id: id.to_owned(),
                state: ExecStatusState::Gone {},
            },
        ),
    }
}

async fn env(daemon: &Daemon, request: Request<Incoming>) -> HttpResponse {
    let patch: EnvPatch = match json_body(daemon, request).await {
        Ok(patch) => patch,
        Err(response) => return response,
    };
    let denied = daemon.env_store().patch(
        &patch.set.unwrap_or_default(),
        &patch.unset.unwrap_or_default(),
    );
    daemon.activity.touch();
    json(StatusCode::OK, &EnvReply { ok: true, denied })
}

/// `PUT /seed`: records that the create-time seed was delivered whole. Idempotent; a later mark
/// replaces the digest (a retried create that re-delivered a different seed).
async fn mark_seeded(daemon: &Daemon, request: Request<Incoming>) -> HttpResponse {
    let mark: SeedMark = match json_body(daemon, request).await {
        Ok(mark) => mark,
        Err(response) => return response,
    };
    if !mark.is_valid() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("digest must be 64 lowercase hex digits".into()),
        );
    }
    let status = SeedStatus {
        seeded: true,
        digest: Some(mark.digest),
        seeded_at_ms: Some(crate::shared::clock::now_ms()),
    };
    *daemon.seed() = status.clone();
    json(StatusCode::OK, &status)
}

async fn stage(daemon: &Daemon, request: Request<Incoming>) -> HttpResponse {
    let body: StageRequest = match json_body(daemon, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    daemon.activity.touch();
    let reply = daemon.workspace.stage(body).await;
    daemon.activity.touch();
    json(StatusCode::OK, &reply)
}

async fn delete(daemon: &Daemon, request: Request<Incoming>) -> HttpResponse {
    let body: DeleteRequest = match json_body(daemon, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let reply = daemon.workspace.delete(body).await;
    daemon.activity.touch();
    json(StatusCode::OK, &reply)
}

async fn list(daemon: &Daemon, request: &Request<Incoming>) -> HttpResponse {
    let path = query_param(request, "path").unwrap_or_else(|| ".".into());
    match daemon.workspace.list(&path).await {
        Ok(reply) => json(StatusCode::OK, &reply),
        Err(err) => file_error(err),
    }
}

async fn read(daemon: &Daemon, request: &Request<Incoming>) -> HttpResponse {
    let Some(path) = query_param(request, "path") else {
        return not_found();
    };
    if query_param(request, "offset").is_some() || query_param(request, "length").is_some() {
        return read_range(daemon, request, &path).await;
    }
    match daemon.workspace.read(&path).await {
        Ok(bytes) => {
            let mut response = Response::new(crate::shared::http::full(bytes));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Err(err) => file_error(err),
    }
}

/// The header of a ranged read that gives the file's whole size.
pub const FILE_SIZE_HEADER: &str = crate::shared::protocol::runnerd::FILE_SIZE_HEADER;

/// An optional `u64` query parameter, or the message of the 400 that names it.
fn u64_param(request: &Request<Incoming>, name: &str) -> Result<Option<u64>, String> {
    match query_param(request, name) {
        None => Ok(None),
        Some(value) => value
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{name} must be a non-negative integer")),
    }
}

fn bad_request(message: String) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, "bad_request", Some(message))
}

/// `GET /fs/read?path=&offset=&length=`: a piece of a file of any size, with its whole size in
/// `x-tale-file-size` (length defaults to, and is capped at, the whole-read cap).
async fn read_range(daemon: &Daemon, request: &Request<Incoming>, path: &str) -> HttpResponse {
    let (offset, length) = match (u64_param(request, "offset"), u64_param(request, "length")) {
        (Ok(offset), Ok(length)) => (offset.unwrap_or(0), length.unwrap_or(u64::MAX)),
        (Err(message), _) | (_, Err(message)) => return bad_request(message),
    };
    match daemon.workspace.read_range(path, offset, length).await {
        Ok((bytes, size)) => {
            let mut response = Response::new(crate::shared::http::full(bytes));
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(FILE_SIZE_HEADER, HeaderValue::from(size));
            response
        }
        Err(err) => file_error(err),
    }
}

/// `POST /files/write?path=&offset=[&commit=true]`, the chunk as the raw body (at most
/// [`MAX_WRITE_CHUNK_BYTES`](super::limits::MAX_WRITE_CHUNK_BYTES)): 200 `{path, size,
/// committed}`; 409 `offset_mismatch` (message: the staging file's size) when the chunk does not
/// start where the file ends; 400 `unsafe_path` / `write_failed` / `not_a_regular_file`.
async fn write_chunk(daemon: &Daemon, request: Request<Incoming>) -> HttpResponse {
    use super::files::chunked::WriteFailure;
    use super::files::WriteError;
    let Some(path) = query_param(&request, "path") else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("path is required".into()),
        );
    };
    let offset = match u64_param(&request, "offset") {
        Ok(Some(offset)) => offset,
        Ok(None) => return bad_request("offset is required".into()),
        Err(message) => return bad_request(message),
    };
    let commit = match query_param(&request, "commit").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some("commit must be true or false".into()),
            )
        }
    };
    let data = match raw_body(daemon, request, super::limits::MAX_WRITE_CHUNK_BYTES).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    daemon.activity.touch();
    let result = daemon
        .workspace
        .write_chunk(&path, offset, data, commit)
        .await;
    daemon.activity.touch();
    match result {
        Ok(size) => json(
            StatusCode::OK,
            &serde_json::json!({"path": path, "size": size, "committed": commit}),
        ),
        Err(WriteError::Failed(WriteFailure::Offset(size))) => error(
            StatusCode::CONFLICT,
            "offset_mismatch",
            Some(format!("the file being written holds {size} bytes")),
        ),
        Err(WriteError::Failed(WriteFailure::NotRegular)) => error(
            StatusCode::BAD_REQUEST,
            "not_a_regular_file",
            Some("the path is a FIFO, socket or device".into()),
        ),
        Err(WriteError::Failed(WriteFailure::Path(reason))) if reason == "unsafe_path" => error(
            StatusCode::BAD_REQUEST,
            "unsafe_path",
            Some("the path leaves the workspace or is not a file runnerd may write".into()),
        ),
        Err(WriteError::Failed(WriteFailure::Path(reason))) => {
            error(StatusCode::BAD_REQUEST, "write_failed", Some(reason))
        }
        Err(WriteError::TimedOut) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "file_operation_timed_out",
            Some("the file operation did not finish in time".into()),
        ),
    }
}

/// 404 for a path that is missing, not allowed or of the wrong kind (not told apart); 400
/// `not_a_regular_file` for a FIFO, socket or device, whose content runnerd never opens for
/// reading; 503 `file_operation_timed_out` past [`FILE_OP_TIMEOUT`](super::limits::FILE_OP_TIMEOUT).
fn file_error(err: FileError) -> HttpResponse {
    match err {
        FileError::NotFound => not_found(),
        FileError::NotRegular => error(
            StatusCode::BAD_REQUEST,
            "not_a_regular_file",
            Some("the path is a FIFO, socket or device; runnerd reads regular files only".into()),
        ),
        FileError::TimedOut => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "file_operation_timed_out",
            Some("the file operation did not finish in time".into()),
        ),
    }
}

async fn grant_credential(daemon: &Daemon, request: Request<Incoming>) -> HttpResponse {
    let grant: GitCredentialGrant = match json_body(daemon, request).await {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    match daemon.credentials.grant(grant) {
        Ok(()) => json(
            StatusCode::OK,
            &CredentialReply {
                ok: true,
                existed: None,
            },
        ),
        Err(err) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(err.to_string()),
        ),
    }
}

fn revoke_credential(daemon: &Daemon, host: &str) -> HttpResponse {
    let existed = daemon.credentials.revoke(&revoke_host(host));
    json(
        StatusCode::OK,
        &CredentialReply {
            ok: true,
            existed: Some(existed),
        },
    )
}

/// The host of `DELETE /credentials/git/:host`, percent-decoded (invalid UTF-8 replaced).
pub(super) fn revoke_host(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn ndjson_response(body: crate::shared::http::ResponseBody) -> HttpResponse {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Streams a journal cursor until the journal ends or the client goes away.
fn ndjson_stream(cursor: JournalCursor) -> HttpResponse {
    ndjson_response(CursorBody::new(cursor).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an object is a request body; arrays, scalars and nothing are not.
    #[test]
    fn bodies_must_be_objects() {
        for body in [&b"{}"[..], b" \n\t{\"a\":1}", b"{"] {
            assert!(starts_json_object(body), "{body:?}");
        }
        for body in [&b"[{\"X\":\"1\"}]"[..], b"7", b"\"x\"", b"null", b"", b"  "] {
            assert!(!starts_json_object(body), "{body:?}");
        }
    }
}

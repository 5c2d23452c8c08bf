//! The spawner's client for one session's runnerd: JSON calls with a timeout, and exec streams read
//! line by line as typed events. Plain HTTP, or TLS that trusts exactly the session's own
//! certificate ([`RunnerdClient::pinned`]).
use super::limits::{
    MAX_EVENT_LINE_BYTES, RUNNERD_CALL_TIMEOUT, RUNNERD_POOL_IDLE_TIMEOUT, RUNNERD_PROBE_TIMEOUT,
    RUNNERD_STAGE_TIMEOUT,
};
use crate::shared::ndjson::NdjsonLines;
use crate::shared::protocol::runnerd::{
    CancelReply, CredentialReply, DeleteReply, DeleteRequest, EnvPatch, EnvReply, ExecEvent,
    ExecList, ExecRequest, ExecStatus, GitCredentialGrant, HealthReport, ListReply, PtySize,
    ResizeReply, SeedMark, SeedStatus, StageReply, StdinReply, StdinRequest, TOKEN_HEADER,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// A transport failure's cause.
pub use crate::shared::http::BoxError;

/// What went wrong talking to runnerd.
#[derive(Debug, thiserror::Error)]
pub enum RunnerdError {
    /// runnerd could not be reached or the connection broke. The message names the whole chain of
    /// causes because it reaches clients in `upstream_error` bodies.
    #[error("runnerd could not be reached: {}", error_chain(.0.as_ref()))]
    Transport(#[source] BoxError),
    #[error("runnerd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("runnerd answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    /// A reply or event line was not what the protocol says.
    #[error("runnerd's answer could not be understood: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("runnerd's answer could not be understood: bad event line: {0}")]
    BadEvent(#[source] serde_json::Error),
    #[error("runnerd's answer could not be understood: event line too long")]
    EventLineTooLong,
}

impl RunnerdError {
    /// True when runnerd was not reachable at all (as opposed to answering badly).
    pub fn is_transport(&self) -> bool {
        matches!(self, RunnerdError::Transport(_) | RunnerdError::Timeout(_))
    }
}

pub use crate::shared::protocol::runnerd::FILE_SIZE_HEADER;

/// A runnerd answer relayed as it is: status, body, and the `x-tale-file-size` header if any.
#[derive(Debug)]
pub struct RawReply {
    pub status: StatusCode,
    pub file_size: Option<u64>,
    pub body: Bytes,
}

/// A client bound to one runnerd base URL and token. Cheap to clone.
#[derive(Clone)]
pub struct RunnerdClient {
    base: String,
    token: String,
    http: Transport,
}

/// How bytes reach runnerd.
#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    /// TLS only (an `http://` base is taken as `https://`), trusting one certificate. Boxed: the
    /// TLS connector would double the size of every client value.
    Pinned(Box<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>),
}

impl Transport {
    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Transport::Plain(client) => client.request(request),
            Transport::Pinned(client) => client.request(request),
        }
    }
}

fn tcp_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(RUNNERD_PROBE_TIMEOUT));
    connector
}

fn pooled() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(RUNNERD_POOL_IDLE_TIMEOUT);
    builder
}

impl RunnerdClient {
    /// A plain-HTTP client.
    pub fn new(base_url: &str, token: &str) -> RunnerdClient {
        RunnerdClient {
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: Transport::Plain(pooled().build(tcp_connector())),
        }
    }

    /// A TLS client that accepts only a server presenting `cert_der` (and proving it holds its
    /// key): no CA, no host name check. `base_url` may say `http://`; the client speaks TLS anyway.
    pub fn pinned(base_url: &str, token: &str, cert_der: &[u8]) -> RunnerdClient {
        let base = base_url.trim_end_matches('/');
        let base = match base.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => base.to_owned(),
        };
        let mut tcp = tcp_connector();
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::shared::tls::pinned::pinned_client_config(cert_der))
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        RunnerdClient {
            base,
            token: token.to_owned(),
            http: Transport::Pinned(Box::new(pooled().build(connector))),
        }
    }

    /// A client for a session's runnerd: pinned to `tls`'s certificate when given, else plain.
    pub fn for_session(
        base_url: &str,
        token: &str,
        tls: Option<&crate::shared::tls::SessionTls>,
    ) -> RunnerdClient {
        match tls {
            Some(tls) => RunnerdClient::pinned(base_url, token, tls.cert_der()),
            None => RunnerdClient::new(base_url, token),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<hyper::Response<Incoming>, RunnerdError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query))
            .header(TOKEN_HEADER, &self.token);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RunnerdError::Transport(e.into()))?;
        let call = self.http.request(request);
        let response = match timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| RunnerdError::Timeout(limit))?,
            None => call.await,
        };
        response.map_err(|e| RunnerdError::Transport(e.into()))
    }

    /// A JSON call: `Ok((status, body))` for any status in `accepted`, else an error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        accepted: &[StatusCode],
        timeout: Duration,
    ) -> Result<(StatusCode, T), RunnerdError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("requests serialize"));
        let work = async {
            let response = self.send(method, path, body, None).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| RunnerdError::Transport(e.into()))?
                .to_bytes();
            if !accepted.contains(&status) {
                return Err(status_error(status, &bytes));
            }
            let value = serde_json::from_slice(&bytes).map_err(RunnerdError::Decode)?;
            Ok((status, value))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| RunnerdError::Timeout(timeout))?
    }

    /// A JSON call that must answer 200 within [`RUNNERD_CALL_TIMEOUT`].
    async fn call_ok<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, RunnerdError> {
        Ok(self
            .call(method, path, body, &[StatusCode::OK], RUNNERD_CALL_TIMEOUT)
            .await?
            .1)
    }

    pub async fn health(&self) -> Result<HealthReport, RunnerdError> {
        let none: Option<&()> = None;
        Ok(self
            .call(
                Method::GET,
                "/healthz",
                none,
                &[StatusCode::OK],
                RUNNERD_PROBE_TIMEOUT,
            )
            .await?
            .1)
    }

    /// Starts an exec.
    pub async fn exec(&self, request: &ExecRequest) -> Result<EventStream, RunnerdError> {
        let body = serde_json::to_vec(request).expect("requests serialize");
        let response = self
            .send(
                Method::POST,
                "/execs",
                Some(body),
                Some(RUNNERD_CALL_TIMEOUT),
            )
            .await?;
        stream_or_error(response)
            .await
            .map(|s| s.expect("POST /execs never answers 404"))
    }

    /// Attaches to an exec; `None` when runnerd does not know it.
    pub async fn attach(
        &self,
        exec_id: &str,
        since_seq: u64,
    ) -> Result<Option<EventStream>, RunnerdError> {
        let path = format!("/execs/{exec_id}/attach?sinceSeq={since_seq}");
        let response = self
            .send(Method::GET, &path, None, Some(RUNNERD_CALL_TIMEOUT))
            .await?;
        stream_or_error(response).await
    }

    pub async fn cancel(&self, exec_id: &str) -> Result<CancelReply, RunnerdError> {
        let none: Option<&()> = None;
        let path = format!("/execs/{exec_id}/cancel");
        self.call_ok(Method::POST, &path, none).await
    }

    pub async fn stdin(
        &self,
        exec_id: &str,
        body: &StdinRequest,
    ) -> Result<StdinReply, RunnerdError> {
        let path = format!("/execs/{exec_id}/stdin");
        self.call_ok(Method::POST, &path, Some(body)).await
    }

    /// Sets a pty exec's window size (`POST /execs/:id/resize`).
    pub async fn resize(&self, exec_id: &str, size: &PtySize) -> Result<ResizeReply, RunnerdError> {
        let path = format!("/execs/{exec_id}/resize");
        self.call_ok(Method::POST, &path, Some(size)).await
    }

    /// Live and retained execs (`GET /execs`).
    pub async fn list_execs(&self) -> Result<ExecList, RunnerdError> {
        let none: Option<&()> = None;
        self.call_ok(Method::GET, "/execs", none).await
    }

    /// Exec status; runnerd's 404 `gone` comes back as `Ok` with status 404.
    pub async fn status(&self, exec_id: &str) -> Result<(StatusCode, ExecStatus), RunnerdError> {
        let none: Option<&()> = None;
        let path = format!("/execs/{exec_id}");
        self.call(
            Method::GET,
            &path,
            none,
            &[StatusCode::OK, StatusCode::NOT_FOUND],
            RUNNERD_CALL_TIMEOUT,
        )
        .await
    }

    pub async fn patch_env(&self, patch: &EnvPatch) -> Result<EnvReply, RunnerdError> {
        self.call_ok(Method::POST, "/env", Some(patch)).await
    }

    /// `GET /seed`. `Ok(None)` when runnerd predates the route (404): it was started by a release
    /// that kept no seed record.
    pub async fn seed_status(&self) -> Result<Option<SeedStatus>, RunnerdError> {
        self.get_unless_404("/seed").await
    }

    /// A GET answered 200 with a `T`, or 404 (`None`).
    async fn get_unless_404<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, RunnerdError> {
        let none: Option<&()> = None;
        self.call_unless_404(Method::GET, path, none).await
    }

    /// A call answered 200 with a `T`, or 404 (`None`: the path, or the route, is not there).
    async fn call_unless_404<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, RunnerdError> {
        let (status, value) = self
            .call::<serde_json::Value>(
                method,
                path,
                body,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
                RUNNERD_CALL_TIMEOUT,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(RunnerdError::Decode)
    }

    /// `PUT /seed`: records that the create-time seed named by `digest` was delivered whole.
    /// `Ok(None)` when runnerd predates the route (404): it cannot keep the record.
    pub async fn mark_seeded(&self, digest: &str) -> Result<Option<SeedStatus>, RunnerdError> {
        let mark = SeedMark {
            digest: digest.to_owned(),
        };
        self.call_unless_404(Method::PUT, "/seed", Some(&mark))
            .await
    }

    /// Stages files. The body is generic: the spawner forwards the platform's stage body as it came
    /// (a [`StageRequest`](crate::shared::protocol::runnerd::StageRequest) in shape), so that
    /// runnerd's own validation answers a malformed one.
    pub async fn stage(&self, request: &impl Serialize) -> Result<StageReply, RunnerdError> {
        Ok(self
            .call(
                Method::POST,
                "/files/stage",
                Some(request),
                &[StatusCode::OK],
                RUNNERD_STAGE_TIMEOUT,
            )
            .await?
            .1)
    }

    pub async fn delete_files(&self, request: &DeleteRequest) -> Result<DeleteReply, RunnerdError> {
        self.call_ok(Method::POST, "/files/delete", Some(request))
            .await
    }

    /// Directory listing; `None` for runnerd's 404.
    pub async fn list(&self, path: &str) -> Result<Option<ListReply>, RunnerdError> {
        self.get_unless_404(&format!("/fs/list?path={}", encode_query(path)))
            .await
    }

    /// File bytes; `None` for runnerd's 404.
    pub async fn read(&self, path: &str) -> Result<Option<Bytes>, RunnerdError> {
        let query = format!("/fs/read?path={}", encode_query(path));
        let response = self
            .send(Method::GET, &query, None, Some(RUNNERD_CALL_TIMEOUT))
            .await?;
        let status = response.status();
        let bytes = tokio::time::timeout(RUNNERD_CALL_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| RunnerdError::Timeout(RUNNERD_CALL_TIMEOUT))?
            .map_err(|e| RunnerdError::Transport(e.into()))?
            .to_bytes();
        match status {
            StatusCode::OK => Ok(Some(bytes)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(status_error(status, &bytes)),
        }
    }

    /// One chunk of a file written in pieces (`POST /files/write`): runnerd's status and body.
    pub async fn write_chunk(
        &self,
        path: &str,
        offset: u64,
        commit: bool,
        data: Vec<u8>,
    ) -> Result<RawReply, RunnerdError> {
        let query = format!(
            "/files/write?path={}&offset={offset}&commit={commit}",
            encode_query(path)
        );
        self.raw(Method::POST, &query, Some(data)).await
    }

    /// A piece of a file (`GET /fs/read?offset=&length=`): runnerd's status, body and the
    /// file's whole size.
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<RawReply, RunnerdError> {
        let mut query = format!("/fs/read?path={}&offset={offset}", encode_query(path));
        if let Some(length) = length {
            query.push_str(&format!("&length={length}"));
        }
        self.raw(Method::GET, &query, None).await
    }

    /// A call whose answer is relayed as it is (bounded by runnerd's own caps, within
    /// [`RUNNERD_CALL_TIMEOUT`]).
    async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawReply, RunnerdError> {
        let work = async {
            let response = self.send(method, path_and_query, body, None).await?;
            let status = response.status();
            let file_size = response
                .headers()
                .get(FILE_SIZE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| RunnerdError::Transport(e.into()))?
                .to_bytes();
            Ok(RawReply {
                status,
                file_size,
                body,
            })
        };
        tokio::time::timeout(RUNNERD_CALL_TIMEOUT, work)
            .await
            .map_err(|_| RunnerdError::Timeout(RUNNERD_CALL_TIMEOUT))?
    }

    pub async fn grant_git_credential(
        &self,
        grant: &GitCredentialGrant,
    ) -> Result<CredentialReply, RunnerdError> {
        self.call_ok(Method::PUT, "/credentials/git", Some(grant))
            .await
    }

    pub async fn revoke_git_credential(&self, host: &str) -> Result<CredentialReply, RunnerdError> {
        let none: Option<&()> = None;
        let path = format!("/credentials/git/{}", encode_query(host));
        self.call_ok(Method::DELETE, &path, none).await
    }
}

/// A status runnerd was not expected to answer, with the start of its body.
fn status_error(status: StatusCode, body: &[u8]) -> RunnerdError {
    RunnerdError::Status {
        status,
        body: String::from_utf8_lossy(body).chars().take(500).collect(),
    }
}

fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn stream_or_error(
    response: hyper::Response<Incoming>,
) -> Result<Option<EventStream>, RunnerdError> {
    match response.status() {
        StatusCode::OK => Ok(Some(EventStream::new(response.into_body()))),
        StatusCode::NOT_FOUND => Ok(None),
        status => {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Err(status_error(status, &bytes))
        }
    }
}

/// The NDJSON events of one exec stream.
pub struct EventStream {
    body: Incoming,
    lines: NdjsonLines,
}

impl EventStream {
    fn new(body: Incoming) -> EventStream {
        EventStream {
            body,
            lines: NdjsonLines::new(MAX_EVENT_LINE_BYTES),
        }
    }

    /// The next event; `Ok(None)` when the stream ended cleanly, an error when it broke.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, RunnerdError> {
        loop {
            let line = self
                .lines
                .next_line()
                .map_err(|_| RunnerdError::EventLineTooLong)?;
            if let Some(line) = line {
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(RunnerdError::BadEvent);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                    }
                }
                Some(Err(err)) => return Err(RunnerdError::Transport(err.into())),
                None => return Ok(None),
            }
        }
    }
}

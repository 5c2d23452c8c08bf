//! Where sessions run. One trait, three engines: `docker` (one host), `kubernetes` (many hosts) and
//! `local` (runnerd child processes, for development and tests).
//!
//! Truth lives in the backend: its objects carry the session's id, organization, profile, creation
//! time and limits (Docker labels, Kubernetes labels/annotations, the local backend's state files), so
//! a restarted spawner re-adopts every session from `list_sessions`. Stopping removes compute and
//! keeps the workspace; only `destroy_session` deletes a workspace.
pub mod docker;
pub mod docker_quota;
pub mod kubernetes;
pub mod local;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so the trait can be used as `dyn Backend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Docker,
    Kubernetes,
    Local,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::Local => "local",
        }
    }
}

/// The resources and identity a session's runnerd runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionResources {
    /// uid:gid every exec drops to.
    pub exec_user: (u32, u32),
    /// CPUs (Docker `--cpus`).
    pub cpus: f64,
    /// Memory limit in bytes (also the memory+swap limit).
    pub memory_bytes: u64,
    pub pids_limit: i64,
    pub nofile: (u64, u64),
    pub fsize_bytes: u64,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    /// Disk quota of the session's workspace, in bytes (Docker: the size of its ext4 image;
    /// Kubernetes: the PVC size, capped by `SANDBOX_K8S_WORKSPACE_SIZE_LIMIT`).
    pub disk_quota_bytes: u64,
    /// Kubernetes `ephemeral-storage` limit of the session container, in bytes.
    pub ephemeral_storage_bytes: u64,
}

/// What a backend needs to create a session.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub session_id: String,
    pub organization_id: String,
    /// Profile name recorded on the backend's objects (`default`, `agent`).
    pub profile: String,
    pub ttl_ms: u64,
    pub idle_timeout_ms: u64,
    pub created_at_ms: u64,
    pub resources: SessionResources,
    /// The session's runnerd token; handed to the session as a file, never as an env var.
    pub runnerd_token: String,
    /// The key and certificate runnerd serves TLS with (`None`: plain HTTP). Handed to the
    /// session as [`RUNNERD_TLS_CERT_ENV`](crate::shared::protocol::runnerd::RUNNERD_TLS_CERT_ENV)
    /// and [`RUNNERD_TLS_KEY_ENV`](crate::shared::protocol::runnerd::RUNNERD_TLS_KEY_ENV).
    pub runnerd_tls: Option<crate::shared::tls::SessionTls>,
}

/// The environment that hands runnerd its TLS key and certificate (empty for plain HTTP).
pub fn runnerd_tls_env(spec: &SessionSpec) -> Vec<(&'static str, String)> {
    use crate::shared::protocol::runnerd::{RUNNERD_TLS_CERT_ENV, RUNNERD_TLS_KEY_ENV};
    match &spec.runnerd_tls {
        Some(tls) => vec![
            (RUNNERD_TLS_CERT_ENV, tls.cert_pem()),
            (RUNNERD_TLS_KEY_ENV, tls.key_pem()),
        ],
        None => Vec::new(),
    }
}

/// A session as the backend reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSession {
    pub session_id: String,
    pub organization_id: String,
    pub profile: String,
    pub created_at_ms: u64,
    /// TTL and idle limits recorded at creation (0 when the backend has none recorded).
    pub ttl_ms: u64,
    pub idle_timeout_ms: u64,
    /// Compute is running.
    pub running: bool,
}

/// What went wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A session with this id already has compute that is not ours to replace.
    #[error("session {0} already exists in the backend")]
    Exists(String),
    /// runnerd did not become ready in time.
    #[error("runnerd did not become ready within {waited_ms} ms: {detail}")]
    NotReady { waited_ms: u64, detail: String },
    /// The session's compute ended while starting.
    #[error("the session's compute ended while starting: {0}")]
    Died(String),
    /// The backend's engine refused or failed.
    #[error("{0}")]
    Engine(String),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// An input failed the backend's argument rules.
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
}

pub type BackendResult<T> = Result<T, BackendError>;

/// A session engine.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Creates (or resumes, when the workspace exists) the session's compute and waits until its
    /// runnerd answers `/healthz`, within `deadline`. Returns the runnerd base URL. On failure every
    /// object it created is removed; a pre-existing workspace is never deleted.
    fn create_session<'a>(
        &'a self,
        spec: &'a SessionSpec,
        deadline: std::time::Duration,
    ) -> BoxFuture<'a, BackendResult<String>>;

    /// The runnerd base URL of a live session.
    fn resolve_endpoint<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<String>>;

    /// `Ok(false)` only when the session's compute is definitely gone; errors when unknown.
    fn session_exists<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>>;

    /// Removes compute, keeps the workspace. Returns whether compute existed.
    fn stop_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>>;

    /// Removes compute and workspace. Returns whether anything existed.
    fn destroy_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>>;

    /// Every session with compute, optionally of one organization.
    fn list_sessions<'a>(
        &'a self,
        organization_id: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<ListedSession>>>;

    /// A short health description of the engine (e.g. the Docker server version).
    fn health(&self) -> BoxFuture<'_, BackendResult<serde_json::Value>>;

    /// `HOME` of the session's execs as a path inside the session (runnerd's
    /// `<workspace root>/.home`); agent CLIs keep their configuration under it.
    fn exec_home(&self, _session_id: &str) -> String {
        SESSION_EXEC_HOME.to_owned()
    }
}

/// Exec `HOME` in a session image: runnerd's default under the `/workspace` mount (also the agent
/// user's home in the runtime image).
pub const SESSION_EXEC_HOME: &str = "/workspace/.home";

/// Polls `url`'s runnerd `/healthz` (over TLS pinned to the session's certificate when `spec`
/// has one) until it answers or `deadline` passes; `still_alive` is asked after each failed probe
/// so a dead session fails fast with its reason.
pub async fn wait_for_runnerd<F, Fut>(
    url: &str,
    spec: &SessionSpec,
    deadline: std::time::Duration,
    mut still_alive: F,
) -> BackendResult<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let client = crate::modes::spawner::runnerd_client::RunnerdClient::for_session(
        url,
        &spec.runnerd_token,
        spec.runnerd_tls.as_ref(),
    );
    let started = tokio::time::Instant::now();
    let mut interval = READINESS_POLL_FIRST_INTERVAL;
    loop {
        let last = match client.health().await {
            Ok(_) => return Ok(()),
            Err(err) => err.to_string(),
        };
        if let Err(reason) = still_alive().await {
            return Err(BackendError::Died(reason));
        }
        if started.elapsed() >= deadline {
            return Err(BackendError::NotReady {
                waited_ms: deadline.as_millis() as u64,
                detail: last,
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(READINESS_POLL_MAX_INTERVAL);
    }
}

/// First wait between readiness probes of a starting session (runnerd is usually up within a few
/// milliseconds); each later wait doubles up to [`READINESS_POLL_MAX_INTERVAL`].
pub const READINESS_POLL_FIRST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// Longest wait between readiness probes.
pub const READINESS_POLL_MAX_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

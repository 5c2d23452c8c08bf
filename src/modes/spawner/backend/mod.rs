//! Where sessions run. One trait, three engines: `docker` (one host), `kubernetes` (many hosts) and
//! `local` (runnerd child processes, for development and tests).
//!
//! Truth lives in the backend: its objects carry the session's id, organization, profile, creation
//! time and limits (Docker labels, Kubernetes labels/annotations, the local backend's state files), so
//! a restarted spawner re-adopts every session from `list_sessions`. Stopping removes compute and
//! keeps the workspace; only `destroy_session` deletes a workspace.
pub mod docker;
pub mod docker_quota;
pub mod docker_shared;
pub mod kubernetes;
pub mod local;
pub mod names;

use crate::modes::spawner::runnerd_client::RunnerdError;
use crate::shared::http::BoxError;
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

/// A session brought back by [`Backend::heal_session`]: what it records, and its new runnerd URL.
#[derive(Clone, Debug)]
pub struct Healed {
    pub session: ListedSession,
    pub endpoint: String,
}

/// The caps a create must fit in, for a backend that arbitrates them (see
/// [`Backend::arbitrates_caps`]).
#[derive(Clone, Debug)]
pub struct CapRequest<'a> {
    pub session_id: &'a str,
    pub organization_id: &'a str,
    pub max_sessions: u64,
    pub max_per_org: u64,
    /// How long a create may take: a claim older than this whose session is not running is orphaned.
    pub create_budget: std::time::Duration,
}

/// The backend objects holding a create's cap slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapClaim {
    pub objects: Vec<String>,
}

/// A backend's answer to a cap claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapDecision {
    Admitted(CapClaim),
    SpawnerFull,
    OrgFull,
}

/// What went wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A session with this id already has compute that is not ours to replace.
    #[error("session {0} already exists in the backend")]
    Exists(String),
    /// A create of this id made its compute and has not started it yet (or crashed before it
    /// could): it may still finish, and counts as dead after `retry_after`.
    #[error("session {session_id} is being created by another create; retry in {} s", retry_after.as_secs())]
    CreateInProgress {
        session_id: String,
        retry_after: std::time::Duration,
    },
    /// An object named for this session belongs to another session or organization: it is never
    /// used, replaced or removed for this one. Whose it is goes to the log, not to the caller.
    #[error("the {object} {name} named for session {session_id} belongs to another session or organization; refusing to use it")]
    OwnerMismatch {
        object: &'static str,
        name: String,
        session_id: String,
    },
    /// The compute did not become reachable before the create deadline (a Pod that got no
    /// address); `detail` says how far it got.
    #[error("runnerd did not become ready within {waited_ms} ms: {detail}")]
    NotReady { waited_ms: u64, detail: String },
    /// The compute runs but runnerd's `/healthz` never answered before the create deadline; the
    /// last probe's failure is the source (and, as ever, the end of the message).
    #[error("runnerd did not become ready within {waited_ms} ms: {last_probe}")]
    HealthNeverAnswered {
        waited_ms: u64,
        #[source]
        last_probe: RunnerdError,
    },
    /// The container, process or Pod exited before runnerd answered; the text is its last words
    /// (log tail, exit status or Pod reason).
    #[error("the session's compute ended while starting: {0}")]
    Died(String),
    /// The backend's engine refused or failed, and no lower error says why (a container without
    /// an address, a setting that cannot work).
    #[error("{0}")]
    Engine(String),
    /// A call to the engine failed: `context` names the call, `source` is the engine's error.
    #[error("{context}: {source}")]
    EngineCall { context: String, source: BoxError },
    /// A blocking task the backend ran panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The session's compute is out of reach and cannot be replaced yet (a Pod on a node that
    /// stopped reporting and may still write the workspace): `detail` says what is missing.
    #[error("session {session_id} is unreachable: {detail}")]
    Unreachable { session_id: String, detail: String },
    /// An input failed the backend's argument rules.
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
}

pub type BackendResult<T> = Result<T, BackendError>;

impl BackendError {
    /// A failed engine call, keeping the engine's error as the cause.
    pub fn engine_call(context: impl Into<String>, source: impl Into<BoxError>) -> BackendError {
        BackendError::EngineCall {
            context: context.into(),
            source: source.into(),
        }
    }
}

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

    /// Brings back a session whose compute was lost (evicted, failed, gone with its node) on its
    /// kept workspace, with the spec `spec_for` makes from what the backend recorded; within
    /// `deadline`. `Ok(None)` when there is nothing to heal (no workspace, stopped on purpose,
    /// compute still there). Backends whose compute restarts by itself heal nothing here.
    fn heal_session<'a>(
        &'a self,
        _session_id: &'a str,
        _spec_for: &'a (dyn Fn(&ListedSession) -> SessionSpec + Send + Sync),
        _deadline: std::time::Duration,
    ) -> BoxFuture<'a, BackendResult<Option<Healed>>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the backend itself arbitrates the caps (atomically, across replicas): then the
    /// spawner claims slots with [`Backend::claim_capacity`] instead of counting its registry.
    fn arbitrates_caps(&self) -> bool {
        false
    }

    /// Claims one per-organization and one global slot for a create. Stopping or destroying the
    /// session releases its slots; a create that fails hands them back with [`Backend::release_claim`].
    fn claim_capacity<'a>(
        &'a self,
        _request: &'a CapRequest<'a>,
    ) -> BoxFuture<'a, BackendResult<CapDecision>> {
        Box::pin(async { Ok(CapDecision::Admitted(CapClaim::default())) })
    }

    /// Gives a running session that holds no slots (one created by a release without claims) its
    /// slots, so it counts against the caps; `Ok(false)` when the caps are already full (it runs
    /// on, uncounted until slots free up).
    fn adopt_claim<'a>(
        &'a self,
        _request: &'a CapRequest<'a>,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async { Ok(true) })
    }

    /// Hands back the slots of a create that failed (only these objects: a concurrent create of the
    /// same id keeps its own).
    fn release_claim<'a>(&'a self, _claim: &'a CapClaim) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Every pinned session, from one listing (`None`: ask `is_pinned` per session, which is what
    /// backends whose pin read is local and cheap do).
    fn pinned_sessions(
        &self,
    ) -> BoxFuture<'_, BackendResult<Option<std::collections::HashSet<String>>>> {
        Box::pin(async { Ok(None) })
    }

    /// The sessions holding a cap claim now, from one listing, so an adoption pass calls
    /// `adopt_claim` only for sessions that hold none (a previous release's) instead of listing
    /// the claims once per session. `None` when the backend does not arbitrate caps.
    fn claimed_sessions(
        &self,
    ) -> BoxFuture<'_, BackendResult<Option<std::collections::HashSet<String>>>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether pins live in the backend (they outlive the process and every replica sees them).
    fn persists_pins(&self) -> bool {
        false
    }

    /// Records the session's pin in the backend (only when [`Backend::persists_pins`]).
    fn set_pinned<'a>(
        &'a self,
        _session_id: &'a str,
        _pinned: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// The session's pin as the backend records it (`false` when it does not record pins).
    fn is_pinned<'a>(&'a self, _session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async { Ok(false) })
    }

    /// Of the sessions `ids`, those whose compute the backend knows (from what it has at hand,
    /// plus a bounded read of their nodes) to be out of reach; the others are reachable as far as
    /// it can tell. Backends whose compute cannot be lost apart from its host say nothing.
    fn reachability<'a>(
        &'a self,
        _ids: &'a [String],
    ) -> BoxFuture<
        'a,
        std::collections::HashMap<String, crate::shared::protocol::spawner::Reachability>,
    > {
        Box::pin(async { Default::default() })
    }

    /// Pinned sessions whose compute should run but is gone or ended (lost while no spawner
    /// watched them): boot adoption and the sweep heal them. Backends that do not heal have none.
    fn lost_pinned_sessions(&self) -> BoxFuture<'_, BackendResult<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Whether the spawner that created the session records its seed in runnerd (`PUT /seed`).
    /// `false` for a session a previous release created (it delivered the seed unrecorded): when
    /// that session runs this release's runnerd, the missing record does not mean "unseeded".
    fn creator_records_seed<'a>(
        &'a self,
        _session_id: &'a str,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async { Ok(true) })
    }

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
        let last_probe = match client.health().await {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if let Err(reason) = still_alive().await {
            return Err(BackendError::Died(reason));
        }
        if started.elapsed() >= deadline {
            return Err(BackendError::HealthNeverAnswered {
                waited_ms: deadline.as_millis() as u64,
                last_probe,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed engine call reads "context: cause" and keeps the engine's error as its source; a
    /// failed (here: cancelled) task is the task error itself.
    #[tokio::test]
    async fn engine_errors_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "socket says no");
        let error = BackendError::engine_call("cannot list containers", io);
        assert_eq!(error.to_string(), "cannot list containers: socket says no");
        let cause = std::error::Error::source(&error).expect("a cause");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);

        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let join = task.await.unwrap_err();
        let text = join.to_string();
        let error = BackendError::from(join);
        assert_eq!(error.to_string(), text, "the message is the task error's");
        assert!(matches!(error, BackendError::Task(ref j) if j.is_cancelled()));
    }

    /// A runnerd that never answers ends the readiness wait at its deadline (paused time: no real
    /// waiting) with the last probe's error as the cause, at the end of the usual message.
    #[tokio::test(start_paused = true)]
    async fn readiness_wait_keeps_the_last_probe_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = tokio::time::Instant::now();
        let mut spec = super::kubernetes::manifests::fixtures::spec();
        spec.runnerd_tls = None;
        let error = wait_for_runnerd(
            &format!("http://127.0.0.1:{port}"),
            &spec,
            std::time::Duration::from_secs(5),
            || async { Ok(()) },
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() >= std::time::Duration::from_secs(5));
        let BackendError::HealthNeverAnswered { ref last_probe, .. } = error else {
            panic!("{error:?}");
        };
        assert!(last_probe.is_transport(), "{last_probe:?}");
        assert_eq!(
            error.to_string(),
            format!("runnerd did not become ready within 5000 ms: {last_probe}")
        );
        let cause = std::error::Error::source(&error).expect("a cause");
        assert!(cause.downcast_ref::<RunnerdError>().is_some());
    }
}

//! The daemon's shared state, handed to every request handler and exec driver.
use super::activity::Activity;
use super::credentials::CredentialStore;
use super::env_store::EnvStore;
use super::exec::journal::JournalBudget;
use super::exec::launcher::Launcher;
use super::exec::tree::Trees;
use super::exec::ExecTable;
use super::files::Workspace;
use super::init::Reaper;
use super::limits::{DEFAULT_BODY_READ_TIMEOUT, SPAWNS_AT_ONCE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Everything a request may need.
pub struct Daemon {
    pub reaper: Arc<Reaper>,
    /// Finds and ends execs' process trees.
    pub trees: Arc<Trees>,
    pub execs: ExecTable,
    pub journal_budget: Arc<JournalBudget>,
    pub journal_memory_bytes: usize,
    pub launcher: Launcher,
    pub activity: Activity,
    env_store: Mutex<EnvStore>,
    /// Whether the spawner finished delivering the create-time seed (`PUT /seed`); in memory on
    /// purpose, so it lives exactly as long as the env and credentials it vouches for.
    seed: Mutex<crate::shared::protocol::runnerd::SeedStatus>,
    /// Canonical workspace root.
    pub root: PathBuf,
    /// File operations confined to the root.
    pub workspace: Workspace,
    /// SHA-256 of the expected `x-tale-runnerd-token`; `None` only with `--insecure-no-token`.
    pub token: Option<Vec<u8>>,
    /// Git credentials granted to this session.
    pub credentials: Arc<CredentialStore>,
    /// One permit per exec being spawned: a burst of execs waits here holding only its parsed
    /// request, not a fully built command (whole environment included) queued for a thread.
    pub spawn_permits: tokio::sync::Semaphore,
    /// `/healthz`'s spawn probe.
    pub spawn_probe: super::health::SpawnProbe,
    /// Time allowed for a request body (`--body-read-timeout-ms`), in milliseconds.
    body_read_timeout_ms: AtomicU64,
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reaper: Arc<Reaper>,
        trees: Arc<Trees>,
        execs: ExecTable,
        journal_budget: Arc<JournalBudget>,
        journal_memory_bytes: usize,
        launcher: Launcher,
        env_store: EnvStore,
        workspace: Workspace,
        token: Option<Vec<u8>>,
        credentials: Arc<CredentialStore>,
    ) -> Arc<Daemon> {
        Arc::new(Daemon {
            reaper,
            trees,
            execs,
            journal_budget,
            journal_memory_bytes,
            launcher,
            activity: Activity::new(),
            env_store: Mutex::new(env_store),
            seed: Mutex::new(crate::shared::protocol::runnerd::SeedStatus {
                seeded: false,
                digest: None,
                seeded_at_ms: None,
            }),
            root: workspace.root().to_path_buf(),
            workspace,
            token,
            credentials,
            spawn_permits: tokio::sync::Semaphore::new(SPAWNS_AT_ONCE),
            spawn_probe: Default::default(),
            body_read_timeout_ms: AtomicU64::new(DEFAULT_BODY_READ_TIMEOUT.as_millis() as u64),
        })
    }

    pub fn set_body_read_timeout(&self, timeout: Duration) {
        self.body_read_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn env_store(&self) -> MutexGuard<'_, EnvStore> {
        self.env_store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The seed record (`GET /seed`, `PUT /seed`).
    pub fn seed(&self) -> MutexGuard<'_, crate::shared::protocol::runnerd::SeedStatus> {
        self.seed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

//! `tale runnerd`: PID 1 of a session container. Reaps every process, runs execs in their own process
//! groups as the unprivileged exec user, streams their events from a replayable journal, and keeps
//! the session's env store and workspace file operations.
pub mod activity;
pub mod credentials;
pub mod env_store;
pub mod exec;
pub mod files;
pub mod init;
pub mod limits;
pub mod server;
pub mod state;
mod stream;

use crate::shared::logging::{self, LogFormat};
use credentials::CredentialStore;
use env_store::EnvStore;
use exec::journal::JournalBudget;
use exec::launcher::Launcher;
use exec::spool::SpoolBudget;
use exec::ExecTable;
use init::Reaper;
use limits::*;
use nix::sys::signal::Signal;
use state::Daemon;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Command-line flags of `tale runnerd`; each also reads the environment variable named.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "TALE_RUNNERD_LISTEN", default_value = "0.0.0.0:8200")]
    pub listen: std::net::SocketAddr,
    /// Run without a token: every client may drive this daemon. Development only.
    #[arg(long)]
    pub insecure_no_token: bool,
    /// Workspace root: execs' default cwd and the only tree file operations reach.
    #[arg(long, env = "TALE_WORKSPACE_ROOT", default_value = "/workspace")]
    pub workspace_root: PathBuf,
    /// HOME of every exec [default: <workspace root>/.home].
    #[arg(long, env = "TALE_EXEC_HOME")]
    pub exec_home: Option<PathBuf>,
    /// uid:gid execs run as when runnerd runs as root.
    #[arg(long, env = "TALE_EXEC_USER", default_value = "10001:10001", value_parser = parse_user)]
    pub exec_user: (u32, u32),
    /// Execs that may run at once.
    #[arg(long, env = "TALE_MAX_LIVE_EXECS", default_value_t = DEFAULT_MAX_LIVE_EXECS)]
    pub max_live_execs: usize,
    /// Finished execs kept for attach and status.
    #[arg(long, env = "TALE_MAX_RETAINED_EXECS", default_value_t = DEFAULT_MAX_RETAINED_EXECS)]
    pub max_retained_execs: usize,
    /// Directory of the journal's disk spool [default: <workspace root>/.tale/journal].
    #[arg(long, env = "TALE_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Directories shared by every user of the session (per-organization caches): created and set
    /// to mode 1777 at boot. Colon-separated in the environment.
    #[arg(long = "shared-dir", env = "TALE_SHARED_DIRS", value_delimiter = ':')]
    pub shared_dirs: Vec<PathBuf>,
    /// Unix socket the git credential helper asks [default: <workspace root>/.tale/credential.sock].
    #[arg(long, env = "TALE_CREDENTIAL_SOCKET")]
    pub credential_socket: Option<PathBuf>,
    /// In-memory tail of each exec's journal, in bytes.
    #[arg(long, env = "TALE_JOURNAL_MEMORY_BYTES", default_value_t = DEFAULT_JOURNAL_MEMORY_BYTES)]
    pub journal_memory_bytes: usize,
    /// Disk spool per exec, in bytes.
    #[arg(long, env = "TALE_JOURNAL_EXEC_SPOOL_BYTES", default_value_t = DEFAULT_JOURNAL_EXEC_SPOOL_BYTES)]
    pub journal_exec_spool_bytes: u64,
    /// Disk spool for the whole daemon, in bytes.
    #[arg(long, env = "TALE_JOURNAL_TOTAL_SPOOL_BYTES", default_value_t = DEFAULT_JOURNAL_TOTAL_SPOOL_BYTES)]
    pub journal_total_spool_bytes: u64,
    /// Milliseconds a connected reader may consume nothing before it stops holding its exec back
    /// (after that, output it has not received may be evicted and it gets a `gap`).
    #[arg(long, env = "TALE_JOURNAL_STALL_MS", default_value_t = DEFAULT_JOURNAL_STALL_WINDOW.as_millis() as u64)]
    pub journal_stall_ms: u64,
    /// On SIGTERM/SIGINT/SIGHUP: milliseconds between SIGTERM to every exec and SIGKILL.
    #[arg(long, env = "TALE_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE.as_millis() as u64)]
    pub shutdown_grace_ms: u64,
    /// Log line format.
    #[arg(long, env = "TALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_user(value: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not uid:gid"))?;
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{value:?} is not uid:gid"))
    };
    Ok((number(uid)?, number(gid)?))
}

/// Why runnerd refused to start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No token: set TALE_RUNNERD_TOKEN_FILE or TALE_RUNNERD_TOKEN, or pass --insecure-no-token.
    #[error("no runnerd token: set TALE_RUNNERD_TOKEN_FILE or TALE_RUNNERD_TOKEN, or pass --insecure-no-token for development")]
    NoToken,
    /// TALE_RUNNERD_TOKEN_SHA256 is not 64 hex digits.
    #[error("TALE_RUNNERD_TOKEN_SHA256 must be 64 hex digits")]
    BadTokenDigest,
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The workspace root could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The reaper could not start.
    #[error("cannot start the reaper: {0}")]
    Reaper(std::io::Error),
    /// The listen address is unusable.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the daemon until a shutdown signal; exits 0 after a clean shutdown.
pub fn run(args: Args) -> ExitCode {
    logging::init(args.log_format);
    match boot_and_serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("runnerd refused to start: {err}");
            ExitCode::FAILURE
        }
    }
}

/// SHA-256 of the expected token, from `TALE_RUNNERD_TOKEN_SHA256` (hex: the token itself never
/// enters the container), `TALE_RUNNERD_TOKEN_FILE` or `TALE_RUNNERD_TOKEN`. Only the digest is
/// kept, and presented tokens are compared by digest.
fn load_token(insecure: bool) -> Result<Option<Vec<u8>>, BootError> {
    if let Ok(hex) = std::env::var("TALE_RUNNERD_TOKEN_SHA256") {
        if !hex.is_empty() {
            return decode_sha256_hex(hex.trim())
                .map(Some)
                .ok_or(BootError::BadTokenDigest);
        }
    }
    let from_file = match std::env::var_os("TALE_RUNNERD_TOKEN_FILE") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| BootError::TokenFile { path, source })?;
            Some(text.trim().to_owned())
        }
        _ => None,
    };
    let token = from_file
        .or_else(|| std::env::var("TALE_RUNNERD_TOKEN").ok())
        .filter(|t| !t.is_empty());
    match (token, insecure) {
        (Some(token), _) => Ok(Some(token_digest(token.as_bytes()))),
        (None, true) => {
            tracing::warn!("!!! runnerd runs WITHOUT a token (--insecure-no-token): anyone who reaches this port can run commands here. Development only. !!!");
            Ok(None)
        }
        (None, false) => Err(BootError::NoToken),
    }
}

/// SHA-256 of a presented or configured token.
pub fn token_digest(token: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token)
        .as_ref()
        .to_vec()
}

fn decode_sha256_hex(text: &str) -> Option<Vec<u8>> {
    crate::shared::hex::decode(text).filter(|digest| digest.len() == 32)
}

/// Creates `dir` (and parents) and hands it to `owner` when given.
fn prepare_dir(dir: &Path, owner: Option<(u32, u32)>, mode: Option<u32>) -> Result<(), BootError> {
    let fail = |source| BootError::Prepare {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(fail)?;
    }
    Ok(())
}

fn boot_and_serve(args: Args) -> Result<(), BootError> {
    let token = load_token(args.insecure_no_token)?;
    init::adopt_orphans();
    let reaper = Reaper::start().map_err(BootError::Reaper)?;

    let is_root = nix::unistd::geteuid().is_root();
    let exec_user = is_root.then_some(args.exec_user);
    prepare_dir(&args.workspace_root, exec_user, None)?;
    let root =
        std::fs::canonicalize(&args.workspace_root).map_err(|source| BootError::Prepare {
            path: args.workspace_root.clone(),
            source,
        })?;
    let home = args.exec_home.clone().unwrap_or_else(|| root.join(".home"));
    prepare_dir(&home, exec_user, None)?;
    for dir in &args.shared_dirs {
        // A cache volume that cannot be prepared costs speed, not correctness: warn and go on.
        if let Err(err) = prepare_dir(dir, None, Some(0o1777)) {
            tracing::warn!("shared directory not prepared: {err}");
        }
    }
    // runnerd's own corner of the workspace: root-owned, so the exec user can neither replace the
    // credential socket nor reach the journal spool.
    let private_dir = root.join(".tale");
    prepare_dir(&private_dir, None, Some(0o755))?;
    let journal_dir = args
        .journal_dir
        .clone()
        .unwrap_or_else(|| private_dir.join("journal"));
    prepare_dir(&journal_dir, None, Some(0o700))?;
    let credential_socket = args
        .credential_socket
        .clone()
        .unwrap_or_else(|| private_dir.join("credential.sock"));

    let mut env_store = EnvStore::default();
    if let Ok(seed) = std::env::var("TALE_SESSION_ENV") {
        env_store.seed_from_json(&seed);
    }
    let exec_env = std::env::vars().chain([(
        credentials::CREDENTIAL_SOCKET_ENV.to_string(),
        credential_socket.display().to_string(),
    )]);
    let launcher = Launcher::new(exec_env, &home, exec_user);
    let budget = JournalBudget::with_stall_window(
        SpoolBudget::new(
            journal_dir,
            args.journal_total_spool_bytes,
            args.journal_exec_spool_bytes,
            SPOOL_SEGMENT_BYTES,
        ),
        Duration::from_millis(args.journal_stall_ms),
    );
    let daemon = Daemon::new(
        reaper,
        ExecTable::new(args.max_live_execs, args.max_retained_execs),
        budget,
        args.journal_memory_bytes,
        launcher,
        env_store,
        files::Workspace::open(&root, exec_user).map_err(|err| BootError::Prepare {
            path: root.clone(),
            source: std::io::Error::other(err.to_string()),
        })?,
        token,
        Arc::new(CredentialStore::default()),
    );

    // One thread runs every request, stream and output pump: runnerd's work is moving bytes, and
    // on one thread a reader is woken without a cross-thread hand-off (measured: no slower than
    // two workers on the 256 MiB stream, and one thread stack and allocator heap less). Blocking
    // work (spawns, file operations, spool reads) goes to a small pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Spawns and file work are short: a few threads serve a burst of 1000 execs, where the
        // default (512) would give each its own thread stack and allocator heap.
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .map_err(BootError::Runtime)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| BootError::Listen {
                addr: args.listen,
                source,
            })?;
        tracing::info!(
            listen = %listener.local_addr().map_or(args.listen, |a| a),
            root = %root.display(),
            shell = %daemon.launcher.shell().display(),
            exec_user = ?exec_user,
            pid = std::process::id(),
            "runnerd ready"
        );
        let socket = credentials::bind_socket(&credential_socket, exec_user).map_err(|source| {
            BootError::Prepare {
                path: credential_socket.clone(),
                source,
            }
        })?;
        tokio::spawn(credentials::serve_socket(
            socket,
            daemon.credentials.clone(),
            credential_socket.clone(),
        ));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_daemon = daemon.clone();
        let server = tokio::spawn(crate::shared::http::serve(
            listener,
            crate::shared::http::ServeOptions {
                header_read_timeout: HEADER_READ_TIMEOUT,
                // Streams are the bulk of runnerd's connections: 8 KiB less each. A client that
                // went away costs its exec nothing either way (B+ semantics: the exec goes on).
                allow_half_close: true,
            },
            move |request| server::handle(server_daemon.clone(), request),
            async {
                let _ = stop_rx.await;
            },
        ));
        let signal = match init::shutdown_signal().await {
            Ok(name) => name,
            Err(err) => {
                tracing::error!(%err, "cannot install signal handlers; serving without them");
                std::future::pending().await
            }
        };
        tracing::info!(signal, "shutting down");
        let _ = stop_tx.send(());
        let _ = server.await;
        shut_down_execs(&daemon, Duration::from_millis(args.shutdown_grace_ms)).await;
        Ok(())
    })
}

/// SIGTERM to every exec's group, SIGKILL to what is left after `grace`, then a moment for the
/// drivers to write their `exit` events.
async fn shut_down_execs(daemon: &Daemon, grace: Duration) {
    let live = daemon.execs.close();
    if live.is_empty() {
        return;
    }
    tracing::info!(count = live.len(), "terminating live execs");
    for exec in &live {
        exec.signal_group(Signal::SIGTERM);
    }
    if !all_execs_ended(daemon, grace).await {
        for exec in &live {
            exec.signal_group(Signal::SIGKILL);
        }
        all_execs_ended(daemon, PIPE_DRAIN_GRACE + Duration::from_millis(500)).await;
    }
}

/// Waits up to `limit` for every exec's driver to have written its terminal event.
async fn all_execs_ended(daemon: &Daemon, limit: Duration) -> bool {
    let ended = async {
        while daemon.execs.live_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(limit, ended).await.is_ok()
}

//! `tale runnerd`: PID 1 of a session container. Reaps every process, runs execs in their own process
//! groups as the unprivileged exec user, streams their events from a replayable journal, and keeps
//! the session's env store and workspace file operations.
pub mod activity;
pub mod boot_dirs;
pub mod credentials;
pub mod env_store;
pub mod exec;
pub mod files;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod init;
pub mod limits;
pub mod listener;
pub mod parking;
pub mod server;
pub mod source_allowlist;
pub mod state;
pub mod state_dir;
mod stream;
pub mod tls;

use crate::shared::logging::{self, LogFormat};
use crate::shared::protocol::runnerd::{parse_uid_gid, TOKEN_SHA256_ENV};
use credentials::CredentialStore;
use env_store::EnvStore;
use exec::journal::JournalBudget;
use exec::launcher::Launcher;
use exec::spool::SpoolBudget;
use exec::ExecTable;
use init::Reaper;
use limits::*;
use listener::Stage;
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
    #[arg(long, env = "TALE_EXEC_USER", default_value = DEFAULT_EXEC_USER_TEXT, value_parser = parse_user)]
    pub exec_user: (u32, u32),
    /// Execs that may run at once.
    #[arg(long, env = "TALE_MAX_LIVE_EXECS", default_value_t = DEFAULT_MAX_LIVE_EXECS)]
    pub max_live_execs: usize,
    /// Finished execs kept for attach and status.
    #[arg(long, env = "TALE_MAX_RETAINED_EXECS", default_value_t = DEFAULT_MAX_RETAINED_EXECS)]
    pub max_retained_execs: usize,
    /// Base of runnerd's private state (journal spool, credential socket): a fresh directory is
    /// made inside it at boot [default: /run/tale, else the system temp dir].
    #[arg(long, env = "TALE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of the journal's disk spool [default: <state dir>/journal].
    #[arg(long, env = "TALE_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Directories shared by every user of the session (per-organization caches): created and set
    /// to mode 1777 at boot. Colon-separated in the environment.
    #[arg(long = "shared-dir", env = "TALE_SHARED_DIRS", value_delimiter = ':')]
    pub shared_dirs: Vec<PathBuf>,
    /// Unix socket the git credential helper asks [default: <state dir>/credential.sock].
    #[arg(long, env = "TALE_CREDENTIAL_SOCKET")]
    pub credential_socket: Option<PathBuf>,
    /// File naming the source networks allowed to connect (loopback always is); kept current by
    /// the backend; no file = no restriction [default: <state dir base>/allowed-sources].
    #[arg(long, env = "TALE_ALLOWED_SOURCES_FILE")]
    pub allowed_sources_file: Option<PathBuf>,
    /// In-memory tail of each exec's journal, in bytes.
    #[arg(long, env = "TALE_JOURNAL_MEMORY_BYTES", default_value_t = DEFAULT_JOURNAL_MEMORY_BYTES)]
    pub journal_memory_bytes: usize,
    /// Disk spool per exec, in bytes.
    #[arg(long, env = "TALE_JOURNAL_EXEC_SPOOL_BYTES", default_value_t = DEFAULT_JOURNAL_EXEC_SPOOL_BYTES)]
    pub journal_exec_spool_bytes: u64,
    /// Disk spool for the whole daemon, in bytes.
    #[arg(long, env = "TALE_JOURNAL_TOTAL_SPOOL_BYTES", default_value_t = DEFAULT_JOURNAL_TOTAL_SPOOL_BYTES)]
    pub journal_total_spool_bytes: u64,
    /// First gid of the range runnerd (as root) gives execs as mark groups, one per exec, to find
    /// every process an exec started. The range must own no files and name no other group.
    #[arg(long, env = "TALE_EXEC_MARK_GID_BASE", default_value_t = exec::tree::DEFAULT_MARK_GID_BASE)]
    pub exec_mark_gid_base: u32,
    /// Number of gids in the mark range; 0 turns mark groups off.
    #[arg(long, env = "TALE_EXEC_MARK_GIDS", default_value_t = exec::tree::DEFAULT_MARK_GIDS)]
    pub exec_mark_gids: u32,
    /// Milliseconds a connected reader may consume nothing before it stops holding its exec back
    /// (after that, output it has not received may be evicted and it gets a `gap`).
    #[arg(long, env = "TALE_JOURNAL_STALL_MS", default_value_t = DEFAULT_JOURNAL_STALL_WINDOW.as_millis() as u64)]
    pub journal_stall_ms: u64,
    /// On SIGTERM/SIGINT/SIGHUP: milliseconds between SIGTERM to every exec and SIGKILL.
    #[arg(long, env = "TALE_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE.as_millis() as u64)]
    pub shutdown_grace_ms: u64,
    /// Connections open at once (lowered at boot to keep a descriptor reserve for execs).
    #[arg(long, env = "TALE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections from one source address that have not yet sent an authenticated request.
    #[arg(long, env = "TALE_MAX_CONNECTIONS_PER_SOURCE", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_SOURCE)]
    pub max_connections_per_source: usize,
    /// Milliseconds allowed for a whole request body.
    #[arg(long, env = "TALE_BODY_READ_TIMEOUT_MS", default_value_t = DEFAULT_BODY_READ_TIMEOUT.as_millis() as u64)]
    pub body_read_timeout_ms: u64,
    /// Log line format.
    #[arg(long, env = "TALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_user(value: &str) -> Result<(u32, u32), String> {
    parse_uid_gid(value).ok_or_else(|| format!("{value:?} is not uid:gid"))
}

/// Why runnerd refused to start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither a token file nor a token, and no explicit opt-out.
    #[error("no runnerd token: set TALE_RUNNERD_TOKEN_FILE or TALE_RUNNERD_TOKEN, or pass --insecure-no-token for development")]
    NoToken,
    /// The pinned digest is malformed, so no token could ever match it.
    #[error("TALE_RUNNERD_TOKEN_SHA256 must be 64 hex digits")]
    BadTokenDigest,
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A directory or socket runnerd needs could not be made or opened.
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The workspace root could not be opened for file operations.
    #[error("cannot prepare {path}: {source}")]
    Workspace {
        path: PathBuf,
        source: files::FilesError,
    },
    /// The reaper thread or its signal handling could not be set up.
    #[error("cannot start the reaper: {0}")]
    Reaper(#[source] std::io::Error),
    /// The listen address is unusable.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("runnerd TLS: {0}")]
    Tls(#[from] tls::RunnerdTlsError),
    /// The tokio runtime could not be built (threads, epoll).
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
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
    if let Ok(hex) = std::env::var(TOKEN_SHA256_ENV) {
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

/// SHA-256 of a presented or configured token (the rule both ends share).
pub use crate::shared::protocol::runnerd::token_digest;

fn decode_sha256_hex(text: &str) -> Option<Vec<u8>> {
    crate::shared::hex::decode(text).filter(|digest| digest.len() == 32)
}

/// Boot-time directories in the workspace and the caches, prepared without following a symlink
/// the exec user may have planted (see [`boot_dirs`]). A refusal is logged and boot goes on: an
/// exec home or a cache that cannot be prepared costs the session comfort, not safety.
fn prepare_session_dirs(
    args: &Args,
    root: &Path,
    root_fd: &std::os::fd::OwnedFd,
    exec_user: Option<(u32, u32)>,
) -> PathBuf {
    let home = args.exec_home.clone().unwrap_or_else(|| root.join(".home"));
    let owned = boot_dirs::Settings {
        owner: exec_user,
        mode: None,
    };
    if let Err(err) = boot_dirs::prepare(root, root_fd, &home, owned) {
        tracing::warn!(%err, "exec home not prepared");
    }
    let shared = boot_dirs::Settings {
        owner: None,
        mode: Some(0o1777),
    };
    for dir in &args.shared_dirs {
        if let Err(err) = boot_dirs::prepare(root, root_fd, dir, shared) {
            tracing::warn!(%err, "shared directory not prepared");
        }
    }
    home
}

/// The connection caps, the total lowered so that [`FD_RESERVE`] descriptors plus
/// [`FDS_PER_LIVE_EXEC`] per allowed live exec always stay free.
fn connection_caps(args: &Args, nofile: u64) -> listener::ConnectionCaps {
    let reserve = FD_RESERVE + FDS_PER_LIVE_EXEC * args.max_live_execs;
    let room = (nofile as usize).saturating_sub(reserve).max(1);
    if room < args.max_connections {
        tracing::warn!(
            nofile,
            max_connections = room,
            "descriptor limit lowers the connection cap"
        );
    }
    listener::ConnectionCaps {
        max_connections: args.max_connections.min(room),
        max_per_source: args.max_connections_per_source.max(1),
    }
}

fn boot_and_serve(args: Args) -> Result<(), BootError> {
    let token = load_token(args.insecure_no_token)?;
    let tls = tls::acceptor_from_env()?;
    let nofile = crate::shared::sys::rlimit::raise_nofile_limit().unwrap_or_else(|err| {
        tracing::warn!(%err, "descriptor limit not raised");
        crate::shared::sys::rlimit::nofile_soft_limit().unwrap_or(1024)
    });
    init::adopt_orphans();
    let reaper = Reaper::start().map_err(BootError::Reaper)?;

    let is_root = nix::unistd::geteuid().is_root();
    let exec_user = is_root.then_some(args.exec_user);
    let prepare_failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Prepare { path, source }
    };
    let (root, root_fd) = boot_dirs::prepare_root(&args.workspace_root, exec_user)
        .map_err(prepare_failed(&args.workspace_root))?;
    let home = prepare_session_dirs(&args, &root, &root_fd, exec_user);
    drop(root_fd);
    // runnerd's own state lives outside the workspace, where the exec user can neither delete nor
    // replace it and the files API cannot reach it.
    let state_dir = state_dir::StateDir::create(args.state_dir.as_deref()).map_err(|err| {
        BootError::Prepare {
            path: args.state_dir.clone().unwrap_or_default(),
            source: std::io::Error::other(err),
        }
    })?;
    let journal_dir = match &args.journal_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(prepare_failed(dir))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(prepare_failed(dir))?;
            dir.clone()
        }
        None => state_dir.journal_dir(),
    };
    let credential_socket = args
        .credential_socket
        .clone()
        .unwrap_or_else(|| state_dir.credential_socket());

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
    let marks = exec_user.and_then(|_| {
        exec::tree::usable_marks(args.exec_mark_gid_base, args.exec_mark_gids)
            .map_err(|why| tracing::warn!("exec mark groups off ({why}): cancel finds an exec's processes by session, group and parent only"))
            .ok()
    });
    let trees = Arc::new(exec::tree::Trees::new(reaper.clone(), marks));
    let daemon = Daemon::new(
        reaper,
        trees,
        ExecTable::new(args.max_live_execs, args.max_retained_execs),
        budget,
        args.journal_memory_bytes,
        launcher,
        env_store,
        files::Workspace::open(&root, exec_user).map_err(|source| BootError::Workspace {
            path: root.clone(),
            source,
        })?,
        token,
        Arc::new(CredentialStore::default()),
    );
    daemon.set_body_read_timeout(Duration::from_millis(args.body_read_timeout_ms));
    let caps = connection_caps(&args, nofile);

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
    let result = runtime.block_on(serve(
        &args,
        daemon,
        caps,
        &credential_socket,
        exec_user,
        tls,
    ));
    state_dir.remove();
    result
}

/// The source allowlist at `--allowed-sources-file`, else in the state base.
fn allowed_sources(args: &Args) -> source_allowlist::SourceAllowlist {
    let path = args.allowed_sources_file.clone().unwrap_or_else(|| {
        args.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(state_dir::DEFAULT_STATE_BASE))
            .join(source_allowlist::ALLOWED_SOURCES_FILE)
    });
    source_allowlist::SourceAllowlist::new(path)
}

/// Serves until a shutdown signal, then shuts down in order: stop accepting, end the execs, drain
/// the connections (their streams end with the execs), stop the credential socket.
async fn serve(
    args: &Args,
    daemon: Arc<Daemon>,
    caps: listener::ConnectionCaps,
    credential_socket: &Path,
    exec_user: Option<(u32, u32)>,
    tls: Option<crate::shared::tls::TlsAcceptor>,
) -> Result<(), BootError> {
    let listener =
        crate::shared::http::bind_listener(args.listen).map_err(|source| BootError::Listen {
            addr: args.listen,
            source,
        })?;
    let socket = bind_credential_socket(credential_socket, exec_user).map_err(|source| {
        BootError::Prepare {
            path: credential_socket.to_path_buf(),
            source,
        }
    })?;
    // Before the first exec can start.
    tls::guard_memory(exec_user.is_some());
    tracing::info!(
        listen = %listener.local_addr().map_or(args.listen, |a| a),
        tls = tls.is_some(),
        root = %daemon.root.display(),
        shell = %daemon.launcher.shell().display(),
        exec_user = ?exec_user,
        exec_mark_groups = daemon.trees.marks_enabled(),
        credential_socket = %credential_socket.display(),
        max_connections = caps.max_connections,
        pid = std::process::id(),
        "runnerd ready"
    );
    // The shutdown signal: every task started here watches it, and this set owns them all.
    let (stage, watch_stage) = tokio::sync::watch::channel(Stage::Serving);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(credentials::serve_socket(
        socket,
        daemon.credentials.clone(),
        credential_socket.to_path_buf(),
        watch_stage.clone(),
    ));
    tasks.spawn(listener::serve(
        listener,
        daemon.clone(),
        Arc::new(allowed_sources(args)),
        listener::ConnectionTable::new(caps),
        watch_stage,
        tls,
    ));
    let signal = match init::shutdown_signal().await {
        Ok(name) => name,
        Err(err) => {
            tracing::error!(%err, "cannot install signal handlers; serving without them");
            std::future::pending().await
        }
    };
    tracing::info!(signal, "shutting down");
    // No new connections; the open ones still carry the execs' last events to their readers.
    stage.send_replace(Stage::StopAccepting);
    init::shut_down(&daemon, Duration::from_millis(args.shutdown_grace_ms)).await;
    stage.send_replace(Stage::Drain);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Binds the credential socket through a descriptor of its directory.
fn bind_credential_socket(
    path: &Path,
    exec_user: Option<(u32, u32)>,
) -> std::io::Result<tokio::net::UnixListener> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(std::io::Error::other("not a socket path"));
    };
    let dir = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    credentials::bind_socket(&dir, name, exec_user)
}

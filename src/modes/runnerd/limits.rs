//! Every limit of runnerd in one place, named with its unit. Defaults that operators may change are
//! overridden through `Config` (flags / env); the README's configuration table lists them all.
use std::time::Duration;

// --- HTTP edge -------------------------------------------------------------------------------
/// Largest request body accepted on any route; larger bodies get 413 `payload_too_large`.
pub const MAX_REQUEST_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Threads for blocking work (spawning, file operations, spool reads).
pub const BLOCKING_THREADS: usize = 8;
/// Execs being spawned at once (the rest of a burst waits its turn before building its command).
pub const SPAWNS_AT_ONCE: usize = BLOCKING_THREADS;
/// Time allowed for a client to send the request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

// --- execs -----------------------------------------------------------------------------------
/// Default number of execs that may run at once (`--max-live-execs`).
pub const DEFAULT_MAX_LIVE_EXECS: usize = 64;
/// Default number of finished execs kept for attach/status (`--max-retained-execs`).
pub const DEFAULT_MAX_RETAINED_EXECS: usize = 64;
/// Deadline used when a request carries no positive `timeoutMs`.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Between SIGTERM and SIGKILL of an exec's process group (deadline, cancel).
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// After the exec's process exits, how long to keep draining its pipes (a background child may
/// hold them open) before the `exit` event is written.
pub const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Largest single read from an exec's stdout/stderr pipe, so one event's payload.
pub const PIPE_READ_CHUNK_BYTES: usize = 64 * 1024;
/// Size requested for exec output pipes (F_SETPIPE_SZ); the kernel default is 64 KiB.
pub const PIPE_BUFFER_BYTES: usize = 1024 * 1024;
/// Default uid:gid execs run as when runnerd runs as root (`TALE_EXEC_USER`).
pub const DEFAULT_EXEC_USER: (u32, u32) = (10001, 10001);
/// On SIGTERM/SIGINT/SIGHUP: time between SIGTERM to every exec group and SIGKILL (`--shutdown-grace-ms`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// --- stdin -----------------------------------------------------------------------------------
/// Largest line accepted by `POST /execs/:id/stdin`.
pub const MAX_STDIN_LINE_BYTES: usize = 64 * 1024;
/// A stdin write that the process does not drain within this time fails with `WRITE_FAILED`.
pub const STDIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

// --- journal ---------------------------------------------------------------------------------
/// Default in-memory tail of each exec's journal (`--journal-memory-bytes`).
pub const DEFAULT_JOURNAL_MEMORY_BYTES: usize = 256 * 1024;
/// Default disk spool per exec (`--journal-exec-spool-bytes`).
pub const DEFAULT_JOURNAL_EXEC_SPOOL_BYTES: u64 = 64 * 1024 * 1024;
/// Default disk spool for the whole daemon (`--journal-total-spool-bytes`).
pub const DEFAULT_JOURNAL_TOTAL_SPOOL_BYTES: u64 = 256 * 1024 * 1024;
/// Default time a reader may consume nothing before it stops holding its exec back
/// (`--journal-stall-ms`): until then runnerd stops reading the exec's pipes rather than evict
/// output that reader has not received.
pub const DEFAULT_JOURNAL_STALL_WINDOW: Duration = Duration::from_secs(30);
/// Size of one spool segment file (or a quarter of the per-exec spool, if smaller); eviction drops
/// whole segments, oldest first.
pub const SPOOL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Most bytes one response frame carries when a reader catches up (many lines per write).
pub const STREAM_FRAME_BYTES: usize = 256 * 1024;

// --- env store -------------------------------------------------------------------------------
/// Most names the env store holds; a new name beyond it is denied.
pub const MAX_ENV_ENTRIES: usize = 128;
/// Longest env value, in UTF-8 bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

// --- files -----------------------------------------------------------------------------------
/// Largest inline (`contentBase64`) staged file, decoded.
pub const MAX_STAGE_INLINE_BYTES: u64 = 1024 * 1024;
/// Largest staged file fetched from a URL.
pub const MAX_STAGE_URL_BYTES: u64 = 100 * 1024 * 1024;
/// Time allowed for fetching one staged URL, body included.
pub const STAGE_URL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest file `GET /fs/read` returns.
pub const MAX_READ_FILE_BYTES: u64 = 20 * 1024 * 1024;

// --- git credentials -------------------------------------------------------------------------
/// Most hosts with a granted git credential at once.
pub const MAX_GIT_CREDENTIALS: usize = 64;
/// Longest host, username or password of a git credential, in bytes.
pub const MAX_CREDENTIAL_FIELD_BYTES: usize = 4096;
/// Longest query line on the credential socket.
pub const MAX_CREDENTIAL_QUERY_BYTES: usize = 4096;
/// A credential-socket client must send its query within this time.
pub const CREDENTIAL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

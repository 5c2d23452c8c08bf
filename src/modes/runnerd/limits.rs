//! Every limit of runnerd in one place, named with its unit. Defaults that operators may change are
//! overridden through `Config` (flags / env); the README's configuration table lists them all.
//! Limits the spawner must agree with are defined in `shared::protocol::runnerd` and listed here.
use std::time::Duration;

// --- HTTP edge -------------------------------------------------------------------------------
/// Largest request body accepted on any route; larger bodies get 413 `payload_too_large`.
pub use crate::shared::protocol::runnerd::MAX_REQUEST_BODY_BYTES;
/// Execs being spawned at once (the rest of a burst waits its turn before building its command).
pub const SPAWNS_AT_ONCE: usize = 8;
/// Workspace file operations (stage, delete, list, read) running at once: fewer than the blocking
/// threads, so file work can never take every thread spawns need.
pub const FILE_OPS_AT_ONCE: usize = 4;
/// Threads for blocking work: one per concurrent spawn and file operation, plus spool reads.
pub const BLOCKING_THREADS: usize = SPAWNS_AT_ONCE + FILE_OPS_AT_ONCE + 2;
/// Time allowed for a client to send the request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time allowed for a whole request body once the headers arrived
/// (`--body-read-timeout-ms`); a body still arriving after it (a never-ending chunked body) gets
/// 408 `request_timeout` and the connection is closed.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

// --- connections -----------------------------------------------------------------------------
/// Default cap on connections open at once (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on connections from one source address that have not yet sent an authenticated
/// request (`--max-connections-per-source`).
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Longest a connection over its source's pre-auth cap waits, parked and unread, for one of the
/// source's pre-auth slots before it is closed (a burst of fresh connections from the spawner
/// waits here instead of being reset; see `parking.rs`).
pub const PRE_AUTH_PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept free for everything but connections (runnerd's own files, the spool, the
/// credential socket) on top of [`FDS_PER_LIVE_EXEC`] per allowed live exec: the connection cap
/// is lowered at boot so that sockets can never take them.
pub const FD_RESERVE: usize = 256;
/// Descriptors an exec costs runnerd while it runs (three pipes while spawning, pump ends, spool).
pub const FDS_PER_LIVE_EXEC: usize = 8;
/// On shutdown, how long open connections get to finish what is in flight before they are closed.
pub const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// `/healthz` probes the spawn path (a blocking thread, then a real spawn as the exec user); each
/// probe step must answer within this time or the daemon reports itself unhealthy.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A spawn probe's answer is reused by `/healthz` calls within this time (one probe process per
/// interval at most, however often the daemon is polled).
pub const HEALTH_PROBE_REUSE: Duration = Duration::from_secs(1);

// --- execs -----------------------------------------------------------------------------------
/// Default number of execs that may run at once (`--max-live-execs`).
pub const DEFAULT_MAX_LIVE_EXECS: usize = 64;
/// Default number of finished execs kept for attach/status (`--max-retained-execs`).
pub const DEFAULT_MAX_RETAINED_EXECS: usize = 64;
/// Deadline used when a request carries no positive `timeoutMs`.
pub use crate::shared::protocol::runnerd::DEFAULT_EXEC_TIMEOUT_MS;
/// Between SIGTERM and SIGKILL of an exec's process group (deadline, cancel).
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// After the exec's process exits, how long to keep draining its pipes (a background child may
/// hold them open) before the `exit` event is written.
pub const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Largest single read from an exec's stdout/stderr pipe, so one event's payload. 128 KiB rather
/// than 64: half the reads, records, spool jobs and wake-ups per megabyte (`scripts/bench.sh
/// runnerd streams`: ~10 points of the no-daemon reference), while a chatty exec still holds at
/// most one such buffer per pipe and a line stays far below any client's line cap (~175 KB).
pub const PIPE_READ_CHUNK_BYTES: usize = 128 * 1024;
/// Size requested for exec output pipes (F_SETPIPE_SZ); the kernel default is 64 KiB.
pub const PIPE_BUFFER_BYTES: usize = 1024 * 1024;
/// Default uid:gid execs run as when runnerd runs as root (`TALE_EXEC_USER`).
pub use crate::shared::protocol::runnerd::{DEFAULT_EXEC_USER, DEFAULT_EXEC_USER_TEXT};
/// On SIGTERM/SIGINT/SIGHUP: time between SIGTERM to every exec group and SIGKILL (`--shutdown-grace-ms`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// --- stdin -----------------------------------------------------------------------------------
/// Largest line accepted by `POST /execs/:id/stdin`.
pub use crate::shared::protocol::runnerd::MAX_STDIN_LINE_BYTES;
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
/// Largest file `GET /fs/read` returns whole, and the most one ranged read returns.
pub const MAX_READ_FILE_BYTES: u64 = 20 * 1024 * 1024;
/// Largest chunk of one `POST /files/write` (the raw body).
pub const MAX_WRITE_CHUNK_BYTES: usize = MAX_REQUEST_BODY_BYTES;
/// Time limit of one blocking file operation (stage write, delete, list, read); past it the
/// request fails with 503 `file_operation_timed_out` (or the skipped reason `timed_out`).
pub const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);

// --- git credentials -------------------------------------------------------------------------
/// Most hosts with a granted git credential at once.
pub const MAX_GIT_CREDENTIALS: usize = 64;
/// Longest host, username or password of a git credential, in bytes.
pub const MAX_CREDENTIAL_FIELD_BYTES: usize = 4096;
/// Longest query line on the credential socket.
pub const MAX_CREDENTIAL_QUERY_BYTES: usize = 4096;
/// A credential-socket client must send its query within this time.
pub const CREDENTIAL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

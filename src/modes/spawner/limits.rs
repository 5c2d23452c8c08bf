//! Every limit of the spawner in one place, named with its unit. Defaults that operators may change
//! are overridden through the environment (`config`); the README's configuration table lists them.
//! Limits runnerd must agree with are defined in `shared::protocol::runnerd`.
use std::time::Duration;

// --- API edge --------------------------------------------------------------------------------
/// Default request body cap (`SANDBOX_MAX_REQUEST_BODY_BYTES`).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 2 * 1024 * 1024;
/// The runnerd body cap; the spawner's own cap may not exceed it, since it forwards bodies.
pub const RUNNERD_MAX_BODY_BYTES: u64 =
    crate::shared::protocol::runnerd::MAX_REQUEST_BODY_BYTES as u64;
/// `/health` answers from a cached backend probe this old at most.
pub const HEALTH_CACHE_TTL: Duration = Duration::from_secs(60);

// --- sessions --------------------------------------------------------------------------------
/// Default live sessions per spawner (`SANDBOX_MAX_SESSIONS`).
pub const DEFAULT_MAX_SESSIONS: u64 = 16;
/// Default live sessions per organization (`SANDBOX_MAX_SESSIONS_PER_ORG`).
pub const DEFAULT_MAX_SESSIONS_PER_ORG: u64 = 50;
/// Default and largest session lifetime (`SANDBOX_SESSION_MAX_LIFETIME_MS`).
pub const DEFAULT_SESSION_MAX_LIFETIME_MS: u64 = 86_400_000;
/// Default and largest idle timeout (`SANDBOX_SESSION_MAX_IDLE_MS`).
pub const DEFAULT_SESSION_MAX_IDLE_MS: u64 = 1_800_000;
/// Default time a create may take until runnerd is ready (`SANDBOX_CREATE_TIMEOUT_MS`).
pub const DEFAULT_CREATE_TIMEOUT_MS: u64 = 180_000;
/// A create that finds its session up but unseeded while the session is younger than the create
/// budget plus [`CREATE_IN_FLIGHT_GRACE`] may be meeting another replica's create between runnerd
/// answering and the seed being recorded (milliseconds for a live create). It waits this long for
/// that create to record the seed (then it is a 409 `duplicate`, so exactly one caller gets 201)
/// before it takes the first create for dead and finishes the seed itself.
pub const UNSEEDED_SETTLE_WAIT: Duration = Duration::from_secs(10);
/// How often that wait reads runnerd's seed record.
pub const UNSEEDED_SETTLE_POLL: Duration = Duration::from_millis(200);
/// Past the create budget, how long a create may still count as running (clock skew between
/// replicas, a slow engine or API server). Until then its never-started container (Docker), young
/// Secret or Pod (Kubernetes) is another replica's create in flight (503 `create_in_progress`),
/// its cap claims are not reclaimed as an orphan's, and an unseeded session of it gets the settle
/// wait below; after it, the create counts as dead.
pub const CREATE_IN_FLIGHT_GRACE: Duration = Duration::from_secs(10);
/// Default interval of the TTL / idle sweep (`SANDBOX_SWEEP_INTERVAL_MS`).
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 60_000;

/// `retry-after` of a 503 `session_unreachable` (compute on a lost node, not replaceable yet).
pub const UNREACHABLE_RETRY_AFTER_SECONDS: u64 = 10;
/// `retry-after` of a 503 `session_restarted` (the session was just healed; a retry reaches it).
pub const RESTARTED_RETRY_AFTER_SECONDS: u64 = 1;

// --- execs -----------------------------------------------------------------------------------
/// Default deadline of an exec that names none (`SANDBOX_EXEC_DEFAULT_TIMEOUT_MS`): the same as
/// runnerd's own default.
pub use crate::shared::protocol::runnerd::DEFAULT_EXEC_TIMEOUT_MS;
/// Default largest deadline an exec may ask for (`SANDBOX_EXEC_MAX_TIMEOUT_MS`).
pub const DEFAULT_EXEC_MAX_TIMEOUT_MS: u64 = 7_200_000;
/// Default output collected per stream for an exec's `result` (`SANDBOX_STDOUT_MAX_BYTES`, …).
pub const DEFAULT_OUTPUT_MAX_BYTES: u64 = 5 * 1024 * 1024;

// --- runnerd client --------------------------------------------------------------------------
/// Time allowed for a JSON call to runnerd (not for streams, which last as long as the exec).
pub const RUNNERD_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a `/healthz` probe, and for connecting.
pub const RUNNERD_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for `POST /files/stage`: it may download up to 100 MiB per file.
pub const RUNNERD_STAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// An idle pooled connection to a runnerd is closed after this long.
pub const RUNNERD_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest NDJSON line accepted from runnerd (runnerd's largest, a 128 KiB chunk, is ~175 KiB as base64).
pub const MAX_EVENT_LINE_BYTES: usize = 4 * 1024 * 1024;

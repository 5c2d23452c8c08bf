//! The spawner's edge: what a caller can make it hold before proving who it is. Connections are
//! capped in total and, until one of their requests authenticates, per source address
//! ([`connections`]); request bodies are read only after the signature's shape and timestamp
//! passed, against a deadline and a global budget of bytes in flight ([`body`]).
pub mod body;
pub mod connections;
pub mod sources;

use std::time::Duration;

/// Open connections at once, authenticated or not (`SANDBOX_MAX_CONNECTIONS`). The process's
/// `nofile` limit must be above it.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// Connections from one source address that have not yet carried an authenticated request
/// (`SANDBOX_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS`). Once a request on a connection authenticates,
/// it no longer counts: behind a proxy or an ingress the platform is one address.
pub const DEFAULT_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS: u64 = 32;
/// Bytes of request bodies held by all requests in flight (`SANDBOX_BODY_BUDGET_BYTES`); a body
/// that does not fit is refused with 503 `server_busy` and `retry-after`.
pub const DEFAULT_BODY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;
/// Time a client has to send a whole request body (`SANDBOX_BODY_READ_TIMEOUT_MS`); past it the
/// request is refused with 408 `request_timeout`.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 10_000;
/// `retry-after` seconds sent with 503 `server_busy`.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The edge limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    pub max_connections: usize,
    pub max_preauth_connections_per_address: usize,
    pub body_budget_bytes: usize,
    pub body_read_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> EdgeLimits {
        EdgeLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            max_preauth_connections_per_address: DEFAULT_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS
                as usize,
            body_budget_bytes: DEFAULT_BODY_BUDGET_BYTES as usize,
            body_read_timeout: Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
        }
    }
}

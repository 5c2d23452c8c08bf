//! **Test-only** hooks, so end-to-end tests can `kill -9` the spawner at a chosen point and need
//! not wait out production graces. Unset — always, outside tests — each costs one comparison.
//!
//! `TALE_TEST_CREATE_PAUSE_AT=<point>` makes every pass through the point log `test hook: create
//! paused` with the point and then wait `TALE_TEST_CREATE_PAUSE_MS` (default 60 000) there. Points:
//! `before_start` (Docker: container created, not started; Kubernetes: Secret created, no Pod
//! yet), `after_start` (started, runnerd not
//! yet probed), `after_ready` (runnerd answers, nothing seeded), `during_seeding` (env delivered,
//! not yet recorded), `quota_helper_created` (Docker with disk quotas: a quota helper container
//! created, not started — every helper run, including the boot's reclaim).
//!
//! `TALE_TEST_QUOTA_HELPER_GRACE_MS=<ms>` replaces the age past which the boot reclaims a leftover
//! quota helper container (`HELPER_RECLAIM_GRACE`).
use std::sync::OnceLock;
use std::time::Duration;

/// Names the point to pause at.
pub const PAUSE_AT_ENV: &str = "TALE_TEST_CREATE_PAUSE_AT";
/// How long to pause, in milliseconds.
pub const PAUSE_MS_ENV: &str = "TALE_TEST_CREATE_PAUSE_MS";
/// Replaces the leftover quota helper grace, in milliseconds.
pub const QUOTA_HELPER_GRACE_MS_ENV: &str = "TALE_TEST_QUOTA_HELPER_GRACE_MS";
/// Pause when [`PAUSE_MS_ENV`] is not given.
const DEFAULT_PAUSE: Duration = Duration::from_secs(60);

fn configured() -> Option<&'static (String, Duration)> {
    static CONFIG: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let point = std::env::var(PAUSE_AT_ENV).ok()?;
            let pause = std::env::var(PAUSE_MS_ENV)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(DEFAULT_PAUSE, Duration::from_millis);
            tracing::warn!(%point, ?pause, "TEST HOOK ENABLED: creates pause (tests only)");
            Some((point, pause))
        })
        .as_ref()
}

/// Pauses here when the test hook names `point`.
pub async fn pause_at(point: &'static str) {
    if let Some((wanted, pause)) = configured() {
        if wanted == point {
            tracing::warn!(point, "test hook: create paused");
            tokio::time::sleep(*pause).await;
        }
    }
}

/// The leftover quota helper grace: `production`, unless the test hook replaces it.
pub fn quota_helper_grace(production: Duration) -> Duration {
    static GRACE: OnceLock<Option<Duration>> = OnceLock::new();
    GRACE
        .get_or_init(|| {
            let ms: u64 = std::env::var(QUOTA_HELPER_GRACE_MS_ENV)
                .ok()?
                .parse()
                .ok()?;
            tracing::warn!(
                ms,
                "TEST HOOK ENABLED: quota helper reclaim grace replaced (tests only)"
            );
            Some(Duration::from_millis(ms))
        })
        .unwrap_or(production)
}

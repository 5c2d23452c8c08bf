//! **Test-only** pauses inside a create, so end-to-end tests can `kill -9` the spawner at a chosen
//! point. `TALE_TEST_CREATE_PAUSE_AT=<point>` makes every create log `test hook: create paused`
//! with the point and then wait `TALE_TEST_CREATE_PAUSE_MS` (default 60 000) there. Points:
//! `before_start` (Docker: container created, not started; Kubernetes: Secret created, no Pod
//! yet), `after_start` (started, runnerd not
//! yet probed), `after_ready` (runnerd answers, nothing seeded), `during_seeding` (env delivered,
//! not yet recorded). Unset — always, outside tests — it costs one comparison.
use std::sync::OnceLock;
use std::time::Duration;

/// Names the point to pause at.
pub const PAUSE_AT_ENV: &str = "TALE_TEST_CREATE_PAUSE_AT";
/// How long to pause, in milliseconds.
pub const PAUSE_MS_ENV: &str = "TALE_TEST_CREATE_PAUSE_MS";
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

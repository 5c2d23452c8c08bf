//! runnerd's activity clock: the spawner's idle sweep reads it through `/healthz`.
use crate::shared::clock::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};

/// Boot time and the time of the last state-changing request or exec event.
pub struct Activity {
    pub booted_at_ms: u64,
    last_activity_at_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        let now = now_ms();
        Activity {
            booted_at_ms: now,
            last_activity_at_ms: AtomicU64::new(now),
        }
    }

    pub fn touch(&self) {
        self.last_activity_at_ms
            .fetch_max(now_ms(), Ordering::Relaxed);
    }

    pub fn last_activity_at_ms(&self) -> u64 {
        self.last_activity_at_ms.load(Ordering::Relaxed)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

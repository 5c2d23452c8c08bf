//! Boot adoption in the background: the listener binds first, then the sessions the backend still
//! runs are adopted, [`ADOPTION_CONCURRENCY`] at a time (each costs backend reads and a runnerd
//! probe). A request for a session that is not adopted yet waits up to [`ADOPTION_WAIT`] for it
//! (or for adoption to end), then gets 503 `adoption_in_progress` with `retry-after`.
use super::api::ApiError;
use super::state::Spawner;
use hyper::StatusCode;
use std::time::Duration;

/// Longest wait of a request for a session that boot adoption has not reached yet.
pub const ADOPTION_WAIT: Duration = Duration::from_secs(3);
/// `retry-after` seconds of a 503 `adoption_in_progress`.
pub const ADOPTION_RETRY_AFTER_SECS: u64 = 2;
/// Sessions adopted at once at boot.
pub const ADOPTION_CONCURRENCY: usize = 16;

/// Whether boot adoption runs, and a signal at each session it adopts.
pub struct AdoptionGate {
    /// (adoption in progress, sessions adopted so far)
    state: tokio::sync::watch::Sender<(bool, u64)>,
}

impl Default for AdoptionGate {
    /// No adoption in progress (a spawner that never adopts serves every request at once).
    fn default() -> Self {
        AdoptionGate {
            state: tokio::sync::watch::channel((false, 0)).0,
        }
    }
}

impl AdoptionGate {
    pub fn begin(&self) {
        self.state.send_modify(|s| s.0 = true);
    }

    /// One more session adopted.
    pub fn progress(&self) {
        self.state.send_modify(|s| s.1 = s.1.wrapping_add(1));
    }

    pub fn finish(&self) {
        self.state.send_modify(|s| s.0 = false);
    }

    pub fn in_progress(&self) -> bool {
        self.state.borrow().0
    }

    /// Waits until `ready()` holds or adoption ended (`true`), or `max` passed (`false`).
    pub async fn wait(&self, ready: impl Fn() -> bool, max: Duration) -> bool {
        let mut changes = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            if !changes.borrow_and_update().0 || ready() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return ready();
            }
        }
    }
}

impl Spawner {
    /// Lets a request for session `id` through once the session is adopted or adoption ended;
    /// 503 `adoption_in_progress` after [`ADOPTION_WAIT`].
    pub async fn await_adoption(&self, id: &str) -> Result<(), ApiError> {
        if self
            .adoption
            .wait(|| self.registry.contains(id), ADOPTION_WAIT)
            .await
        {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "adoption_in_progress",
            Some(format!(
                "the spawner is still adopting the backend's sessions after its start and has not reached session {id}; retry shortly"
            )),
        )
        .retry_after(ADOPTION_RETRY_AFTER_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no adoption running nothing waits; during one a waiter is let through by its
    /// session's adoption or by the end of adoption, and refused at the deadline (paused time).
    #[tokio::test(start_paused = true)]
    async fn waits_for_the_session_or_the_end() {
        let gate = std::sync::Arc::new(AdoptionGate::default());
        assert!(gate.wait(|| false, Duration::from_secs(1)).await);
        gate.begin();
        let started = tokio::time::Instant::now();
        assert!(!gate.wait(|| false, Duration::from_secs(3)).await);
        assert!(started.elapsed() >= Duration::from_secs(3));
        let adopted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (gate, adopted) = (gate.clone(), adopted.clone());
            tokio::spawn(async move {
                gate.wait(
                    || adopted.load(std::sync::atomic::Ordering::SeqCst),
                    Duration::from_secs(60),
                )
                .await
            })
        };
        tokio::task::yield_now().await;
        adopted.store(true, std::sync::atomic::Ordering::SeqCst);
        gate.progress();
        assert!(waiter.await.unwrap());
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait(|| false, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        gate.finish();
        assert!(waiter.await.unwrap());
        assert!(!gate.in_progress());
    }
}

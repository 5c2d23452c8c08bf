//! The sweep: every interval, stop sessions past their TTL or idle too long (compute removed,
//! workspace kept — only DELETE deletes a workspace). Pinned sessions and sessions with live execs
//! (on this replica, or per runnerd's `/healthz`) are skipped; runnerd's activity clock is the truth
//! for idleness. A pinned session whose compute the backend lost is healed here (`heal`).
use super::metrics::Metrics;
use super::state::Spawner;
use std::sync::Arc;
use std::time::Duration;

/// Why a session was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Ttl,
    Idle,
}

/// Decides one session: `Some(cause)` to stop it.
pub fn decide(
    now_ms: u64,
    expires_at_ms: u64,
    idle_timeout_ms: u64,
    last_activity_at_ms: Option<u64>,
    live_execs: u64,
) -> Option<StopCause> {
    if live_execs > 0 {
        return None;
    }
    if now_ms > expires_at_ms {
        return Some(StopCause::Ttl);
    }
    match last_activity_at_ms {
        Some(last) if now_ms.saturating_sub(last) > idle_timeout_ms => Some(StopCause::Idle),
        _ => None,
    }
}

/// Sessions one sweep checks at once (each check is a runnerd probe and maybe a stop).
pub const SWEEP_CONCURRENCY: usize = 16;

/// One sweep over the registry (first brought in line with the backend when the backend holds
/// pins, i.e. when several replicas may share the sessions: each then sweeps every session),
/// [`SWEEP_CONCURRENCY`] sessions at a time.
pub async fn sweep_once(spawner: &Spawner) {
    use futures_util::StreamExt;
    // First, before the registry is brought in line with the backend (which drops sessions whose
    // compute is not running): pinned sessions whose compute was lost come back.
    for entry in spawner.registry.list(None) {
        if entry.pinned && spawner.registry.proxy_count(&entry.session_id) == 0 {
            heal_if_lost(spawner, &entry).await;
        }
    }
    let shared = spawner.backend.persists_pins();
    if shared {
        spawner.sync_with_backend(None).await;
        // Pinned sessions the registry does not hold (lost while no spawner ran, or a heal that
        // failed before) come back too.
        spawner.heal_lost_pinned().await;
    }
    futures_util::stream::iter(spawner.registry.list(None))
        .for_each_concurrent(SWEEP_CONCURRENCY, |entry| {
            sweep_one(spawner, entry.session_id, shared)
        })
        .await;
}

/// Checks one session and stops it when it is past its TTL or idle too long.
async fn sweep_one(spawner: &Spawner, id: String, shared: bool) {
    if spawner.registry.proxy_count(&id) > 0 {
        return;
    }
    let Some(entry) = spawner.registry.get(&id) else {
        return;
    };
    if entry.pinned && !(shared && unpinned_elsewhere(spawner, &entry.session_id).await) {
        return;
    }
    let Some(entry) = spawner.registry.get(&entry.session_id) else {
        return;
    };
    let now = crate::shared::clock::now_ms();
    let (last_activity, live) = match entry.runnerd.health().await {
        Ok(health) => {
            spawner.registry.update(&entry.session_id, |e| {
                e.last_activity_at_ms = health.last_activity_at_ms
            });
            (Some(health.last_activity_at_ms), health.live_execs)
        }
        Err(_) => {
            if spawner.evict_if_gone(&entry.session_id).await {
                return;
            }
            // runnerd unreachable but compute present: only the TTL decides.
            (None, 0)
        }
    };
    let Some(cause) = decide(
        now,
        entry.expires_at_ms,
        entry.idle_timeout_ms,
        last_activity,
        live,
    ) else {
        return;
    };
    let _lifecycle = spawner.registry.lifecycle(&entry.session_id).await;
    if shared && !still_stoppable(spawner, &entry.session_id, cause).await {
        return;
    }
    match spawner.backend.stop_session(&entry.session_id).await {
        Ok(_) => {
            spawner.registry.remove(&entry.session_id);
            let label = if cause == StopCause::Ttl {
                "ttl"
            } else {
                "idle"
            };
            spawner
                .metrics
                .sweep_stops
                .get_or_create(&Metrics::label("cause", label))
                .inc();
            tracing::info!(session_id = %entry.session_id, ?cause, "sweep stopped session; workspace kept");
        }
        Err(err) => {
            tracing::warn!(session_id = %entry.session_id, %err, "sweep could not stop session; retrying next sweep")
        }
    }
}

/// A pinned session is kept running: when its runnerd stopped answering, its compute is healed
/// if the backend lost it (a Kubernetes Pod evicted or gone with its node).
async fn heal_if_lost(spawner: &Spawner, entry: &super::registry::SessionEntry) {
    if entry.runnerd.health().await.is_ok() {
        return;
    }
    match spawner.heal_after_loss(&entry.session_id).await {
        Ok(true) => {
            tracing::info!(session_id = %entry.session_id, "sweep healed a pinned session")
        }
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(session_id = %entry.session_id, error = ?err.message, "sweep could not heal a pinned session; retrying next sweep")
        }
    }
}

/// A pinned entry whose pin another replica removed: unpinned here too, its lifetime restarting
/// now (as an unpin on this replica does). `false` while the backend still records the pin or
/// cannot say.
async fn unpinned_elsewhere(spawner: &Spawner, id: &str) -> bool {
    if spawner.backend.is_pinned(id).await.unwrap_or(true) {
        return false;
    }
    let expires = crate::shared::clock::now_ms() + spawner.config.limits.max_lifetime_ms;
    spawner.registry.update(id, |e| {
        e.pinned = false;
        e.expires_at_ms = expires;
    });
    true
}

/// Right before a stop (lifecycle lock held): re-checks what another replica may have changed
/// since the decision — a pin set in the backend, activity or a live exec on runnerd — so a
/// sweep on any replica never stops a pinned or busy session.
async fn still_stoppable(spawner: &Spawner, id: &str, cause: StopCause) -> bool {
    match spawner.backend.is_pinned(id).await {
        Ok(false) => {}
        Ok(true) => {
            spawner.registry.update(id, |e| e.pinned = true);
            return false;
        }
        Err(err) => {
            tracing::warn!(session_id = id, %err, "cannot read the pin; not stopping");
            return false;
        }
    }
    let Some(entry) = spawner.registry.get(id) else {
        return false;
    };
    if cause == StopCause::Ttl {
        return true;
    }
    match entry.runnerd.health().await {
        Ok(health) => {
            let now = crate::shared::clock::now_ms();
            decide(
                now,
                entry.expires_at_ms,
                entry.idle_timeout_ms,
                Some(health.last_activity_at_ms),
                health.live_execs,
            )
            .is_some()
        }
        // runnerd unreachable: the idle decision rested on an answer it no longer gives.
        Err(_) => false,
    }
}

/// Runs the sweep forever at the configured interval (owned by the runtime; ends with it).
pub async fn run(spawner: Arc<Spawner>) {
    let mut interval =
        tokio::time::interval(Duration::from_millis(spawner.config.sweep_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        // Boot adoption first: its registry is incomplete and its runnerd probes are the sweep's.
        if spawner.adoption.in_progress() {
            continue;
        }
        sweep_once(&spawner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TTL beats idleness, live execs keep a session, unknown activity never counts as idle.
    #[test]
    fn decisions() {
        assert_eq!(decide(100, 50, 10, Some(99), 0), Some(StopCause::Ttl));
        assert_eq!(decide(100, 50, 10, Some(99), 1), None);
        assert_eq!(decide(100, 200, 10, Some(80), 0), Some(StopCause::Idle));
        assert_eq!(decide(100, 200, 10, Some(95), 0), None);
        assert_eq!(decide(100, 200, 10, None, 0), None);
    }
}

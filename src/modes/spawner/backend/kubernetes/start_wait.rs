//! What a starting Pod's wait tolerates, and for how long: fatal errors (a bad image name, an
//! invalid config, a crash loop, an ended Pod) stop the create at once; transient ones are retried
//! until their own deadline, counted from when they were first seen and bounded by the create's:
//! image pulls that fail (`ErrImagePull`, `ImagePullBackOff`: a registry outage or rate limit looks
//! the same as a missing image) until `SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS`, and a workspace volume
//! still attached to another node (a `FailedAttachVolume` Multi-Attach Event on the Pod) until
//! `SANDBOX_K8S_ATTACH_TIMEOUT_MS`.
use super::super::{BackendError, BackendResult};
use super::status;
use crate::modes::spawner::config::HealSettings;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use std::time::Duration;
use tokio::time::Instant;

/// Least time between two reads of a starting Pod's Events (only while it waits without an IP).
pub const EVENT_READ_INTERVAL: Duration = Duration::from_secs(1);
/// The Event reason of a volume that cannot be attached (Multi-Attach among others).
pub const FAILED_ATTACH_REASON: &str = "FailedAttachVolume";

/// One transient condition: since when it has been seen, and its last words.
#[derive(Default)]
struct Seen {
    since: Option<Instant>,
    detail: String,
}

impl Seen {
    /// Records the condition (`Some`) or its end (`None`); errors once it lasted past `limit`.
    fn track(&mut self, now: Instant, detail: Option<String>, limit: Duration) -> Option<String> {
        let Some(detail) = detail else {
            self.since = None;
            return None;
        };
        let since = *self.since.get_or_insert(now);
        self.detail = detail;
        (now.duration_since(since) >= limit).then(|| self.detail.clone())
    }
}

/// The state of one create's wait for its Pod.
pub struct StartWatch {
    events: Api<Event>,
    limits: HealSettings,
    pull: Seen,
    attach: Seen,
    last_event_read: Option<Instant>,
}

impl StartWatch {
    pub fn new(events: Api<Event>, limits: HealSettings) -> StartWatch {
        StartWatch {
            events,
            limits,
            pull: Seen::default(),
            attach: Seen::default(),
            last_event_read: None,
        }
    }

    /// Judges one read of the starting Pod: `Err` when it will not start (fatal now, or a
    /// transient condition past its own deadline).
    pub async fn check(&mut self, pod: &Pod) -> BackendResult<()> {
        if let Some(reason) = status::start_failure(pod) {
            return Err(BackendError::Died(reason));
        }
        let now = Instant::now();
        if let Some(detail) =
            self.pull
                .track(now, status::pull_trouble(pod), self.limits.image_pull)
        {
            return Err(BackendError::Died(format!(
                "{detail} (retried for {} s, SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS)",
                self.limits.image_pull.as_secs()
            )));
        }
        let scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        if !scheduled || status::pod_ip(pod).is_some() {
            self.attach.track(now, None, self.limits.attach);
            return Ok(());
        }
        let due = self
            .last_event_read
            .is_none_or(|at| now.duration_since(at) >= EVENT_READ_INTERVAL);
        if !due {
            return Ok(());
        }
        self.last_event_read = Some(now);
        let attach = self.multi_attach(pod).await;
        if let Some(detail) = self.attach.track(now, attach, self.limits.attach) {
            return Err(BackendError::NotReady {
                waited_ms: self.limits.attach.as_millis() as u64,
                detail: format!(
                    "the workspace volume stayed attached to another node (SANDBOX_K8S_ATTACH_TIMEOUT_MS): {detail}"
                ),
            });
        }
        Ok(())
    }

    /// The Pod's latest Multi-Attach Event message, if any (an unreadable Event list is none:
    /// the create's own deadline still holds).
    async fn multi_attach(&self, pod: &Pod) -> Option<String> {
        let uid = pod.metadata.uid.as_deref()?;
        let selector = format!("involvedObject.uid={uid},reason={FAILED_ATTACH_REASON}");
        let events = match self
            .events
            .list(&ListParams::default().fields(&selector))
            .await
        {
            Ok(events) => events,
            Err(err) => {
                tracing::debug!(%err, "cannot read the starting Pod's events");
                return None;
            }
        };
        let message = events
            .items
            .iter()
            .filter_map(|e| e.message.as_deref())
            .rfind(|m| m.contains("Multi-Attach"))?
            .to_owned();
        tracing::info!(pod = ?pod.metadata.name, %message, "workspace volume still attached elsewhere; waiting");
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transient condition fails only once it lasted its limit, and its clock restarts when it
    /// clears.
    #[test]
    fn transient_conditions_have_their_own_clock() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        assert_eq!(seen.track(t0, Some("a".into()), limit), None);
        assert_eq!(
            seen.track(t0 + Duration::from_secs(9), Some("b".into()), limit),
            None
        );
        assert_eq!(
            seen.track(t0 + Duration::from_secs(10), Some("c".into()), limit),
            Some("c".into())
        );
        assert_eq!(seen.track(t0 + Duration::from_secs(11), None, limit), None);
        assert_eq!(
            seen.track(t0 + Duration::from_secs(12), Some("d".into()), limit),
            None,
            "a new occurrence starts a new clock"
        );
    }
}

//! Reading session Pods back: the session a listed Pod carries (its annotations), whether it runs
//! or has ended, its runnerd URL, and whether a starting Pod has already failed.
use super::super::ListedSession;
use super::manifests::{
    ANNOTATION_CREATED_AT, ANNOTATION_IDLE_TIMEOUT_MS, ANNOTATION_ORGANIZATION_ID,
    ANNOTATION_PROFILE, ANNOTATION_SESSION_ID, ANNOTATION_TTL_MS,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Container waiting reasons that will not resolve by waiting: a create stops at once on them.
/// (`ErrImagePull` and `ImagePullBackOff` are [`TRANSIENT_PULL_REASONS`]: retried until their own
/// deadline.)
pub const FATAL_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Image pull failures a registry outage or rate limit causes as well as a missing image: a
/// create retries them until `SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS`.
pub const TRANSIENT_PULL_REASONS: &[&str] = &["ErrImagePull", "ImagePullBackOff"];

fn note<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Deleted (or being deleted), or ended: its compute will not come back.
pub fn is_terminal(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() || matches!(phase(pod), Some("Failed" | "Succeeded"))
}

/// Running and not being deleted.
pub fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && phase(pod) == Some("Running")
}

/// The Pod's IP, once it has one.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// runnerd's base URL at `ip` (IPv6 addresses bracketed).
pub fn runnerd_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// The session a listed Pod carries; `None` for Pods without a session id. Unparsable numbers
/// read as 0 (the spawner then applies its maxima) and any profile but `agent` as `default`.
pub fn listed_session(pod: &Pod) -> Option<ListedSession> {
    recorded_session(&pod.metadata, is_running(pod))
}

/// The session a workspace PVC records (for a heal whose Pod is gone); never running.
pub fn workspace_session(pvc: &PersistentVolumeClaim) -> Option<ListedSession> {
    recorded_session(&pvc.metadata, false)
}

fn recorded_session(meta: &ObjectMeta, running: bool) -> Option<ListedSession> {
    let number = |key| {
        note(meta, key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(ListedSession {
        session_id: note(meta, ANNOTATION_SESSION_ID)?.to_owned(),
        organization_id: note(meta, ANNOTATION_ORGANIZATION_ID)
            .unwrap_or_default()
            .to_owned(),
        profile: match note(meta, ANNOTATION_PROFILE) {
            Some("agent") => "agent".into(),
            _ => "default".into(),
        },
        created_at_ms: number(ANNOTATION_CREATED_AT),
        ttl_ms: number(ANNOTATION_TTL_MS),
        idle_timeout_ms: number(ANNOTATION_IDLE_TIMEOUT_MS),
        running,
    })
}

/// The status of the Pod's `Ready` condition (`True`, `False`, `Unknown`), if it has one.
pub fn ready_status(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// A container of a starting Pod that cannot pull its image yet (reason and message), if any.
pub fn pull_trouble(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|container| {
            let waiting = container.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            TRANSIENT_PULL_REASONS.contains(&reason).then(|| {
                format!(
                    "container {} cannot pull its image: {reason}: {}",
                    container.name,
                    waiting.message.as_deref().unwrap_or("no message")
                )
            })
        })
}

/// Why a starting Pod will not become ready, if it already shows: deleted, ended, or a container
/// waiting for a reason in [`FATAL_WAITING_REASONS`].
pub fn start_failure(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("the session Pod was deleted while starting".into());
    }
    let status = pod.status.as_ref()?;
    if let Some(phase @ ("Failed" | "Succeeded")) = status.phase.as_deref() {
        let why = [status.reason.as_deref(), status.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return Some(
            format!("the session Pod ended (phase {phase}) {why}")
                .trim_end()
                .to_owned(),
        );
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref() else {
            continue;
        };
        if FATAL_WAITING_REASONS.contains(&reason) {
            let message = waiting.message.as_deref().unwrap_or("no message");
            return Some(format!(
                "container {} cannot start: {reason}: {message}",
                container.name
            ));
        }
    }
    None
}

/// A short account of a Pod that has no IP yet (phase and unmet conditions), for timeouts.
pub fn pending_detail(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "the Pod has no status yet".into();
    };
    let mut parts = vec![format!(
        "phase {}",
        status.phase.as_deref().unwrap_or("unknown")
    )];
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            parts.push(format!(
                "{} {}: {}",
                condition.type_,
                condition.reason.as_deref().unwrap_or("-"),
                condition.message.as_deref().unwrap_or("-")
            ));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::super::manifests::fixtures::{config, spec};
    use super::super::manifests::{self, labels};
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod_with(annotations: &[(&str, &str)], phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: Some(labels(annotations)),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Listing reads the annotations back; bad numbers are 0, unknown profiles `default`.
    #[test]
    fn listed_sessions() {
        let pod = manifests::pod(&spec(), &config());
        let listed = listed_session(&pod).unwrap();
        assert_eq!(
            (
                listed.session_id.as_str(),
                listed.organization_id.as_str(),
                listed.profile.as_str()
            ),
            ("Ses_1", "org-1", "agent")
        );
        assert_eq!(
            (listed.created_at_ms, listed.ttl_ms, listed.idle_timeout_ms),
            (1_700_000_000_000, 3_600_000, 600_000)
        );
        assert!(!listed.running, "no status: not running");
        let odd = pod_with(
            &[
                (ANNOTATION_SESSION_ID, "s"),
                (ANNOTATION_PROFILE, "root"),
                (ANNOTATION_CREATED_AT, "yesterday"),
            ],
            "Running",
        );
        let listed = listed_session(&odd).unwrap();
        assert_eq!(listed.profile, "default");
        assert_eq!((listed.created_at_ms, listed.ttl_ms), (0, 0));
        assert!(listed.running);
        assert!(listed_session(&pod_with(&[], "Running")).is_none());
        let mut deleting = pod_with(&[(ANNOTATION_SESSION_ID, "s")], "Running");
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).unwrap());
        assert!(!listed_session(&deleting).unwrap().running);
        assert!(is_terminal(&deleting));
    }

    fn waiting(reason: &str) -> Pod {
        let mut pod = pod_with(&[], "Pending");
        pod.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: "runner".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some("details".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        pod
    }

    /// Image and config errors and ended Pods stop a create at once; pulling does not.
    #[test]
    fn start_failures() {
        for reason in FATAL_WAITING_REASONS {
            let failure = start_failure(&waiting(reason)).unwrap();
            assert!(failure.contains(reason), "{failure}");
        }
        assert_eq!(start_failure(&waiting("ContainerCreating")), None);
        assert_eq!(start_failure(&pod_with(&[], "Pending")), None);
        assert_eq!(start_failure(&pod_with(&[], "Running")), None);
        let failed = start_failure(&pod_with(&[], "Failed")).unwrap();
        assert!(failed.contains("phase Failed"), "{failed}");
        assert!(is_terminal(&pod_with(&[], "Succeeded")));
        assert!(!is_terminal(&pod_with(&[], "Pending")));
    }

    /// runnerd URLs bracket IPv6 Pod IPs.
    #[test]
    fn runnerd_urls() {
        assert_eq!(runnerd_url("10.0.0.7", 8200), "http://10.0.0.7:8200");
        assert_eq!(runnerd_url("fd00::7", 8200), "http://[fd00::7]:8200");
    }
}

//! Leftover helper containers: every helper run removes its container, so one that outlived any
//! run was left by a process killed between the create and the remove (a spawner's `kill -9`,
//! OOM or node crash, an interrupted `tale docker-volumes rm`). The spawner's boot removes its own
//! deployment's, once they are older than any live run can be.
use super::helper::{helper_labels, QUOTA_HELPER_TIMEOUT};
use super::reclaim::ORPHAN_RECLAIM_MAX;
use super::{engine, status_of};
use crate::modes::spawner::backend::docker::DOCKER_CALL_TIMEOUT;
use crate::modes::spawner::backend::BackendResult;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// A helper container at least this old (by its creation time) is a leftover. A live run's
/// container exists for at most its create call, the run ([`QUOTA_HELPER_TIMEOUT`]) and its
/// remove call (each engine call bounded by `DOCKER_CALL_TIMEOUT`); 30 s more for a slow engine.
/// Younger ones may be another replica's run in flight and are never touched.
pub const HELPER_RECLAIM_GRACE: Duration =
    Duration::from_secs(QUOTA_HELPER_TIMEOUT.as_secs() + 2 * DOCKER_CALL_TIMEOUT.as_secs() + 30);

/// The ids and names of the listed helpers whose creation (engine clock, seconds since the
/// epoch) is at least `grace` before `now`, at most [`ORPHAN_RECLAIM_MAX`]. A creation time in
/// the future (clock skew) counts as brand new.
fn stale_helpers(
    listed: Vec<ContainerSummary>,
    now: i64,
    grace: Duration,
) -> Vec<(String, String)> {
    listed
        .into_iter()
        .filter(|c| {
            c.created
                .is_some_and(|created| now.saturating_sub(created) >= grace.as_secs() as i64)
        })
        .filter_map(|c| {
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default();
            Some((c.id?, name.trim_start_matches('/').to_owned()))
        })
        .take(ORPHAN_RECLAIM_MAX)
        .collect()
}

/// Removes the helper containers of deployment `owner` (its sandbox network) — and of stack
/// `stack`, when it has one — created at least `grace` ago; returns their names. Helpers of
/// another deployment or stack, and helpers without an owner label (made by a release before
/// it), are never listed, so never touched.
pub async fn reclaim_leftover_helpers(
    docker: &Docker,
    owner: &str,
    stack: Option<&str>,
    grace: Duration,
) -> BackendResult<Vec<String>> {
    // Exactly the labels this deployment's helpers are made with. Without an owner they would
    // match every deployment's helpers: nothing is ours to remove then.
    if owner.is_empty() {
        return Ok(Vec::new());
    }
    let labels: Vec<String> = helper_labels(owner, stack)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let filters = HashMap::from([("label", labels)]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let listed = docker
        .list_containers(Some(options))
        .await
        .map_err(engine("cannot list disk quota helper containers"))?;
    // The engine is reached over a local socket: its clock is this host's.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut removed = Vec::new();
    for (id, name) in stale_helpers(listed, now, grace) {
        // By id: a helper of the same name made since is never touched.
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => {
                tracing::info!(helper = %name, "removed a leftover disk quota helper container");
                removed.push(name);
            }
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => {
                return Err(engine(&format!(
                    "cannot remove the leftover disk quota helper {name}"
                ))(err))
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(id: &str, created: Option<i64>) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            names: Some(vec![format!("/tale-disk-quota-{id}")]),
            created,
            ..Default::default()
        }
    }

    /// Only helpers at least the grace old are stale; a creation in the future (skew) or unknown
    /// is not.
    #[test]
    fn only_helpers_past_the_grace_are_stale() {
        let grace = Duration::from_secs(210);
        let listed = vec![
            helper("old", Some(1000)),
            helper("edge", Some(1790)),
            helper("young", Some(1791)),
            helper("future", Some(5000)),
            helper("unknown", None),
        ];
        let stale = stale_helpers(listed, 2000, grace);
        assert_eq!(
            stale,
            [
                ("old".to_string(), "tale-disk-quota-old".to_string()),
                ("edge".to_string(), "tale-disk-quota-edge".to_string()),
            ]
        );
    }

    /// The grace covers a live run: its create call, the run's bound and its remove call.
    #[test]
    fn grace_outlasts_a_live_run() {
        assert!(HELPER_RECLAIM_GRACE > QUOTA_HELPER_TIMEOUT + 2 * DOCKER_CALL_TIMEOUT);
        assert_eq!(HELPER_RECLAIM_GRACE, Duration::from_secs(210));
    }
}

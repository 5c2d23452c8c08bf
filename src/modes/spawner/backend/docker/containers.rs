//! A session container's life: created (a dead earlier incarnation replaced, a live one never),
//! started on the agreed network, its runnerd address, its last words when it dies while starting.
use super::*;
use crate::modes::spawner::limits::CREATE_IN_FLIGHT_GRACE;

/// What a container found under a session's name is to a new create of that session.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incarnation {
    /// Running, starting, or not readable: never replaced.
    Live,
    /// Created and not started yet, by a create that may still start it (or that crashed); it
    /// counts as dead once `retry_after` has passed.
    Starting { retry_after: Duration },
    /// Ended, or never started within the create budget plus the grace: replaced.
    Dead,
}

/// A created, never-started container `age_ms` old: dead past the create budget plus
/// [`CREATE_IN_FLIGHT_GRACE`], else starting, with the whole seconds left until then (at least 1).
fn never_started(age_ms: u64, create_budget: Duration) -> Incarnation {
    let dead_after_ms = (create_budget + CREATE_IN_FLIGHT_GRACE).as_millis() as u64;
    if age_ms > dead_after_ms {
        return Incarnation::Dead;
    }
    let left_ms = dead_after_ms - age_ms;
    Incarnation::Starting {
        // Rounded up (and past the boundary), so a retry at that time finds it dead.
        retry_after: Duration::from_secs(left_ms / 1000 + 1),
    }
}

impl DockerBackend {
    /// Starts the container. The engine resolves the network by name at start, so a candidate
    /// network another replica made while agreeing (and is about to remove) can make it
    /// "ambiguous": then the duplicates are removed and the start retried.
    pub(super) async fn start_container(&self, name: &str, network_id: &str) -> BackendResult<()> {
        let mut attempt = 0;
        loop {
            match self
                .docker
                .start_container(
                    name,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(err)
                    if attempt < AMBIGUOUS_NETWORK_RETRIES
                        && err.to_string().contains("is ambiguous") =>
                {
                    attempt += 1;
                    self.shared().remove_other_networks(network_id).await;
                    tokio::time::sleep(
                        crate::modes::spawner::backend::docker_shared::NETWORK_AGREEMENT_RETRY,
                    )
                    .await;
                }
                Err(err) => return Err(engine("cannot start the session container")(err)),
            }
        }
    }

    /// What the container holding a session's name is to a new create of that session: a dead
    /// earlier incarnation it may replace (it ran and exited, or it was created and never started
    /// within a create budget plus the grace — its creator crashed), one that may still be started
    /// by the create that made it (created, younger than that), or a live one. A container another
    /// replica is creating or running right now is never replaced: that would delete the winner of
    /// a same-id race.
    pub(super) async fn incarnation(&self, name: &str, create_budget: Duration) -> Incarnation {
        use bollard::models::ContainerStateStatusEnum as Status;
        let Ok(inspect) = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        else {
            return Incarnation::Live;
        };
        let created_ms = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get("tale.created"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let age_ms = crate::shared::clock::now_ms().saturating_sub(created_ms);
        match inspect.state.and_then(|s| s.status) {
            Some(Status::EXITED | Status::DEAD) => Incarnation::Dead,
            Some(Status::CREATED) => never_started(age_ms, create_budget),
            _ => Incarnation::Live,
        }
    }

    /// Creates the container under the current name, replacing a dead earlier incarnation of this
    /// session's (current or legacy name) first; a live one is [`BackendError::Exists`] (the winner
    /// of a same-id race is never replaced), someone else's container in the way is refused.
    pub(super) async fn create_container(
        &self,
        spec: &SessionSpec,
        volume: &str,
        network_id: &str,
        deadline: Duration,
    ) -> BackendResult<()> {
        let id = &spec.session_id;
        let name = container_name(id);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        for attempt in 0..2 {
            match self.find_container(id, Some(&spec.organization_id)).await? {
                Found::Foreign { name } => return Err(mismatch("container", &name, id)),
                Found::Ours { name, .. } => match self.incarnation(&name, deadline).await {
                    Incarnation::Live => return Err(BackendError::Exists(id.clone())),
                    Incarnation::Starting { retry_after } => {
                        return Err(BackendError::CreateInProgress {
                            session_id: id.clone(),
                            retry_after,
                        })
                    }
                    Incarnation::Dead => {
                        self.remove_container(&name).await?;
                    }
                },
                Found::Absent => {}
            }
            match self
                .docker
                .create_container(
                    Some(options.clone()),
                    self.container_body(spec, volume, network_id),
                )
                .await
            {
                Ok(_) => return Ok(()),
                // Made by a concurrent create in between: judge it again, once; then it is the
                // winner's (never an error whose cleanup would remove the winner's container).
                Err(err) if is_conflict(&err) && attempt == 0 => {}
                Err(err) if is_conflict(&err) => return Err(BackendError::Exists(id.clone())),
                Err(err) => return Err(engine("cannot create the session container")(err)),
            }
        }
        Err(BackendError::Exists(id.clone()))
    }

    pub(super) async fn remove_container(&self, name: &str) -> BackendResult<bool> {
        // `v`: the anonymous state volume goes with the container (named volumes stay).
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(engine("cannot remove the session container")(err)),
        }
    }

    pub(super) async fn endpoint(&self, session_id: &str) -> BackendResult<String> {
        let inspect = match self.find_container(session_id, None).await? {
            Found::Ours { object, .. } => object,
            _ => {
                return Err(BackendError::Engine(format!(
                    "session {session_id} has no container"
                )))
            }
        };
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.config.network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                BackendError::Engine(format!(
                    "session {session_id} has no address on {}",
                    self.config.network
                ))
            })?;
        Ok(format!("http://{ip}:{DEFAULT_PORT}"))
    }

    /// The last lines of the container's log, for error messages.
    pub(super) async fn log_tail(&self, name: &str) -> String {
        use futures_util::StreamExt;
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("10")
            .build();
        let mut logs = self.docker.logs(name, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&chunk.to_string());
        }
        text.chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }

    pub(super) async fn try_create(
        &self,
        spec: &SessionSpec,
        volume: &str,
        network_id: &str,
        deadline: Duration,
    ) -> BackendResult<String> {
        let name = container_name(&spec.session_id);
        self.create_container(spec, volume, network_id, deadline)
            .await?;
        // Before start: runnerd never runs without its allowlist.
        self.write_allowed_sources(&name).await?;
        crate::modes::spawner::test_hooks::pause_at("before_start").await;
        self.start_container(&name, network_id).await?;
        crate::modes::spawner::test_hooks::pause_at("after_start").await;
        let url = match self.endpoint(&spec.session_id).await {
            Ok(url) => url,
            Err(err) => {
                // A container that already exited has no address: report why it exited.
                let running = self
                    .docker
                    .inspect_container(&name, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|c| c.state?.running);
                return Err(match running {
                    Some(false) => BackendError::Died(format!(
                        "container exited: {}",
                        self.log_tail(&name).await
                    )),
                    _ => err,
                });
            }
        };
        wait_for_runnerd(&url, spec, deadline, || async {
            let state = self
                .docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|c| c.state);
            match state.and_then(|s| s.running) {
                Some(false) => Err(format!("container exited: {}", self.log_tail(&name).await)),
                _ => Ok(()),
            }
        })
        .await?;
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A never-started container counts as dead only past the create budget plus the grace; until
    /// then the retry is told how many whole seconds are left, rounded up, at least 1.
    #[test]
    fn never_started_containers_count_as_dead_after_budget_and_grace() {
        let budget = Duration::from_secs(15);
        let limit_ms = (budget + CREATE_IN_FLIGHT_GRACE).as_millis() as u64;
        let left = |age_ms| match never_started(age_ms, budget) {
            Incarnation::Starting { retry_after } => Some(retry_after.as_secs()),
            _ => None,
        };
        assert_eq!(left(0), Some(limit_ms / 1000 + 1));
        assert_eq!(left(limit_ms - 1500), Some(2));
        assert_eq!(left(limit_ms - 1), Some(1));
        assert_eq!(left(limit_ms), Some(1));
        assert_eq!(never_started(limit_ms + 1, budget), Incarnation::Dead);
        assert_eq!(never_started(u64::MAX, budget), Incarnation::Dead);
    }
}

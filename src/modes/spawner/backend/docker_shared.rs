//! Objects that every spawner replica on one Docker engine shares, made race-free with the only
//! thing the engine arbitrates atomically: container names.
//!
//! - **The sandbox network.** The engine accepts two networks of one name, so replicas booting
//!   together would each create one and every later create by name fails "network … is ambiguous".
//!   Each replica creates a candidate network, then races to create a never-started *lock
//!   container* named after the network and labelled with its candidate's id; the engine lets one
//!   win, every replica adopts the id on the lock's label and removes its own losing candidate.
//! - **Cap slots.** A create claims one per-organization slot and one global slot: a never-started
//!   *claim container* named `<claim prefix>-o-<org digest>-<n>` / `<claim prefix>-g-<n>` (n below
//!   the cap) and labelled with the session id. A listing only says which names look free; the
//!   create by name is the atomic check. A claim whose session has no running container once the
//!   create budget has passed (its creator crashed, or the session died) is reclaimed, removed by its
//!   id so that a fresh claim of the same name is never touched.
//!
//! The claim prefix `tale-claim-<digest of the network name>` scopes claims to one deployment:
//! replicas of a deployment share `SANDBOX_EGRESS_NETWORK`.
use super::{BackendError, BackendResult, CapClaim, CapDecision, CapRequest};
use crate::modes::spawner::limits::CREATE_IN_FLIGHT_GRACE;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Label on claim and lock containers (value: the claim prefix).
pub const CLAIM_LABEL: &str = "tale.claim";
/// Label on a claim container: the session holding the slot.
pub const CLAIM_SESSION_LABEL: &str = "tale.claim-session";
/// Label on a claim container: when it was made (ms since the epoch).
pub const CLAIM_CREATED_LABEL: &str = "tale.claim-created";
/// Label on the network lock container: the id of the network every replica uses.
pub const NETWORK_ID_LABEL: &str = "tale.network-id";

/// How long a replica tries to agree with the others on the sandbox network.
pub const NETWORK_AGREEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after losing the network lock before reading it (the winner's create is in flight).
pub const NETWORK_AGREEMENT_RETRY: Duration = Duration::from_millis(20);

fn engine(context: &str) -> impl FnOnce(DockerError) -> BackendError + '_ {
    move |err| BackendError::engine_call(context, err)
}

fn status_of(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn short_digest(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    crate::shared::hex::encode(digest.as_ref())[..12].to_owned()
}

/// `tale-claim-<12 hex of SHA-256(network)>`: the names of one deployment's shared objects.
pub fn claim_prefix(network: &str) -> String {
    format!("tale-claim-{}", short_digest(network))
}

fn global_slot(prefix: &str, n: u64) -> String {
    format!("{prefix}-g-{n}")
}

fn org_slot(prefix: &str, org: &str, n: u64) -> String {
    format!("{prefix}-o-{}-{n}", short_digest(org))
}

fn network_lock(prefix: &str) -> String {
    format!("{prefix}-net")
}

/// Whether a listed container is attached to the network named `network` (one engine may host
/// several deployments: a deployment's sessions are the ones on its network).
pub fn on_network(container: &ContainerSummary, network: &str) -> bool {
    container
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .is_some_and(|n| n.contains_key(network))
}

/// A never-started container: costs a name and a few kilobytes, runs nothing.
fn marker_body(image: &str, labels: HashMap<String, String>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Shared-object operations for one deployment.
pub struct Shared<'a> {
    pub docker: &'a Docker,
    pub network: &'a str,
    pub image: &'a str,
    /// The deployment's `tale.stack` label value, put on the network it creates.
    pub stack_label: Option<&'a str>,
}

impl Shared<'_> {
    fn prefix(&self) -> String {
        claim_prefix(self.network)
    }

    /// Creates a marker container; `Ok(None)` when the name is taken.
    async fn create_marker(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> BackendResult<Option<String>> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self
            .docker
            .create_container(Some(options), marker_body(self.image, labels))
            .await
        {
            Ok(created) => Ok(Some(created.id)),
            Err(err) if status_of(&err) == Some(409) => Ok(None),
            Err(err) => Err(engine("cannot create a claim container")(err)),
        }
    }

    /// Whether the image markers are made from is absent from the engine.
    async fn image_missing(&self) -> BackendResult<bool> {
        match self.docker.inspect_image(self.image).await {
            Ok(_) => Ok(false),
            Err(err) if status_of(&err) == Some(404) => Ok(true),
            Err(err) => Err(engine("cannot inspect the session image")(err)),
        }
    }

    /// Removes a container by id (so a same-named successor is never touched); gone is fine.
    async fn remove_by_id(&self, id: &str) -> BackendResult<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            Err(err) => Err(engine("cannot remove a claim container")(err)),
        }
    }

    /// The id of the one network every replica uses, creating it (and the lock) if needed.
    pub async fn converge_network(&self) -> BackendResult<String> {
        let lock = network_lock(&self.prefix());
        let deadline = tokio::time::Instant::now() + NETWORK_AGREEMENT_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Some((lock_id, network_id)) = self.read_lock(&lock).await? {
                match self.docker.inspect_network(&network_id, None).await {
                    Ok(_) => {
                        self.remove_other_networks(&network_id).await;
                        return Ok(network_id);
                    }
                    // The locked network was removed (by an operator): the lock is stale.
                    Err(err) if status_of(&err) == Some(404) => {
                        self.remove_by_id(&lock_id).await?;
                        continue;
                    }
                    Err(err) => return Err(engine("cannot inspect the sandbox network")(err)),
                }
            }
            let candidate = self.candidate_network().await?;
            if self.image_missing().await? {
                // Markers are containers, and a container needs an image. Without the session image
                // every create fails anyway (502, the engine's reason); the spawner still serves
                // (health, listing) on its candidate; a restart once the image exists takes the lock.
                tracing::warn!(image = %self.image, network = %self.network, id = %candidate, "the session image is missing: using this replica's network without the lock until it exists");
                return Ok(candidate);
            }
            let labels = HashMap::from([
                (CLAIM_LABEL.to_string(), self.prefix()),
                (NETWORK_ID_LABEL.to_string(), candidate.clone()),
            ]);
            if self.create_marker(&lock, labels).await?.is_some() {
                tracing::info!(network = %self.network, id = %candidate, "this replica's sandbox network won the lock");
            } else {
                // Lost: the engine reserves the winner's name before the lock can be inspected.
                tokio::time::sleep(NETWORK_AGREEMENT_RETRY).await;
            }
            // Won or lost: the lock's label now names the network; the loop reads it.
        }
        Err(BackendError::Engine(format!(
            "could not agree on the sandbox network {} with other replicas",
            self.network
        )))
    }

    async fn read_lock(&self, lock: &str) -> BackendResult<Option<(String, String)>> {
        match self
            .docker
            .inspect_container(lock, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let network = c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|mut l| l.remove(NETWORK_ID_LABEL));
                match (c.id, network) {
                    (Some(id), Some(network)) => Ok(Some((id, network))),
                    _ => Err(BackendError::Engine(format!(
                        "{lock} is not a tale network lock"
                    ))),
                }
            }
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(engine("cannot inspect the network lock")(err)),
        }
    }

    /// Networks of our name, oldest id order.
    async fn networks_named(&self) -> BackendResult<Vec<String>> {
        let filters = HashMap::from([("name", vec![self.network])]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let mut ids: Vec<String> = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(engine("cannot list networks"))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(self.network))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// An existing network of our name (one made by an operator, compose, or an older release),
    /// else a new one.
    async fn candidate_network(&self) -> BackendResult<String> {
        if let Some(id) = self.networks_named().await?.into_iter().next() {
            return Ok(id);
        }
        let request = NetworkCreateRequest {
            name: self.network.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(true),
            enable_ipv6: Some(false),
            labels: Some(
                [("tale.sandbox-network", "1")]
                    .into_iter()
                    .chain(
                        self.stack_label
                            .map(|stack| (super::docker::STACK_LABEL, stack)),
                    )
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(request)
            .await
            .map_err(engine("cannot create the sandbox network"))?;
        Ok(created.id)
    }

    /// Removes same-named networks other than `keep` (a losing replica's candidate); a network in
    /// use cannot be removed and is left alone.
    pub async fn remove_other_networks(&self, keep: &str) {
        let Ok(ids) = self.networks_named().await else {
            return;
        };
        for id in ids.into_iter().filter(|id| id != keep) {
            match self.docker.remove_network(&id).await {
                Ok(()) => tracing::info!(%id, "removed a duplicate sandbox network"),
                Err(err) => tracing::debug!(%id, %err, "duplicate sandbox network not removed"),
            }
        }
    }

    /// A create's claim: first makes every running session of this deployment that holds no claim
    /// count (a replica of a previous release, which knows no claims, may have created it a moment
    /// ago; a sweep or listing would count it only later), then claims the create's own slots.
    pub async fn claim_for_create(&self, request: &CapRequest<'_>) -> BackendResult<CapDecision> {
        self.count_unclaimed(request).await?;
        self.claim(request).await
    }

    /// Claims slots for running sessions on this deployment's network that hold none. Two
    /// listings; adopting happens only while replicas of a previous release run.
    async fn count_unclaimed(&self, request: &CapRequest<'_>) -> BackendResult<()> {
        let held: HashSet<String> = self
            .claims()
            .await?
            .into_values()
            .map(|(_, session, _)| session)
            .collect();
        let label = format!("{}=1", super::docker::SESSION_LABEL);
        let running = self
            .labelled_containers(label, false, "cannot list session containers")
            .await?;
        for container in running {
            let on_our_network = on_network(&container, self.network);
            let labels = container.labels.unwrap_or_default();
            let (Some(session), Some(org)) = (labels.get("tale.session"), labels.get("tale.org"))
            else {
                continue;
            };
            if !on_our_network || held.contains(session) || session == request.session_id {
                continue;
            }
            let adopted = CapRequest {
                session_id: session,
                organization_id: org,
                ..request.clone()
            };
            match self.adopt(&adopted).await {
                Ok(true) => {
                    tracing::info!(session_id = %session, "a session without claims (a previous release's) now counts against the caps")
                }
                Ok(false) => {
                    tracing::warn!(session_id = %session, "a session without claims is over the caps; it runs on uncounted")
                }
                Err(err) => {
                    tracing::warn!(session_id = %session, %err, "cannot claim cap slots for a session without claims")
                }
            }
        }
        Ok(())
    }

    /// Claims one org slot and one global slot for the session.
    pub async fn claim(&self, request: &CapRequest<'_>) -> BackendResult<CapDecision> {
        let prefix = self.prefix();
        let org_names: Vec<String> = (0..request.max_per_org)
            .map(|n| org_slot(&prefix, request.organization_id, n))
            .collect();
        let global_names: Vec<String> = (0..request.max_sessions)
            .map(|n| global_slot(&prefix, n))
            .collect();
        let Some(org_claim) = self.claim_one(&org_names, request).await? else {
            return Ok(CapDecision::OrgFull);
        };
        match self.claim_one(&global_names, request).await {
            Ok(Some(global_claim)) => Ok(CapDecision::Admitted(CapClaim {
                objects: vec![org_claim, global_claim],
            })),
            Ok(None) => {
                self.remove_by_id(&org_claim).await?;
                Ok(CapDecision::SpawnerFull)
            }
            Err(err) => {
                let _ = self.remove_by_id(&org_claim).await;
                Err(err)
            }
        }
    }

    /// Takes the first free name of `slots`; reclaims orphaned claims once when all look taken.
    async fn claim_one(
        &self,
        slots: &[String],
        request: &CapRequest<'_>,
    ) -> BackendResult<Option<String>> {
        let labels = HashMap::from([
            (CLAIM_LABEL.to_string(), self.prefix()),
            (
                CLAIM_SESSION_LABEL.to_string(),
                request.session_id.to_owned(),
            ),
            (
                CLAIM_CREATED_LABEL.to_string(),
                crate::shared::clock::now_ms().to_string(),
            ),
        ]);
        for pass in 0..2 {
            let held = self.claims().await?;
            for name in slots.iter().filter(|n| !held.contains_key(*n)) {
                if let Some(id) = self.create_marker(name, labels.clone()).await? {
                    return Ok(Some(id));
                }
            }
            if pass == 0 && self.reclaim_orphans(slots, &held, request).await? == 0 {
                break;
            }
        }
        Ok(None)
    }

    /// Claim containers of this deployment: name → (id, session, created ms).
    async fn claims(&self) -> BackendResult<HashMap<String, (String, String, u64)>> {
        let label = format!("{CLAIM_LABEL}={}", self.prefix());
        let listed = self
            .labelled_containers(label, true, "cannot list claim containers")
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                let labels = c.labels.unwrap_or_default();
                let session = labels.get(CLAIM_SESSION_LABEL)?.clone();
                let created = labels
                    .get(CLAIM_CREATED_LABEL)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Some((name, (c.id?, session, created)))
            })
            .collect())
    }

    /// Removes claims among `slots` older than the create budget whose session has no running
    /// container. Returns how many went.
    async fn reclaim_orphans(
        &self,
        slots: &[String],
        held: &HashMap<String, (String, String, u64)>,
        request: &CapRequest<'_>,
    ) -> BackendResult<usize> {
        let now = crate::shared::clock::now_ms();
        let budget = (request.create_budget + CREATE_IN_FLIGHT_GRACE).as_millis() as u64;
        let old: Vec<&(String, String, u64)> = slots
            .iter()
            .filter_map(|n| held.get(n))
            .filter(|(_, _, created)| now.saturating_sub(*created) > budget)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let running = self.running_sessions().await?;
        let mut reclaimed = 0;
        for (id, session, _) in old.into_iter().filter(|(_, s, _)| !running.contains(s)) {
            tracing::info!(%session, claim = %id, "reclaiming an orphaned cap claim");
            self.remove_by_id(id).await?;
            reclaimed += 1;
        }
        Ok(reclaimed)
    }

    /// Ids of sessions with a running container.
    async fn running_sessions(&self) -> BackendResult<HashSet<String>> {
        let label = format!("{}=1", super::docker::SESSION_LABEL);
        let listed = self
            .labelled_containers(label, false, "cannot list session containers")
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|c| c.labels?.remove("tale.session"))
            .collect())
    }

    /// Containers carrying `label` (`key=value`): stopped ones too when `all`.
    async fn labelled_containers(
        &self,
        label: String,
        all: bool,
        context: &'static str,
    ) -> BackendResult<Vec<ContainerSummary>> {
        let filters = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::new()
            .all(all)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(engine(context))
    }

    /// The sessions holding a claim (one listing of the claim containers).
    pub async fn claimed_sessions(&self) -> BackendResult<HashSet<String>> {
        Ok(self
            .claims()
            .await?
            .into_values()
            .map(|(_, session, _)| session)
            .collect())
    }

    /// Claims slots for a running session that holds none (created by a release without claims).
    pub async fn adopt(&self, request: &CapRequest<'_>) -> BackendResult<bool> {
        let held = self.claims().await?;
        if held.values().any(|(_, s, _)| s == request.session_id) {
            return Ok(true);
        }
        let CapDecision::Admitted(mine) = self.claim(request).await? else {
            return Ok(false);
        };
        // Replicas adopting together may each have claimed: of each kind the lowest-named claim
        // stays and every other replica removes its own, so exactly one of each remains.
        let held = self.claims().await?;
        let of_session: Vec<(&String, &String)> = held
            .iter()
            .filter(|(_, (_, s, _))| s == request.session_id)
            .map(|(name, (id, _, _))| (name, id))
            .collect();
        let is_global = |name: &str| name.starts_with(&format!("{}-g-", self.prefix()));
        for (my_name, my_id) in of_session
            .iter()
            .filter(|(_, id)| mine.objects.contains(id))
        {
            let beaten = of_session
                .iter()
                .any(|(name, _)| is_global(name) == is_global(my_name) && name < my_name);
            if beaten {
                self.remove_by_id(my_id).await?;
            }
        }
        Ok(true)
    }

    /// Removes the given claims (a create that failed or lost a race).
    pub async fn release(&self, claim: &CapClaim) -> BackendResult<()> {
        for id in &claim.objects {
            self.remove_by_id(id).await?;
        }
        Ok(())
    }

    /// Removes every claim the session holds (it stopped or was destroyed).
    pub async fn release_session(&self, session_id: &str) -> BackendResult<()> {
        let claims = self.claims().await?;
        for (id, _, _) in claims.values().filter(|(_, s, _)| s == session_id) {
            self.remove_by_id(id).await?;
        }
        Ok(())
    }
}

/// Label on a pin marker volume: the pinned session.
pub const PIN_SESSION_LABEL: &str = "tale.pin-session";

/// The pin marker volume of a session: `<claim prefix>-pin-<16 hex of SHA-256(id)>`.
pub fn pin_volume(network: &str, session_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, session_id.as_bytes());
    let hex = crate::shared::hex::encode(digest.as_ref());
    format!("{}-pin-{}", claim_prefix(network), &hex[..16])
}

impl Shared<'_> {
    /// Pins live as marker volumes (labels cannot change after create; volume create is
    /// idempotent and removal is by name): present = pinned.
    pub async fn set_pinned(&self, session_id: &str, pinned: bool) -> BackendResult<()> {
        let name = pin_volume(self.network, session_id);
        if pinned {
            self.docker
                .create_volume(bollard::models::VolumeCreateRequest {
                    name: Some(name),
                    labels: Some(HashMap::from([
                        (CLAIM_LABEL.to_string(), self.prefix()),
                        (PIN_SESSION_LABEL.to_string(), session_id.to_owned()),
                    ])),
                    ..Default::default()
                })
                .await
                .map_err(engine("cannot create the pin marker volume"))?;
            return Ok(());
        }
        match self
            .docker
            .remove_volume(
                &name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            Err(err) => Err(engine("cannot remove the pin marker volume")(err)),
        }
    }

    pub async fn is_pinned(&self, session_id: &str) -> BackendResult<bool> {
        match self
            .docker
            .inspect_volume(&pin_volume(self.network, session_id))
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if status_of(&err) == Some(404) => Ok(false),
            Err(err) => Err(engine("cannot inspect the pin marker volume")(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot names are scoped by the network, short for any org id, and distinct per org and slot.
    #[test]
    fn slot_names() {
        let prefix = claim_prefix("tale-sandbox-net");
        // scripts/quickstart.sh computes the same with `sha256sum | cut -c1-12`.
        assert_eq!(prefix, "tale-claim-e2c10179223d");
        assert!(prefix.starts_with("tale-claim-") && prefix.len() == "tale-claim-".len() + 12);
        assert_ne!(prefix, claim_prefix("other-net"));
        assert_eq!(global_slot(&prefix, 2), format!("{prefix}-g-2"));
        let long_org = "o".repeat(128);
        assert!(org_slot(&prefix, &long_org, 0).len() < 64);
        assert_ne!(org_slot(&prefix, "a", 0), org_slot(&prefix, "b", 0));
        assert_ne!(org_slot(&prefix, "a", 0), org_slot(&prefix, "a", 1));
    }
}

//! Cap slots as `coordination.k8s.io/v1` Leases, so the caps hold across every spawner replica.
//!
//! A create claims one per-organization slot and one global slot: a Lease named
//! `tale-claim-o-<12 hex of SHA-256(org)>-<n>` / `tale-claim-g-<n>` (n below the cap), labelled
//! [`CLAIM_LABEL`] and annotated with the session id. The API server's unique object names are the
//! arbiter: a POST either creates the slot or answers 409 AlreadyExists (taken: try the next).
//! A listing only says which names look free; it is never the check.
//!
//! Every delete carries `preconditions` (the claim's uid and resourceVersion), so a replica never
//! deletes a claim that has since been released and taken by another create under the same name.
//! A claim whose session has no running Pod once the create budget plus [`CREATE_IN_FLIGHT_GRACE`]
//! has passed (its creator crashed mid-create, or the session is gone without a stop) is reclaimed
//! that way. Leases are used as plain named records here: no holder renews them.
use super::super::{BackendError, BackendResult, CapClaim, CapDecision, CapRequest};
use super::manifests::ANNOTATION_SESSION_ID;
use super::{api, is_conflict, is_not_found, KubernetesBackend};
use crate::modes::spawner::limits::CREATE_IN_FLIGHT_GRACE;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Label on every claim Lease (value `1`): what the claim listing selects.
pub const CLAIM_LABEL: &str = "tale.dev/claim";
/// Name prefix of claim Leases.
pub const CLAIM_PREFIX: &str = "tale-claim";

fn short_digest(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    crate::shared::hex::encode(digest.as_ref())[..12].to_owned()
}

/// The name of global slot `n`.
pub fn global_slot(n: u64) -> String {
    format!("{CLAIM_PREFIX}-g-{n}")
}

/// The name of slot `n` of organization `org` (hashed: any org id gives a short DNS-safe name).
pub fn org_slot(org: &str, n: u64) -> String {
    format!("{CLAIM_PREFIX}-o-{}-{n}", short_digest(org))
}

fn is_global(name: &str) -> bool {
    name.starts_with(&format!("{CLAIM_PREFIX}-g-"))
}

/// The Lease of a claim on `name` for `session_id`.
pub fn claim_lease(name: &str, session_id: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(CLAIM_LABEL.to_owned(), "1".to_owned())])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_SESSION_ID.to_owned(),
                session_id.to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(session_id.to_owned()),
            ..Default::default()
        }),
    }
}

/// A claim as listed.
#[derive(Clone, Debug)]
struct Held {
    uid: String,
    resource_version: Option<String>,
    session: String,
    /// The API server's creation time (ms since the epoch); 0 when it has none.
    created_ms: u64,
}

impl Held {
    fn of(lease: Lease) -> Option<(String, Held)> {
        let meta = lease.metadata;
        let session = meta
            .annotations
            .as_ref()?
            .get(ANNOTATION_SESSION_ID)?
            .clone();
        let created_ms = meta
            .creation_timestamp
            .map(|t| t.0.as_millisecond().max(0) as u64)
            .unwrap_or(0);
        Some((
            meta.name?,
            Held {
                uid: meta.uid?,
                resource_version: meta.resource_version,
                session,
                created_ms,
            },
        ))
    }
}

/// A claim in a [`CapClaim`]: `name/uid` (names never hold a `/`).
fn encode(name: &str, uid: &str) -> String {
    format!("{name}/{uid}")
}

fn decode(object: &str) -> Option<(&str, &str)> {
    object.split_once('/')
}

impl KubernetesBackend {
    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.manifests.namespace)
    }

    /// Claims one org slot and one global slot for the session.
    pub(super) async fn claim_slots(&self, request: &CapRequest<'_>) -> BackendResult<CapDecision> {
        let org_names: Vec<String> = (0..request.max_per_org)
            .map(|n| org_slot(request.organization_id, n))
            .collect();
        let global_names: Vec<String> = (0..request.max_sessions).map(global_slot).collect();
        let Some(org_claim) = self.claim_one(&org_names, request).await? else {
            return Ok(CapDecision::OrgFull);
        };
        match self.claim_one(&global_names, request).await {
            Ok(Some(global_claim)) => Ok(CapDecision::Admitted(CapClaim {
                objects: vec![org_claim, global_claim],
            })),
            Ok(None) => {
                self.delete_claim_object(&org_claim).await?;
                Ok(CapDecision::SpawnerFull)
            }
            Err(err) => {
                let _ = self.delete_claim_object(&org_claim).await;
                Err(err)
            }
        }
    }

    /// Takes the first free name of `slots` (as `name/uid`); reclaims orphaned claims once when
    /// all look taken.
    async fn claim_one(
        &self,
        slots: &[String],
        request: &CapRequest<'_>,
    ) -> BackendResult<Option<String>> {
        for pass in 0..2 {
            let held = self.held_claims().await?;
            for name in slots.iter().filter(|n| !held.contains_key(*n)) {
                match self
                    .leases()
                    .create(
                        &PostParams::default(),
                        &claim_lease(name, request.session_id),
                    )
                    .await
                {
                    Ok(lease) => {
                        let uid = lease.metadata.uid.ok_or_else(|| {
                            BackendError::Engine(format!(
                                "the claim Lease {name} came back without a uid"
                            ))
                        })?;
                        return Ok(Some(encode(name, &uid)));
                    }
                    // Taken since the listing: the API server arbitrated, try the next.
                    Err(err) if is_conflict(&err) => continue,
                    Err(err) => return Err(api("cannot create a claim Lease")(err)),
                }
            }
            if pass == 0 && self.reclaim_orphans(slots, &held, request).await? == 0 {
                break;
            }
        }
        Ok(None)
    }

    /// The sessions holding a claim (one paginated listing).
    pub(super) async fn claimed_session_ids(&self) -> BackendResult<HashSet<String>> {
        Ok(self
            .held_claims()
            .await?
            .into_values()
            .map(|held| held.session)
            .collect())
    }

    /// Claim Leases in the namespace: name → claim.
    async fn held_claims(&self) -> BackendResult<HashMap<String, Held>> {
        let listed = super::watch::list_paginated(
            &self.leases(),
            &format!("{CLAIM_LABEL}=1"),
            self.list_page_size,
        )
        .await
        .map_err(api("cannot list claim Leases"))?;
        Ok(listed.into_iter().filter_map(Held::of).collect())
    }

    /// Deletes the claim `name` only while it is still the one listed (uid and resourceVersion);
    /// gone or replaced counts as done. Returns whether this call deleted it.
    async fn delete_claim(&self, name: &str, uid: &str, rv: Option<&str>) -> BackendResult<bool> {
        let params = DeleteParams::default().preconditions(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: rv.map(str::to_owned),
        });
        match self.leases().delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(err) if is_not_found(&err) || is_conflict(&err) => Ok(false),
            Err(err) => Err(api("cannot delete a claim Lease")(err)),
        }
    }

    async fn delete_claim_object(&self, object: &str) -> BackendResult<bool> {
        match decode(object) {
            Some((name, uid)) => self.delete_claim(name, uid, None).await,
            None => Ok(false),
        }
    }

    /// Removes claims among `slots` older than the create budget (plus grace) whose session has
    /// no running Pod. Returns how many went.
    async fn reclaim_orphans(
        &self,
        slots: &[String],
        held: &HashMap<String, Held>,
        request: &CapRequest<'_>,
    ) -> BackendResult<usize> {
        let now = crate::shared::clock::now_ms();
        let budget = (request.create_budget + CREATE_IN_FLIGHT_GRACE).as_millis() as u64;
        let old: Vec<(&String, &Held)> = slots
            .iter()
            .filter_map(|n| held.get_key_value(n))
            .filter(|(_, h)| now.saturating_sub(h.created_ms) > budget)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let running: HashSet<String> = self
            .sessions(None)
            .await?
            .into_iter()
            .filter(|s| s.running)
            .map(|s| s.session_id)
            .collect();
        let mut reclaimed = 0;
        for (name, claim) in old
            .into_iter()
            .filter(|(_, h)| !running.contains(&h.session))
        {
            tracing::info!(session = %claim.session, claim = %name, "reclaiming an orphaned cap claim");
            if self
                .delete_claim(name, &claim.uid, claim.resource_version.as_deref())
                .await?
            {
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    /// Claims slots for a running session that holds none (created by a release without claims).
    pub(super) async fn adopt_slots(&self, request: &CapRequest<'_>) -> BackendResult<bool> {
        let held = self.held_claims().await?;
        if held.values().any(|h| h.session == request.session_id) {
            return Ok(true);
        }
        let CapDecision::Admitted(mine) = self.claim_slots(request).await? else {
            return Ok(false);
        };
        // Replicas adopting together may each have claimed: of each kind the lowest-named claim
        // stays and every other replica removes its own, so exactly one of each remains.
        let held = self.held_claims().await?;
        let of_session: Vec<(&String, &Held)> = held
            .iter()
            .filter(|(_, h)| h.session == request.session_id)
            .collect();
        for (my_name, my_claim) in of_session
            .iter()
            .filter(|(name, h)| mine.objects.contains(&encode(name, &h.uid)))
        {
            let beaten = of_session
                .iter()
                .any(|(name, _)| is_global(name) == is_global(my_name) && name < my_name);
            if beaten {
                self.delete_claim(my_name, &my_claim.uid, None).await?;
            }
        }
        Ok(true)
    }

    /// Removes the given claims (a create that failed or lost a race); only these objects.
    pub(super) async fn release_claims(&self, claim: &CapClaim) -> BackendResult<()> {
        for object in &claim.objects {
            self.delete_claim_object(object).await?;
        }
        Ok(())
    }

    /// Removes every claim the session holds (it stopped or was destroyed).
    pub(super) async fn release_session_claims(&self, session_id: &str) -> BackendResult<()> {
        for (name, claim) in self.held_claims().await? {
            if claim.session == session_id {
                self.delete_claim(&name, &claim.uid, claim.resource_version.as_deref())
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot names are short and DNS-safe for any org id, and distinct per org and slot; a claim
    /// object round-trips through its `name/uid` form.
    #[test]
    fn slot_names() {
        assert_eq!(global_slot(2), "tale-claim-g-2");
        let long_org = "o".repeat(128);
        let name = org_slot(&long_org, 0);
        assert!(name.len() < 63, "{name}");
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert_ne!(org_slot("a", 0), org_slot("b", 0));
        assert_ne!(org_slot("a", 0), org_slot("a", 1));
        assert!(is_global(&global_slot(0)) && !is_global(&org_slot("a", 0)));
        assert_eq!(
            decode(&encode("tale-claim-g-1", "u-1")),
            Some(("tale-claim-g-1", "u-1"))
        );
    }

    /// The claim Lease carries the selector label, the session annotation and the holder.
    #[test]
    fn claim_lease_names_the_session() {
        let lease = claim_lease("tale-claim-g-0", "s-1");
        let value = serde_json::to_value(&lease).unwrap();
        assert_eq!(value["metadata"]["labels"][CLAIM_LABEL], "1");
        assert_eq!(
            value["metadata"]["annotations"][ANNOTATION_SESSION_ID],
            "s-1"
        );
        assert_eq!(value["spec"]["holderIdentity"], "s-1");
    }
}

//! The `kubernetes` backend (kube, typed API, one namespace): per session a Pod running the image's
//! `tale runnerd` as the profile's non-root user, a Secret `<pod>-spec` with the SHA-256 of the
//! runnerd token (never the token), and a workspace PVC `<pod>-ws` that survives stops. runnerd is
//! reached over plain HTTP at the Pod IP — never through `pods/exec`. Labels and annotations are
//! the truth a restarted spawner re-adopts from; at boot the namespace's NetworkPolicy is applied.
//!
//! Create, with one deadline shared by every wait: a live Pod of the same name is someone else's
//! session (`Exists`, nothing touched); an ended or deleting one is reaped and waited out. Then the
//! PVC (kept when it existed: a resume), the Secret and the Pod; then the Pod's IP (failing at once
//! on image, config or crash-loop errors), then runnerd's `/healthz`. A failed create removes the
//! Pod and Secret, and the PVC too unless it existed before (then it is marked stopped), each
//! under the uid it was made with. Lost Pods are healed on their kept PVC (`heal`); start errors
//! that waiting cures are retried until their own deadlines (`start_wait`).
//!
//! Several replicas share one namespace: caps are claim Leases (`claims`), pins an annotation on
//! the workspace PVC (`pins`), and the Secret is a create's lock against same-id races (`races`).
//!
//! One label-selected watch per replica keeps a cache of the session Pods (`watch`, `cache`):
//! readiness and removal are awaited on its events, and list/get/exists are answered from it
//! while it is current (`waits`); when the watch fails the backend asks the API server directly.
pub mod cache;
pub mod claims;
pub mod client;
mod create;
pub mod heal;
pub mod lost;
pub mod manifests;
pub mod network;
pub mod ownership;
pub mod pins;
pub mod placement;
mod races;
pub mod start_wait;
pub mod status;
mod waits;
pub mod watch;

use super::names::Found;
use super::{
    Backend, BackendError, BackendKind, BackendResult, BoxFuture, CapClaim, CapDecision,
    CapRequest, Healed, ListedSession, SessionSpec,
};
use crate::modes::spawner::config::{
    Hardening, HealSettings, KubernetesSettings, NetworkSettings, ProfilePlacements,
};
use crate::shared::protocol::runnerd::is_valid_id;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use manifests::ManifestConfig;
use races::{gone_is_done, uid_precondition};
use std::time::Duration;
use tokio::time::Instant;

/// First wait between polls of a starting Pod (for its IP, or for a reaped one to vanish) while
/// the watch is stale (otherwise watch events are awaited); each later wait doubles up to
/// [`POD_POLL_MAX_INTERVAL`].
pub const POD_POLL_FIRST_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait between polls of a Pod, and the least time between two Pod status reads while
/// runnerd's readiness is probed.
pub const POD_POLL_MAX_INTERVAL: Duration = Duration::from_millis(500);

/// How many times a boot re-reads and replaces the NetworkPolicy when other replicas replace it
/// at the same moment (409 Conflict on a stale resourceVersion).
pub const NETWORK_POLICY_APPLY_ATTEMPTS: u32 = 5;

/// Settings of the kubernetes backend.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    pub settings: KubernetesSettings,
    pub image: String,
    pub egress_proxy: Option<String>,
    pub no_proxy: String,
    pub hardening: Hardening,
}

/// Sessions as Kubernetes Pods.
pub struct KubernetesBackend {
    client: kube::Client,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    pvcs: Api<PersistentVolumeClaim>,
    manifests: ManifestConfig,
    /// Scheduling and pull settings of session Pods, per profile.
    placements: ProfilePlacements,
    /// DNS peers of the session NetworkPolicy, and whether it is applied at all.
    network: NetworkSettings,
    /// The session Pods as this replica's watch sees them.
    cache: cache::PodCache,
    /// Pods per LIST page.
    list_page_size: u32,
    /// Timeouts of healing and of transient start errors.
    heal_settings: HealSettings,
}

/// Asks `check` until it answers `Some`, waiting [`POD_POLL_FIRST_INTERVAL`] doubling up to
/// [`POD_POLL_MAX_INTERVAL`] between asks; `None` once the next wait would pass `deadline`. The
/// fallback where no watch event can tell (a stale watch, objects the watch does not cover).
async fn poll_with_backoff<T, Fut>(
    deadline: Instant,
    mut check: impl FnMut() -> Fut,
) -> BackendResult<Option<T>>
where
    Fut: std::future::Future<Output = BackendResult<Option<T>>>,
{
    let mut interval = POD_POLL_FIRST_INTERVAL;
    loop {
        if let Some(value) = check().await? {
            return Ok(Some(value));
        }
        if Instant::now() + interval > deadline {
            return Ok(None);
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(POD_POLL_MAX_INTERVAL);
    }
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn is_not_found(err: &kube::Error) -> bool {
    status_code(err) == Some(404)
}

fn is_conflict(err: &kube::Error) -> bool {
    status_code(err) == Some(409)
}

fn api(context: &str) -> impl FnOnce(kube::Error) -> BackendError + '_ {
    move |err| BackendError::engine_call(context, Described(err))
}

/// A kube error that reads as [`describe`] says, with the kube error as its cause.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
struct Described(#[source] kube::Error);

/// A kube error as one sentence (an API Status by its code and message).
fn owner_mismatch(object: &'static str, name: &str, session_id: &str) -> BackendError {
    BackendError::OwnerMismatch {
        object,
        name: name.to_owned(),
        session_id: session_id.to_owned(),
    }
}

fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => other.to_string(),
    }
}

impl KubernetesBackend {
    /// Connects to the API server and applies the namespace's NetworkPolicy; both failing stop
    /// the boot.
    pub async fn connect(config: KubernetesConfig) -> BackendResult<KubernetesBackend> {
        // kube's TLS uses rustls' process-wide provider; ours is ring (an error means one is
        // installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_config = client::client_config(&config.settings).await?;
        let own_namespace = client_config.default_namespace.clone();
        // The watch has its own idle timeout (kube's watcher); the per-call read timeout would
        // cut a quiet watch.
        let mut watch_config = client_config.clone();
        watch_config.read_timeout = None;
        let watch_client = kube::Client::try_from(watch_config)
            .map_err(|err| BackendError::engine_call("cannot build the Kubernetes client", err))?;
        let client = kube::Client::try_from(client_config)
            .map_err(|err| BackendError::engine_call("cannot build the Kubernetes client", err))?;
        let settings = &config.settings;
        let namespace = settings.namespace.clone();
        let manifests = ManifestConfig {
            namespace: namespace.clone(),
            image: config.image,
            runtime_class: settings.runtime_class.clone(),
            egress_proxy: config.egress_proxy,
            no_proxy: config.no_proxy,
            workspace_bytes: settings.workspace_bytes,
            storage_class: settings.storage_class.clone(),
            cpu_request_millis: settings.cpu_request_millis,
            memory_request_bytes: settings.memory_request_bytes,
            runnerd_port: settings.runnerd_port,
            read_only_rootfs: config.hardening.read_only_rootfs,
            no_new_privileges: config.hardening.no_new_privileges,
            drop_all_capabilities: config.hardening.drop_all_capabilities,
            spawner_selector: settings.spawner_selector.clone(),
            spawner_namespace: settings.spawner_namespace.clone().unwrap_or(own_namespace),
        };
        let backend = KubernetesBackend {
            pods: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client.clone(), &namespace),
            pvcs: Api::namespaced(client.clone(), &namespace),
            client,
            manifests,
            placements: settings.placement.clone(),
            network: settings.network.clone(),
            cache: watch::start(
                Api::namespaced(watch_client, &namespace),
                &namespace,
                settings.list_page_size,
            ),
            list_page_size: settings.list_page_size,
            heal_settings: settings.heal,
        };
        if !backend.network.managed {
            tracing::warn!(
                namespace = %backend.manifests.namespace,
                "SANDBOX_K8S_NETWORK_POLICY=unmanaged: the session NetworkPolicy is left to the operator; sessions are only as isolated as the policy in place"
            );
            return Ok(backend);
        }
        backend.apply_network_policy().await?;
        tracing::info!(
            namespace = %backend.manifests.namespace,
            spawner_namespace = %backend.manifests.spawner_namespace,
            "kubernetes backend ready; session NetworkPolicy applied"
        );
        Ok(backend)
    }

    /// Creates the NetworkPolicy, or replaces the one there (at its current resourceVersion).
    async fn apply_network_policy(&self) -> BackendResult<()> {
        let policies: Api<NetworkPolicy> =
            Api::namespaced(self.client.clone(), &self.manifests.namespace);
        let mut policy = network::session_network_policy(&self.manifests, &self.network);
        let fail = |err: kube::Error| {
            let hint = match &err {
                kube::Error::Api(_) => {
                    "check that the namespace exists and the spawner's Role allows networkpolicies get/create/update"
                }
                _ => "check that the API server is reachable (in-cluster, kubeconfig or SANDBOX_K8S_SERVER)",
            };
            BackendError::Engine(format!(
                "cannot apply the NetworkPolicy {} in namespace {}: {}; {hint}",
                manifests::NETWORK_POLICY_NAME,
                self.manifests.namespace,
                describe(&err)
            ))
        };
        match policies.create(&PostParams::default(), &policy).await {
            Ok(_) => return Ok(()),
            Err(err) if is_conflict(&err) => {}
            Err(err) => return Err(fail(err)),
        }
        // Replicas booting together replace it at once: a 409 (another replaced it since our
        // read) means read again and retry.
        let mut attempt = 1;
        loop {
            let current = policies
                .get(manifests::NETWORK_POLICY_NAME)
                .await
                .map_err(fail)?;
            policy.metadata.resource_version = current.metadata.resource_version;
            match policies
                .replace(
                    manifests::NETWORK_POLICY_NAME,
                    &PostParams::default(),
                    &policy,
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) if is_conflict(&err) && attempt < NETWORK_POLICY_APPLY_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(fail(err)),
            }
        }
    }

    fn validate(spec: &SessionSpec) -> BackendResult<()> {
        if !is_valid_id(&spec.session_id) {
            return Err(BackendError::Invalid {
                what: "session id",
                value: spec.session_id.clone(),
            });
        }
        let org = &spec.organization_id;
        let org_ok = !org.is_empty()
            && org.len() <= 128
            && org
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !org_ok {
            return Err(BackendError::Invalid {
                what: "organization id",
                value: org.clone(),
            });
        }
        let (uid, gid) = spec.resources.exec_user;
        if uid == 0 || gid == 0 {
            // runAsNonRoot would refuse the container: say so before anything is created.
            return Err(BackendError::Invalid {
                what: "session user for kubernetes (sessions run as non-root; set SANDBOX_AGENT_USER to a non-zero uid:gid)",
                value: format!("{uid}:{gid}"),
            });
        }
        Ok(())
    }

    /// Deletes the session's Pod named `base` (grace [`manifests::STOP_GRACE_SECONDS`]) and its
    /// Secret (only when it is this session's); both are attempted, 404 counts as done, the first
    /// other error is returned. Returns whether the Pod existed. The caller has checked the Pod.
    async fn delete_compute(&self, session_id: &str, base: &str) -> BackendResult<bool> {
        let pod = self
            .pods
            .delete(
                base,
                &DeleteParams::default().grace_period(manifests::STOP_GRACE_SECONDS),
            )
            .await;
        // Another session's Secret under a shared legacy name is never deleted.
        let secret = if self.secret_is_ours_or_absent(session_id, base).await? {
            Some(
                self.secrets
                    .delete(&manifests::secret_name_for(base), &DeleteParams::default())
                    .await,
            )
        } else {
            None
        };
        let existed = match pod {
            Ok(_) => true,
            Err(err) if is_not_found(&err) => false,
            Err(err) => return Err(api("cannot delete the session Pod")(err)),
        };
        match secret {
            Some(Ok(_)) | None => {}
            Some(Err(err)) if is_not_found(&err) => {}
            Some(Err(err)) => return Err(api("cannot delete the session Secret")(err)),
        }
        Ok(existed)
    }

    /// Reaps the session's ended or deleting Pod `name` (and its Secret) and waits until it is gone.
    /// Only that incarnation goes: the Pod under its uid, the Secret only when it predates the Pod
    /// (a newer one is a concurrent create's, made after this Pod ended), and the wait ends when
    /// the name is free or holds another Pod.
    async fn reap(
        &self,
        session_id: &str,
        name: &str,
        ended: &Pod,
        deadline: Instant,
    ) -> BackendResult<()> {
        tracing::info!(session_id, pod = %name, "removing the session's ended Pod before creating it again");
        let uid = ended.metadata.uid.clone();
        let params = uid_precondition(uid.clone()).grace_period(manifests::STOP_GRACE_SECONDS);
        gone_is_done(self.pods.delete(name, &params).await)
            .map_err(api("cannot delete the session Pod"))?;
        self.reap_secret(session_id, name, ended).await?;
        let still_terminating = || {
            BackendError::Engine(format!(
                "the ended Pod {name} of session {session_id} is still terminating; retry the create later"
            ))
        };
        match self
            .wait_gone_on_watch(name, uid.as_deref(), deadline)
            .await
        {
            Some(true) => return Ok(()),
            Some(false) => return Err(still_terminating()),
            None => {} // the watch is stale: poll
        }
        let uid = &uid;
        poll_with_backoff(deadline, || async move {
            match self.pods.get_opt(name).await {
                Ok(pod) => Ok(pod.is_none_or(|pod| pod.metadata.uid != *uid).then_some(())),
                Err(err) => Err(api("cannot read the ended session Pod")(err)),
            }
        })
        .await?
        .ok_or_else(still_terminating)
    }

    /// Deletes the session's compute: its own Pod, or only an orphan Secret of its current name
    /// when it has no Pod. Another session's Pod under a shared legacy name is left alone.
    async fn stop(&self, session_id: &str) -> BackendResult<bool> {
        let existed = match self.find_pod(session_id, None).await? {
            Found::Ours { name, .. } => self.delete_compute(session_id, &name).await?,
            Found::Absent => {
                self.delete_compute(session_id, &manifests::pod_name(session_id))
                    .await?
            }
            Found::Foreign { .. } => false,
        };
        // Compute gone: its cap slots free up (the pin stays on the kept PVC).
        self.release_session_claims(session_id).await?;
        Ok(existed)
    }

    async fn destroy(&self, session_id: &str) -> BackendResult<bool> {
        let had_pod = self.stop(session_id).await?;
        let had_pvc = match self.find_pvc(session_id, None).await? {
            Found::Ours { name, .. } => {
                match self.pvcs.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => true,
                    Err(err) if is_not_found(&err) => false,
                    Err(err) => return Err(api("cannot delete the workspace PVC")(err)),
                }
            }
            Found::Absent | Found::Foreign { .. } => false,
        };
        tracing::info!(session_id, had_pod, had_pvc, "kubernetes session destroyed");
        Ok(had_pod || had_pvc)
    }
}

impl Backend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    fn create_session<'a>(
        &'a self,
        spec: &'a SessionSpec,
        deadline: Duration,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(self.create(spec, deadline))
    }

    fn resolve_endpoint<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            let pod = self
                .read_pod(session_id)
                .await?
                .ok_or_else(|| BackendError::Engine(format!("session {session_id} has no Pod")))?;
            let ip = status::pod_ip(&pod).ok_or_else(|| {
                BackendError::Engine(format!("the Pod of session {session_id} has no IP"))
            })?;
            Ok(status::runnerd_url(ip, self.manifests.runnerd_port))
        })
    }

    fn session_exists<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            Ok(self
                .read_pod(session_id)
                .await?
                .is_some_and(|pod| status::is_running(&pod)))
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            // Recorded first: a Pod deleted on purpose is never healed.
            if let Found::Ours { name, .. } = self.find_pvc(session_id, None).await? {
                self.record_compute(&name, manifests::COMPUTE_STOPPED, None)
                    .await?;
            }
            let existed = self.stop(session_id).await?;
            tracing::info!(
                session_id,
                existed,
                "kubernetes session stopped; workspace PVC kept"
            );
            Ok(existed)
        })
    }

    fn destroy_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(self.destroy(session_id))
    }

    fn heal_session<'a>(
        &'a self,
        session_id: &'a str,
        spec_for: &'a (dyn Fn(&ListedSession) -> SessionSpec + Send + Sync),
        deadline: Duration,
    ) -> BoxFuture<'a, BackendResult<Option<Healed>>> {
        Box::pin(self.heal(session_id, spec_for, deadline))
    }

    fn list_sessions<'a>(
        &'a self,
        organization_id: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<ListedSession>>> {
        Box::pin(self.sessions(organization_id))
    }

    fn arbitrates_caps(&self) -> bool {
        true
    }

    fn claim_capacity<'a>(
        &'a self,
        request: &'a CapRequest<'a>,
    ) -> BoxFuture<'a, BackendResult<CapDecision>> {
        Box::pin(self.claim_slots(request))
    }

    fn adopt_claim<'a>(
        &'a self,
        request: &'a CapRequest<'a>,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(self.adopt_slots(request))
    }

    fn release_claim<'a>(&'a self, claim: &'a CapClaim) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.release_claims(claim))
    }

    fn pinned_sessions(
        &self,
    ) -> BoxFuture<'_, BackendResult<Option<std::collections::HashSet<String>>>> {
        Box::pin(async move { self.pinned_session_ids().await.map(Some) })
    }

    fn claimed_sessions(
        &self,
    ) -> BoxFuture<'_, BackendResult<Option<std::collections::HashSet<String>>>> {
        Box::pin(async move { self.claimed_session_ids().await.map(Some) })
    }

    fn persists_pins(&self) -> bool {
        true
    }

    fn set_pinned<'a>(
        &'a self,
        session_id: &'a str,
        pinned: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.set_pin(session_id, pinned))
    }

    fn is_pinned<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(self.read_pin(session_id))
    }

    fn reachability<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<
        'a,
        std::collections::HashMap<String, crate::shared::protocol::spawner::Reachability>,
    > {
        Box::pin(self.reachability_of(ids))
    }

    fn lost_pinned_sessions(&self) -> BoxFuture<'_, BackendResult<Vec<String>>> {
        Box::pin(self.lost_pinned())
    }

    fn creator_records_seed<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            Ok(match self.read_pod(session_id).await? {
                Some(pod) => pod
                    .metadata
                    .annotations
                    .is_some_and(|a| a.contains_key(manifests::ANNOTATION_SEED_RECORD)),
                // Nothing to judge by: as for any session of this release.
                None => true,
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, BackendResult<serde_json::Value>> {
        Box::pin(async move {
            let version = self
                .client
                .apiserver_version()
                .await
                .map_err(api("the Kubernetes API server does not answer"))?;
            Ok(serde_json::json!({
                "kubernetes": version.git_version,
                "namespace": self.manifests.namespace,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API Status reads as one sentence after the call's context, and the kube error stays
    /// reachable as the cause of that sentence.
    #[test]
    fn api_errors_read_as_a_sentence_and_keep_the_kube_error() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": 403, "reason": "Forbidden", "message": "pods is forbidden"
        }))
        .unwrap();
        let error = api("cannot create the session Pod")(kube::Error::Api(Box::new(status)));
        assert_eq!(
            error.to_string(),
            "cannot create the session Pod: the API server answered 403 Forbidden: pods is forbidden"
        );
        let described = std::error::Error::source(&error).expect("a cause");
        let kube_error = described
            .source()
            .expect("the kube error under the sentence");
        assert!(matches!(
            kube_error.downcast_ref::<kube::Error>(),
            Some(kube::Error::Api(s)) if s.code == 403
        ));
    }
}

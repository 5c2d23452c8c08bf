//! The `docker` backend (bollard over the engine's unix socket): one container per session, named
//! `tale-sbx-ses-<id>` (or `tale-sbx-hash-<digest>`, see `backend::names`), running the image's
//! `tale runnerd` as PID 1. Every object found under a session's name is label-checked before use
//! (`ownership`).
//!
//! Hardening (each knob in [`DockerConfig`]): read-only root filesystem, `cap-drop ALL` plus only
//! what runnerd needs to run execs as the unprivileged exec user (CHOWN, DAC_OVERRIDE, FOWNER to
//! manage the workspace; SETUID, SETGID to drop to the exec user; KILL to signal its processes —
//! execs themselves hold no capability), `no-new-privileges`, tmpfs `/tmp`, pids/memory/cpu/ulimit
//! limits, an internal network (created if missing) whose only way out is the egress proxy.
//! The workspace is a per-session volume (`<container>-ws`); caches are per-organization volumes
//! (`<prefix>-<org>` at `/cache/{npm,pip,bun}`, mode 1777 set by runnerd at boot). Labels carry
//! the session's identity and limits: they are the truth the spawner re-adopts from. The runnerd
//! token never enters the container: runnerd gets its SHA-256 and compares presented tokens by digest, so
//! `docker inspect` (or root inside the session) shows only a value that authenticates nothing.
mod container_body;
mod containers;
mod isolation;
mod volumes;

use super::docker_quota::{DiskQuotaConfig, DiskQuotas};
use super::names::Found;
use super::{
    wait_for_runnerd, Backend, BackendError, BackendKind, BackendResult, BoxFuture, CapClaim,
    CapDecision, CapRequest, ListedSession, SessionSpec,
};
use crate::shared::protocol::runnerd as runnerd_protocol;
use crate::shared::protocol::runnerd::{is_valid_id, DEFAULT_PORT};
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use ownership::mismatch;
use std::collections::HashMap;
use std::time::Duration;

mod ownership;

/// Label marking session containers (and, with the other labels, the adoption filter).
pub const SESSION_LABEL: &str = "tale.sandbox-session";
/// Where the workspace volume is mounted in the container.
pub const WORKSPACE_PATH: &str = "/workspace";
/// Where runnerd keeps its own state in a session container (an anonymous volume; see `create`).
pub const RUNNERD_STATE_PATH: &str = "/run/tale";
/// Label naming the deployment (stack) that created an object: set on session containers,
/// workspace and cache volumes and the network the backend creates when `SANDBOX_STACK_LABEL`
/// is configured, so tooling can remove exactly one stack's objects from a shared engine.
pub const STACK_LABEL: &str = "tale.stack";
/// Label on session containers of releases that record the seed in runnerd (`PUT /seed`); a
/// container without it was made by a previous release (see `Backend::creator_records_seed`).
pub const SEED_RECORD_LABEL: &str = "tale.seed-record";
/// Label set on volumes at creation, to tell "created now" from "existed already".
pub const VOLUME_NONCE_LABEL: &str = "tale.create-nonce";
/// Starts retried after the engine found the sandbox network name ambiguous (a duplicate another
/// replica is removing).
pub const AMBIGUOUS_NETWORK_RETRIES: u32 = 5;
/// Time allowed for one engine call.
pub const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Docker backend settings.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// Engine socket path.
    pub socket: String,
    /// Session image (its entrypoint runs `tale runnerd`).
    pub image: String,
    /// Internal network the sessions join (created if missing).
    pub network: String,
    /// OCI runtime (`runc`, `runsc`, …); `None` for the engine's default.
    pub runtime: Option<String>,
    /// `HTTP_PROXY`/`HTTPS_PROXY` for sessions; `None` for none.
    pub egress_proxy: Option<String>,
    /// `NO_PROXY` for sessions.
    pub no_proxy: String,
    /// Per-organization cache volume prefixes for `/cache/pip`, `/cache/npm`, `/cache/bun`.
    pub cache_volume_prefixes: Option<[String; 3]>,
    /// The value of [`STACK_LABEL`] on every object this backend creates; with it, only session
    /// containers carrying it are listed and adopted. `None`: no stack label.
    pub stack_label: Option<String>,
    pub read_only_rootfs: bool,
    pub no_new_privileges: bool,
    pub drop_all_capabilities: bool,
    /// Networks spawners reach runnerd from (each runnerd's allowlist; see [`isolation`]); empty:
    /// this process's own address on the sandbox network.
    pub control_sources: Vec<crate::shared::cidr::Cidr>,
    /// Size-limited workspace and cache volumes (see `docker_quota`); `None`: plain volumes.
    pub disk_quota: Option<DiskQuotaConfig>,
}

/// Sessions as Docker containers.
pub struct DockerBackend {
    docker: Docker,
    config: DockerConfig,
    /// The id of the sandbox network every replica agreed on (see [`super::docker_shared`]);
    /// sessions join it by id, so a duplicate name left by anything else cannot make it ambiguous.
    network_id: tokio::sync::OnceCell<String>,
    /// The sandbox network's subnets and the control sources, learned once.
    network_plan: tokio::sync::OnceCell<isolation::NetworkPlan>,
    quotas: Option<DiskQuotas>,
}

fn engine(context: &str) -> impl FnOnce(DockerError) -> BackendError + '_ {
    move |err| BackendError::engine_call(context, err)
}

fn is_not_found(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_conflict(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// The name a session's container is created under (`backend::names`, injective over valid ids).
pub fn container_name(session_id: &str) -> String {
    super::names::session_base_name(session_id, super::names::NameRules::Docker)
}

/// The name a session's workspace volume is created under.
pub fn workspace_volume(session_id: &str) -> String {
    format!(
        "{}{}",
        container_name(session_id),
        ownership::WORKSPACE_VOLUME_SUFFIX
    )
}

pub fn label_value_ok(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl DockerBackend {
    pub fn new(config: DockerConfig) -> BackendResult<DockerBackend> {
        let docker = Docker::connect_with_unix(
            &config.socket,
            DOCKER_CALL_TIMEOUT.as_secs(),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(engine("cannot use the Docker socket"))?;
        let quotas = config.disk_quota.clone().map(|quota| {
            DiskQuotas::new(
                docker.clone(),
                quota,
                &config.network,
                config.stack_label.as_deref(),
            )
        });
        Ok(DockerBackend {
            docker,
            config,
            network_id: tokio::sync::OnceCell::new(),
            network_plan: tokio::sync::OnceCell::new(),
            quotas,
        })
    }

    fn shared(&self) -> super::docker_shared::Shared<'_> {
        super::docker_shared::Shared {
            docker: &self.docker,
            network: &self.config.network,
            image: &self.config.image,
            stack_label: self.config.stack_label.as_deref(),
        }
    }

    async fn ensure_network(&self) -> BackendResult<String> {
        self.network_id
            .get_or_try_init(|| async { self.shared().converge_network().await })
            .await
            .cloned()
    }
}

impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn create_session<'a>(
        &'a self,
        spec: &'a SessionSpec,
        deadline: Duration,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            if !is_valid_id(&spec.session_id) {
                return Err(BackendError::Invalid {
                    what: "session id",
                    value: spec.session_id.clone(),
                });
            }
            if !label_value_ok(&spec.organization_id) {
                return Err(BackendError::Invalid {
                    what: "organization id",
                    value: spec.organization_id.clone(),
                });
            }
            let network_id = self.ensure_network().await?;
            let (volume, preexisting) = self.claim_workspace_volume(spec).await?;
            if let Some(prefixes) = &self.config.cache_volume_prefixes {
                for prefix in prefixes {
                    let labels = HashMap::from([
                        ("tale.sandbox-cache".to_string(), "1".to_string()),
                        ("tale.org".to_string(), spec.organization_id.clone()),
                    ]);
                    let bytes = self
                        .quotas
                        .as_ref()
                        .map_or(0, |q| q.config().org_cache_bytes);
                    self.ensure_sized_volume(
                        &self.cache_volume(prefix, &spec.organization_id),
                        bytes,
                        labels,
                    )
                    .await?;
                }
            }
            match self.try_create(spec, &volume, &network_id, deadline).await {
                Ok(url) => {
                    tracing::info!(session_id = %spec.session_id, %url, %volume, resumed = preexisting, "docker session ready");
                    Ok(url)
                }
                // Not ours to clean up: another create's (or another session's) objects.
                Err(
                    err @ (BackendError::Exists(_)
                    | BackendError::OwnerMismatch { .. }
                    | BackendError::CreateInProgress { .. }),
                ) => Err(err),
                Err(err) => {
                    let name = container_name(&spec.session_id);
                    if let Err(cleanup) = self.remove_container(&name).await {
                        tracing::warn!(%cleanup, "cleanup after a failed create could not remove the container");
                    }
                    if !preexisting {
                        if let Err(cleanup) = self.remove_sized_volume(&volume).await {
                            tracing::warn!(%cleanup, "cleanup after a failed create could not remove the workspace volume");
                        }
                    }
                    Err(err)
                }
            }
        })
    }

    fn resolve_endpoint<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(self.endpoint(session_id))
    }

    fn session_exists<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            match self.find_container(session_id, None).await? {
                Found::Ours { object, .. } => {
                    Ok(object.state.and_then(|s| s.running).unwrap_or(false))
                }
                Found::Absent | Found::Foreign { .. } => Ok(false),
            }
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            let existed = match self.find_container(session_id, None).await? {
                Found::Ours { name, .. } => self.remove_container(&name).await?,
                Found::Absent | Found::Foreign { .. } => false,
            };
            self.shared().release_session(session_id).await?;
            tracing::info!(
                session_id,
                existed,
                "docker session stopped; workspace volume kept"
            );
            Ok(existed)
        })
    }

    fn destroy_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            // Only this session's own objects go: another session's under a shared legacy name stay.
            let had_container = match self.find_container(session_id, None).await? {
                Found::Ours { name, .. } => self.remove_container(&name).await?,
                Found::Absent | Found::Foreign { .. } => false,
            };
            self.shared().release_session(session_id).await?;
            self.shared().set_pinned(session_id, false).await?;
            let had_volume = match self.find_workspace_volume(session_id, None).await? {
                Found::Ours { name, .. } => self.remove_sized_volume(&name).await?,
                Found::Absent | Found::Foreign { .. } => false,
            };
            tracing::info!(
                session_id,
                had_container,
                had_volume,
                "docker session destroyed"
            );
            Ok(had_container || had_volume)
        })
    }

    fn list_sessions<'a>(
        &'a self,
        organization_id: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<ListedSession>>> {
        Box::pin(async move {
            let mut labels = vec![format!("{SESSION_LABEL}=1")];
            if let Some(stack) = &self.config.stack_label {
                labels.push(format!("{STACK_LABEL}={stack}"));
            }
            if let Some(org) = organization_id {
                labels.push(format!("tale.org={org}"));
            }
            let filters = HashMap::from([("label", labels)]);
            let options = ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build();
            let containers = self
                .docker
                .list_containers(Some(options))
                .await
                .map_err(engine("cannot list session containers"))?;
            let number = |labels: &HashMap<String, String>, key: &str| {
                labels
                    .get(key)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Ok(containers
                .into_iter()
                // One engine may host several deployments: ours are on our network.
                .filter(|c| super::docker_shared::on_network(c, &self.config.network))
                .filter_map(|c| {
                    let labels = c.labels?;
                    Some(ListedSession {
                        session_id: labels.get("tale.session")?.clone(),
                        organization_id: labels.get("tale.org").cloned().unwrap_or_default(),
                        profile: match labels.get("tale.profile").map(String::as_str) {
                            Some("agent") => "agent".into(),
                            _ => "default".into(),
                        },
                        created_at_ms: number(&labels, "tale.created"),
                        ttl_ms: number(&labels, "tale.ttl-ms"),
                        idle_timeout_ms: number(&labels, "tale.idle-ms"),
                        running: matches!(
                            c.state,
                            Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                        ),
                    })
                })
                .collect())
        })
    }

    fn arbitrates_caps(&self) -> bool {
        true
    }

    fn claim_capacity<'a>(
        &'a self,
        request: &'a CapRequest<'a>,
    ) -> BoxFuture<'a, BackendResult<CapDecision>> {
        Box::pin(async move {
            if !label_value_ok(request.organization_id) {
                return Err(BackendError::Invalid {
                    what: "organization id",
                    value: request.organization_id.to_owned(),
                });
            }
            self.shared().claim_for_create(request).await
        })
    }

    fn adopt_claim<'a>(
        &'a self,
        request: &'a CapRequest<'a>,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move { self.shared().adopt(request).await })
    }

    fn release_claim<'a>(&'a self, claim: &'a CapClaim) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.shared().release(claim).await })
    }

    fn claimed_sessions(
        &self,
    ) -> BoxFuture<'_, BackendResult<Option<std::collections::HashSet<String>>>> {
        Box::pin(async move { self.shared().claimed_sessions().await.map(Some) })
    }

    fn persists_pins(&self) -> bool {
        true
    }

    fn set_pinned<'a>(
        &'a self,
        session_id: &'a str,
        pinned: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.shared().set_pinned(session_id, pinned).await })
    }

    fn is_pinned<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move { self.shared().is_pinned(session_id).await })
    }

    fn creator_records_seed<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            Ok(match self.find_container(session_id, None).await? {
                Found::Ours { object, .. } => object
                    .config
                    .and_then(|c| c.labels)
                    .is_some_and(|labels| labels.contains_key(SEED_RECORD_LABEL)),
                // Nothing to judge by: as for any session of this release.
                Found::Absent | Found::Foreign { .. } => true,
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, BackendResult<serde_json::Value>> {
        Box::pin(async move {
            let version = self
                .docker
                .version()
                .await
                .map_err(engine("the Docker engine does not answer"))?;
            Ok(serde_json::json!({"dockerServerVersion": version.version}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain names when they fit a DNS label (as before), hashed in their own namespace otherwise;
    /// the legacy name is still looked under.
    #[test]
    fn container_names() {
        assert_eq!(container_name("abc"), "tale-sbx-ses-abc");
        let long = "x".repeat(64);
        let name = container_name(&long);
        assert_eq!(
            name.len(),
            super::super::names::HASHED_PREFIX.len() + super::super::names::HASHED_NAME_HEX_DIGITS
        );
        assert!(name.starts_with("tale-sbx-hash-"));
        assert_eq!(workspace_volume("abc"), "tale-sbx-ses-abc-ws");
        assert_eq!(ownership::volume_names("abc"), vec!["tale-sbx-ses-abc-ws"]);
        let legacy = ownership::container_names(&long);
        assert_eq!(legacy.len(), 2);
        assert_eq!(legacy[1].len(), "tale-sbx-ses-".len() + 16);
    }

    /// With runnerd TLS on, the container's environment hands runnerd its certificate and key;
    /// without it, neither is there.
    #[test]
    fn runnerd_tls_reaches_the_container_env() {
        // bollard wants the socket path to exist; nothing connects to it here.
        let socket = std::env::temp_dir().join(format!("tale-tls-docker-{}", std::process::id()));
        std::fs::write(&socket, b"").unwrap();
        let backend = DockerBackend::new(DockerConfig {
            socket: socket.display().to_string(),
            image: "img".into(),
            network: "net".into(),
            runtime: None,
            egress_proxy: None,
            no_proxy: String::new(),
            cache_volume_prefixes: None,
            read_only_rootfs: true,
            no_new_privileges: true,
            drop_all_capabilities: true,
            control_sources: Vec::new(),
            stack_label: None,
            disk_quota: None,
        })
        .unwrap();
        let mut spec = crate::modes::spawner::backend::kubernetes::manifests::fixtures::spec();
        let tls = spec.runnerd_tls.clone().unwrap();
        let env = backend.container_body(&spec, "vol", "net").env.unwrap();
        assert!(env.contains(&format!("TALE_RUNNERD_TLS_CERT={}", tls.cert_pem())));
        assert!(env.contains(&format!("TALE_RUNNERD_TLS_KEY={}", tls.key_pem())));
        spec.runnerd_tls = None;
        let env = backend.container_body(&spec, "vol", "net").env.unwrap();
        assert!(!env.iter().any(|e| e.starts_with("TALE_RUNNERD_TLS")));
        let _ = std::fs::remove_file(&socket);
    }
}

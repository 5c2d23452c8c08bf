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
mod isolation;

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
        let quotas = config
            .disk_quota
            .clone()
            .map(|quota| DiskQuotas::new(docker.clone(), quota));
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

    /// Creates `name` if missing; returns whether it existed before, and its labels as they are.
    /// One engine call: creating an existing volume returns it unchanged, so a fresh nonce label
    /// tells the two cases apart.
    async fn ensure_volume(
        &self,
        name: &str,
        mut labels: HashMap<String, String>,
    ) -> BackendResult<(bool, HashMap<String, String>)> {
        let nonce = crate::shared::hex::random::<8>();
        labels.insert(VOLUME_NONCE_LABEL.into(), nonce.clone());
        labels = self.with_stack(labels);
        let volume = self
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(engine("cannot create a volume"))?;
        let existed = volume.labels.get(VOLUME_NONCE_LABEL) != Some(&nonce);
        self.refuse_other_stack(name, &volume.labels)?;
        Ok((existed, volume.labels))
    }

    /// A volume of the same name made by another stack on this engine is never used.
    fn refuse_other_stack(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> BackendResult<()> {
        if let (Some(ours), Some(theirs)) = (&self.config.stack_label, labels.get(STACK_LABEL)) {
            if ours != theirs {
                return Err(BackendError::Invalid {
                    what: "volume (it belongs to another stack)",
                    value: format!("{name} ({STACK_LABEL}={theirs})"),
                });
            }
        }
        Ok(())
    }

    /// An organization's cache volume: `<prefix>-<org>`, or `<prefix>-<stack>-<org>` with a stack
    /// label, so two stacks on one engine never share (or remove) each other's caches.
    fn cache_volume(&self, prefix: &str, org: &str) -> String {
        match &self.config.stack_label {
            Some(stack) => format!("{prefix}-{stack}-{org}"),
            None => format!("{prefix}-{org}"),
        }
    }

    /// `labels` plus the stack label, when one is configured.
    fn with_stack(&self, mut labels: HashMap<String, String>) -> HashMap<String, String> {
        if let Some(stack) = &self.config.stack_label {
            labels.insert(STACK_LABEL.into(), stack.clone());
        }
        labels
    }

    /// [`Self::ensure_volume`], or a quota'd volume of `bytes` when disk quotas are on; whether it
    /// existed before, and its labels as they are now.
    async fn ensure_sized_volume(
        &self,
        name: &str,
        bytes: u64,
        labels: HashMap<String, String>,
    ) -> BackendResult<(bool, HashMap<String, String>)> {
        match &self.quotas {
            Some(quotas) => {
                let (existed, actual) = quotas
                    .ensure_volume(name, bytes, self.with_stack(labels))
                    .await?;
                self.refuse_other_stack(name, &actual)?;
                Ok((existed, actual))
            }
            None => self.ensure_volume(name, labels).await,
        }
    }

    /// Removes a volume (and its quota image and loop device); whether it existed.
    async fn remove_sized_volume(&self, name: &str) -> BackendResult<bool> {
        if let Some(quotas) = &self.quotas {
            return quotas.remove_volume(name).await;
        }
        match self
            .docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(engine("cannot remove the workspace volume")(err)),
        }
    }

    /// The session's workspace volume: its own under the current or the legacy name, else a new
    /// one under the current name. Returns the name and whether it existed before.
    async fn claim_workspace_volume(&self, spec: &SessionSpec) -> BackendResult<(String, bool)> {
        let id = &spec.session_id;
        let org = &spec.organization_id;
        let name = match self.find_workspace_volume(id, Some(org)).await? {
            Found::Ours { name, .. } => name,
            Found::Foreign { name } => return Err(mismatch("volume", &name, id)),
            Found::Absent => workspace_volume(id),
        };
        let labels = HashMap::from([
            ("tale.sandbox-workspace".to_string(), "1".to_string()),
            ("tale.session".to_string(), id.clone()),
            ("tale.org".to_string(), org.clone()),
        ]);
        let (preexisting, actual) = self
            .ensure_sized_volume(&name, spec.resources.disk_quota_bytes, labels)
            .await?;
        // The volume as it is now (a concurrent create may have made it first).
        Self::check_volume_labels(&name, id, org, &actual)?;
        Ok((name, preexisting))
    }

    fn container_body(
        &self,
        spec: &SessionSpec,
        volume: &str,
        network_id: &str,
    ) -> ContainerCreateBody {
        let r = &spec.resources;
        let labels = self.with_stack(HashMap::from([
            (SESSION_LABEL.to_string(), "1".to_string()),
            ("tale.session".into(), spec.session_id.clone()),
            ("tale.org".into(), spec.organization_id.clone()),
            ("tale.profile".into(), spec.profile.clone()),
            ("tale.created".into(), spec.created_at_ms.to_string()),
            ("tale.ttl-ms".into(), spec.ttl_ms.to_string()),
            ("tale.idle-ms".into(), spec.idle_timeout_ms.to_string()),
        ]));
        let mut env = vec![
            // Only the token's digest enters the container: runnerd compares digests, so neither
            // `docker inspect` nor root inside the session ever sees the token itself.
            format!(
                "{}={}",
                runnerd_protocol::TOKEN_SHA256_ENV,
                runnerd_protocol::token_digest_hex(spec.runnerd_token.as_bytes())
            ),
            format!("TALE_WORKSPACE_ROOT={WORKSPACE_PATH}"),
            format!("TALE_STATE_DIR={RUNNERD_STATE_PATH}"),
            format!("TALE_EXEC_USER={}:{}", r.exec_user.0, r.exec_user.1),
            "PIP_CACHE_DIR=/cache/pip".into(),
            "UV_CACHE_DIR=/cache/pip".into(),
            "NPM_CONFIG_CACHE=/cache/npm".into(),
            "BUN_INSTALL_CACHE_DIR=/cache/bun".into(),
        ];
        // runnerd (root) reads its TLS key at boot; execs never see it (see `runnerd_tls_env`).
        env.extend(
            super::runnerd_tls_env(spec)
                .into_iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        if let Some(proxy) = &self.config.egress_proxy {
            for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.push(format!("{name}={proxy}"));
            }
            env.push(format!("NO_PROXY={}", self.config.no_proxy));
            env.push(format!("no_proxy={}", self.config.no_proxy));
        }
        let mut mounts = vec![
            Mount {
                target: Some(WORKSPACE_PATH.into()),
                source: Some(volume.to_owned()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
            // runnerd's own state (journal spool, credential socket) on disk, root-owned, out of
            // the exec user's reach; the root filesystem is read-only and /tmp is a small tmpfs the
            // exec user can fill. Anonymous: removed with the container.
            Mount {
                target: Some(RUNNERD_STATE_PATH.into()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
        ];
        if let Some(prefixes) = &self.config.cache_volume_prefixes {
            env.push("TALE_SHARED_DIRS=/cache/pip:/cache/npm:/cache/bun".into());
            for (prefix, target) in prefixes
                .iter()
                .zip(["/cache/pip", "/cache/npm", "/cache/bun"])
            {
                mounts.push(Mount {
                    target: Some(target.into()),
                    source: Some(self.cache_volume(prefix, &spec.organization_id)),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                });
            }
        }
        let ulimit = |name: &str, soft: u64, hard: u64| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(soft as i64),
            hard: Some(hard as i64),
        };
        let host_config = HostConfig {
            network_mode: Some(network_id.to_owned()),
            runtime: self.config.runtime.clone(),
            cap_drop: self
                .config
                .drop_all_capabilities
                .then(|| vec!["ALL".into()]),
            cap_add: self.config.drop_all_capabilities.then(|| {
                [
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FOWNER",
                    "KILL",
                    "SETUID",
                    "SETGID",
                ]
                .map(String::from)
                .to_vec()
            }),
            security_opt: self
                .config
                .no_new_privileges
                .then(|| vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(self.config.read_only_rootfs),
            tmpfs: Some(HashMap::from([(
                "/tmp".into(),
                format!("rw,exec,nosuid,nodev,size={}", r.tmp_bytes),
            )])),
            shm_size: Some(r.shm_bytes as i64),
            memory: Some(r.memory_bytes as i64),
            memory_swap: Some(r.memory_bytes as i64),
            nano_cpus: Some((r.cpus * 1e9) as i64),
            pids_limit: Some(r.pids_limit),
            ulimits: Some(vec![
                ulimit("nofile", r.nofile.0, r.nofile.1),
                ulimit("fsize", r.fsize_bytes, r.fsize_bytes),
                ulimit("core", 0, 0),
            ]),
            oom_score_adj: Some(500),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".into(), "10m".into()),
                    ("max-file".into(), "1".into()),
                ])),
            }),
            mounts: Some(mounts),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            // runnerd starts as root only to drop every exec to the exec user.
            user: Some("0:0".into()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Starts the container. The engine resolves the network by name at start, so a candidate
    /// network another replica made while agreeing (and is about to remove) can make it
    /// "ambiguous": then the duplicates are removed and the start retried.
    async fn start_container(&self, name: &str, network_id: &str) -> BackendResult<()> {
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
                    tokio::time::sleep(super::docker_shared::NETWORK_AGREEMENT_RETRY).await;
                }
                Err(err) => return Err(engine("cannot start the session container")(err)),
            }
        }
    }

    /// Whether the container holding a session's name is a dead earlier incarnation that a new
    /// create may replace: it ran and exited, or it was created and never started within a
    /// create budget (its creator crashed). A container another replica is creating or running
    /// right now is not: replacing it would delete the winner of a same-id race.
    async fn is_dead_incarnation(&self, name: &str, create_budget: Duration) -> bool {
        use bollard::models::ContainerStateStatusEnum as Status;
        let Ok(inspect) = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        else {
            return false;
        };
        let created_ms = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get("tale.created"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let age = crate::shared::clock::now_ms().saturating_sub(created_ms);
        match inspect.state.and_then(|s| s.status) {
            Some(Status::EXITED | Status::DEAD) => true,
            Some(Status::CREATED) => {
                age > (create_budget + super::docker_shared::CLAIM_RECLAIM_GRACE).as_millis() as u64
            }
            _ => false,
        }
    }

    /// Creates the container under the current name, replacing a dead earlier incarnation of this
    /// session's (current or legacy name) first; a live one is [`BackendError::Exists`] (the winner
    /// of a same-id race is never replaced), someone else's container in the way is refused.
    async fn create_container(
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
                Found::Ours { name, .. } => {
                    if !self.is_dead_incarnation(&name, deadline).await {
                        return Err(BackendError::Exists(id.clone()));
                    }
                    self.remove_container(&name).await?;
                }
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

    async fn remove_container(&self, name: &str) -> BackendResult<bool> {
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

    async fn endpoint(&self, session_id: &str) -> BackendResult<String> {
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
    async fn log_tail(&self, name: &str) -> String {
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

    async fn try_create(
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
                Err(err @ (BackendError::Exists(_) | BackendError::OwnerMismatch { .. })) => {
                    Err(err)
                }
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
                .filter(|c| {
                    c.network_settings
                        .as_ref()
                        .and_then(|n| n.networks.as_ref())
                        .is_some_and(|n| n.contains_key(&self.config.network))
                })
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
            self.shared().claim(request).await
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

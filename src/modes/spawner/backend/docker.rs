//! The `docker` backend (bollard over the engine's unix socket): one container per session, named
//! `tale-sbx-ses-<id>`, running the image's `tale runnerd` as PID 1.
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
use std::collections::HashMap;
use std::time::Duration;

/// Label marking session containers (and, with the other labels, the adoption filter).
pub const SESSION_LABEL: &str = "tale.sandbox-session";
/// Where the workspace volume is mounted in the container.
pub const WORKSPACE_PATH: &str = "/workspace";
/// Where runnerd keeps its own state in a session container (an anonymous volume; see `create`).
pub const RUNNERD_STATE_PATH: &str = "/run/tale";
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
    pub read_only_rootfs: bool,
    pub no_new_privileges: bool,
    pub drop_all_capabilities: bool,
}

/// Sessions as Docker containers.
pub struct DockerBackend {
    docker: Docker,
    config: DockerConfig,
    /// The id of the sandbox network every replica agreed on (see [`super::docker_shared`]);
    /// sessions join it by id, so a duplicate name left by anything else cannot make it ambiguous.
    network_id: tokio::sync::OnceCell<String>,
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

/// `tale-sbx-ses-<id>`, or with the first 16 hex of SHA-1(id) when that would not fit a DNS label.
pub fn container_name(session_id: &str) -> String {
    let plain = format!("tale-sbx-ses-{session_id}");
    if plain.len() <= 63 {
        return plain;
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        session_id.as_bytes(),
    );
    let hex = crate::shared::hex::encode(digest.as_ref());
    format!("tale-sbx-ses-{}", &hex[..16])
}

fn workspace_volume(session_id: &str) -> String {
    format!("{}-ws", container_name(session_id))
}

fn label_value_ok(value: &str) -> bool {
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
        Ok(DockerBackend {
            docker,
            config,
            network_id: tokio::sync::OnceCell::new(),
        })
    }

    fn shared(&self) -> super::docker_shared::Shared<'_> {
        super::docker_shared::Shared {
            docker: &self.docker,
            network: &self.config.network,
            image: &self.config.image,
        }
    }

    async fn ensure_network(&self) -> BackendResult<String> {
        self.network_id
            .get_or_try_init(|| async { self.shared().converge_network().await })
            .await
            .cloned()
    }

    /// Creates `name` if missing; returns whether it existed before. One engine call: creating an
    /// existing volume returns it unchanged, so a fresh nonce label tells the two cases apart.
    async fn ensure_volume(
        &self,
        name: &str,
        mut labels: HashMap<String, String>,
    ) -> BackendResult<bool> {
        let nonce = crate::shared::hex::random::<8>();
        labels.insert(VOLUME_NONCE_LABEL.into(), nonce.clone());
        let volume = self
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(engine("cannot create a volume"))?;
        Ok(volume.labels.get(VOLUME_NONCE_LABEL) != Some(&nonce))
    }

    fn container_body(&self, spec: &SessionSpec, network_id: &str) -> ContainerCreateBody {
        let r = &spec.resources;
        let labels = HashMap::from([
            (SESSION_LABEL.to_string(), "1".to_string()),
            ("tale.session".into(), spec.session_id.clone()),
            ("tale.org".into(), spec.organization_id.clone()),
            ("tale.profile".into(), spec.profile.clone()),
            ("tale.created".into(), spec.created_at_ms.to_string()),
            ("tale.ttl-ms".into(), spec.ttl_ms.to_string()),
            ("tale.idle-ms".into(), spec.idle_timeout_ms.to_string()),
        ]);
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
                source: Some(workspace_volume(&spec.session_id)),
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
                    source: Some(format!("{prefix}-{}", spec.organization_id)),
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

    /// Creates the container, replacing a dead one of the same name once.
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

    async fn create_container(
        &self,
        spec: &SessionSpec,
        network_id: &str,
        deadline: Duration,
    ) -> BackendResult<()> {
        let name = container_name(&spec.session_id);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        for attempt in 0..2 {
            match self
                .docker
                .create_container(Some(options.clone()), self.container_body(spec, network_id))
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) if is_conflict(&err) && attempt == 0 => {
                    if !self.is_dead_incarnation(&name, deadline).await {
                        return Err(BackendError::Exists(spec.session_id.clone()));
                    }
                    self.remove_container(&name).await?;
                }
                Err(err) => return Err(engine("cannot create the session container")(err)),
            }
        }
        Err(BackendError::Exists(spec.session_id.clone()))
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
        let inspect = self
            .docker
            .inspect_container(&container_name(session_id), None::<InspectContainerOptions>)
            .await
            .map_err(engine("cannot inspect the session container"))?;
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
        network_id: &str,
        deadline: Duration,
    ) -> BackendResult<String> {
        let name = container_name(&spec.session_id);
        self.create_container(spec, network_id, deadline).await?;
        self.start_container(&name, network_id).await?;
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
            let volume_labels = HashMap::from([
                ("tale.sandbox-workspace".to_string(), "1".to_string()),
                ("tale.session".to_string(), spec.session_id.clone()),
            ]);
            let preexisting = self
                .ensure_volume(&workspace_volume(&spec.session_id), volume_labels)
                .await?;
            if let Some(prefixes) = &self.config.cache_volume_prefixes {
                for prefix in prefixes {
                    let labels = HashMap::from([
                        ("tale.sandbox-cache".to_string(), "1".to_string()),
                        ("tale.org".to_string(), spec.organization_id.clone()),
                    ]);
                    self.ensure_volume(&format!("{prefix}-{}", spec.organization_id), labels)
                        .await?;
                }
            }
            match self.try_create(spec, &network_id, deadline).await {
                Ok(url) => {
                    tracing::info!(session_id = %spec.session_id, %url, resumed = preexisting, "docker session ready");
                    Ok(url)
                }
                Err(BackendError::Exists(id)) => Err(BackendError::Exists(id)),
                Err(err) => {
                    let name = container_name(&spec.session_id);
                    if let Err(cleanup) = self.remove_container(&name).await {
                        tracing::warn!(%cleanup, "cleanup after a failed create could not remove the container");
                    }
                    if !preexisting {
                        if let Err(cleanup) = self
                            .docker
                            .remove_volume(
                                &workspace_volume(&spec.session_id),
                                None::<bollard::query_parameters::RemoveVolumeOptions>,
                            )
                            .await
                        {
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
            match self
                .docker
                .inspect_container(&container_name(session_id), None::<InspectContainerOptions>)
                .await
            {
                Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
                Err(err) if is_not_found(&err) => Ok(false),
                Err(err) => Err(engine("cannot inspect the session container")(err)),
            }
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            let existed = self.remove_container(&container_name(session_id)).await?;
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
            let had_container = self.remove_container(&container_name(session_id)).await?;
            self.shared().release_session(session_id).await?;
            self.shared().set_pinned(session_id, false).await?;
            let had_volume = match self
                .docker
                .remove_volume(
                    &workspace_volume(session_id),
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => true,
                Err(err) if is_not_found(&err) => false,
                Err(err) => return Err(engine("cannot remove the workspace volume")(err)),
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

    /// Names follow the original: plain when they fit a DNS label, hashed otherwise.
    #[test]
    fn container_names() {
        assert_eq!(container_name("abc"), "tale-sbx-ses-abc");
        let long = "x".repeat(64);
        let name = container_name(&long);
        assert_eq!(name.len(), "tale-sbx-ses-".len() + 16);
        assert!(name.starts_with("tale-sbx-ses-"));
        assert_eq!(workspace_volume("abc"), "tale-sbx-ses-abc-ws");
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
        })
        .unwrap();
        let mut spec = crate::modes::spawner::backend::kubernetes::manifests::fixtures::spec();
        let tls = spec.runnerd_tls.clone().unwrap();
        let env = backend.container_body(&spec, "net").env.unwrap();
        assert!(env.contains(&format!("TALE_RUNNERD_TLS_CERT={}", tls.cert_pem())));
        assert!(env.contains(&format!("TALE_RUNNERD_TLS_KEY={}", tls.key_pem())));
        spec.runnerd_tls = None;
        let env = backend.container_body(&spec, "net").env.unwrap();
        assert!(!env.iter().any(|e| e.starts_with("TALE_RUNNERD_TLS")));
        let _ = std::fs::remove_file(&socket);
    }
}

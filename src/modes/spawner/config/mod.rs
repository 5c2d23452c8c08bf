//! The spawner's configuration, read from the environment (names and defaults of the original,
//! spec config.md). Numbers: trimmed; empty or unset means the default; anything unparsable or out
//! of range stops the boot with an error naming the variable.
use super::backend::docker_quota::{DiskQuotaConfig, DEFAULT_DISK_QUOTA_DIR};
use super::backend::{BackendKind, SessionResources};
use super::edge::{self, EdgeLimits};
use crate::shared::cidr::Cidr;
use crate::shared::protocol::runnerd::{parse_uid_gid, DEFAULT_EXEC_USER};
use crate::shared::protocol::spawner::{Profile, RequestLimits};
use std::path::PathBuf;

mod kubernetes;
mod kubernetes_heal;
mod kubernetes_network;
mod kubernetes_placement;
mod tls;
use kubernetes::kubernetes_settings;
pub use kubernetes::{
    ignored_kubernetes_variables, is_dns_label, is_dns_subdomain, parse_cpu_millis, parse_k8s_size,
    parse_label_selector, KubernetesSettings, DEFAULT_K8S_CPU_REQUEST, DEFAULT_K8S_MEMORY_REQUEST,
    DEFAULT_K8S_NAMESPACE, DEFAULT_K8S_SPAWNER_SELECTOR, DEFAULT_K8S_WORKSPACE_SIZE,
    KUBERNETES_VARIABLES,
};
pub use kubernetes_heal::{
    HealSettings, DEFAULT_K8S_ATTACH_TIMEOUT_MS, DEFAULT_K8S_IMAGE_PULL_TIMEOUT_MS,
    DEFAULT_K8S_NODE_LOST_TIMEOUT_MS, HEAL_VARIABLES, MAX_K8S_HEAL_TIMEOUT_MS,
};
pub use kubernetes_network::{
    NetworkSettings, DEFAULT_K8S_DNS_NAMESPACE, DEFAULT_K8S_DNS_SELECTOR, DEFAULT_K8S_EGRESS_PORTS,
    MAX_K8S_EGRESS_PORTS, NETWORK_VARIABLES,
};
pub use kubernetes_placement::{
    PodPlacement, ProfilePlacements, DEFAULT_IMAGE_PULL_POLICY, MAX_IMAGE_PULL_SECRETS,
    MAX_TOLERATIONS, PLACEMENT_VARIABLES,
};
pub use tls::{TlsFiles, TlsSettings};

pub const DEFAULT_PORT: u16 = 8003;
pub const DEFAULT_RUNTIME_IMAGE: &str = "tale-sandbox-runtime:latest";
pub const DEFAULT_HOST_SESSION_ROOT: &str = "/var/lib/tale-sandbox/sessions";
pub const DEFAULT_EGRESS_NETWORK: &str = "tale-sandbox-net";
pub const DEFAULT_EGRESS_PROXY: &str = "http://sandbox-egress:3128";
pub const DEFAULT_NO_PROXY: &str = "127.0.0.1,localhost,sandbox-llm-gateway,llm-gateway";
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Root of the LLM gateway agent runs talk to when a request names none (the compose stack's
/// gateway service; it is in `DEFAULT_NO_PROXY`).
pub const DEFAULT_LLM_GATEWAY_URL: &str = "http://sandbox-llm-gateway:8080";
/// Workspace disk quota of the `default` profile (`SANDBOX_DISK_QUOTA_MB`), in MiB.
pub const DEFAULT_DISK_QUOTA_MB: u64 = 1024;
/// Workspace disk quota of the `agent` profile (`SANDBOX_AGENT_DISK_QUOTA_MB`), in MiB.
pub const DEFAULT_AGENT_DISK_QUOTA_MB: u64 = 4096;
/// Size of each per-organization cache volume (`SANDBOX_ORG_CACHE_QUOTA_MB`), in MiB.
pub const DEFAULT_ORG_CACHE_QUOTA_MB: u64 = 2048;
/// Kubernetes `ephemeral-storage` limit of the `default` profile (`SANDBOX_EPHEMERAL_STORAGE_MB`).
pub const DEFAULT_EPHEMERAL_STORAGE_MB: u64 = 512;
/// Kubernetes `ephemeral-storage` limit of the `agent` profile (`SANDBOX_AGENT_EPHEMERAL_STORAGE_MB`).
pub const DEFAULT_AGENT_EPHEMERAL_STORAGE_MB: u64 = 1024;
/// Largest disk quota accepted, in MiB (16 TiB).
pub const MAX_DISK_QUOTA_MB: u64 = 16 << 20;
pub use super::limits::{
    DEFAULT_CREATE_TIMEOUT_MS, DEFAULT_EXEC_MAX_TIMEOUT_MS, DEFAULT_EXEC_TIMEOUT_MS,
    DEFAULT_MAX_REQUEST_BODY_BYTES, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_ORG,
    DEFAULT_OUTPUT_MAX_BYTES, DEFAULT_SESSION_MAX_IDLE_MS, DEFAULT_SESSION_MAX_LIFETIME_MS,
    DEFAULT_SWEEP_INTERVAL_MS, RUNNERD_MAX_BODY_BYTES,
};

/// A configuration error, naming the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} must be a number, got {value:?}")]
    NotANumber { name: &'static str, value: String },
    #[error("{name}={value} is out of range: it must be between {min} and {max}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("{name} must be one of {allowed}, got {value:?}")]
    NotAllowed {
        name: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("SANDBOX_TOKEN is required: set it (the HMAC key of the API), or start with --insecure-dev for development")]
    MissingToken,
    #[error("{set} is set but {missing} is not: set both or neither")]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{name} must look like {shape}, got {value:?}")]
    BadShape {
        name: &'static str,
        value: String,
        shape: &'static str,
    },
}

/// Everything the spawner reads from the environment.
#[derive(Clone, Debug)]
pub struct SpawnerConfig {
    pub port: u16,
    pub backend: BackendKind,
    /// `None` only in insecure dev mode.
    pub token: Option<Vec<u8>>,
    pub runtime_image: String,
    pub runtime: Option<String>,
    pub host_session_root: PathBuf,
    pub egress_network: String,
    pub egress_proxy: Option<String>,
    pub no_proxy: String,
    pub docker_socket: String,
    /// Gateway root for agent runs whose request gives only a token.
    pub llm_gateway_url: String,
    pub cache_volume_prefixes: Option<[String; 3]>,
    /// `SANDBOX_STACK_LABEL`: the `tale.stack` label of every Docker object the spawner creates
    /// (and the filter of what it lists and adopts); unset for none.
    pub stack_label: Option<String>,
    /// Docker disk quotas (workspace and cache volumes as size-limited images); `None`: off.
    pub disk_quota: Option<DiskQuotaConfig>,
    pub stdout_max_bytes: u64,
    pub stderr_max_bytes: u64,
    pub max_request_body_bytes: u64,
    /// What a caller can make the spawner hold before it authenticates.
    pub edge: EdgeLimits,
    /// Networks the API is never served to (`SANDBOX_API_DENY_SOURCES`; see `edge::sources`).
    pub api_deny_sources: Vec<Cidr>,
    /// Docker backend: networks the spawner replicas reach runnerd from, written to each session's
    /// runnerd allowlist (`SANDBOX_DOCKER_CONTROL_SOURCES`; empty = this process's own address).
    pub docker_control_sources: Vec<Cidr>,
    pub max_sessions: u64,
    pub max_sessions_per_org: u64,
    pub limits: RequestLimits,
    pub create_timeout_ms: u64,
    pub sweep_interval_ms: u64,
    pub hardening: Hardening,
    pub agent: SessionResources,
    pub default_profile: SessionResources,
    pub kubernetes: KubernetesSettings,
    /// TLS of the API and of runnerd traffic.
    pub tls: TlsSettings,
}

/// Container hardening switches (all on by default).
#[derive(Clone, Copy, Debug)]
pub struct Hardening {
    pub read_only_rootfs: bool,
    pub no_new_privileges: bool,
    pub drop_all_capabilities: bool,
}

impl SpawnerConfig {
    /// The resources of a profile.
    pub fn resources(&self, profile: Profile) -> SessionResources {
        match profile {
            Profile::Agent => self.agent.clone(),
            Profile::Default => self.default_profile.clone(),
        }
    }

    /// Reads the configuration through `lookup` (normally `std::env::var`).
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        insecure_dev: bool,
    ) -> Result<SpawnerConfig, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                let Some(text) = get(name) else {
                    return Ok(default);
                };
                let value: f64 = text.parse().map_err(|_| ConfigError::NotANumber {
                    name,
                    value: text.clone(),
                })?;
                if !value.is_finite() {
                    return Err(ConfigError::NotANumber { name, value: text });
                }
                let value = value as u64;
                if value < min || value > max {
                    return Err(ConfigError::OutOfRange {
                        name,
                        value,
                        min,
                        max,
                    });
                }
                Ok(value)
            };
        let flag = |name: &'static str, default: bool| -> Result<bool, ConfigError> {
            match get(name).as_deref() {
                None => Ok(default),
                Some("1" | "true" | "yes") => Ok(true),
                Some("0" | "false" | "no") => Ok(false),
                Some(other) => Err(ConfigError::NotAllowed {
                    name,
                    value: other.into(),
                    allowed: "1/0/true/false",
                }),
            }
        };
        let backend = match get("SANDBOX_BACKEND").as_deref() {
            None | Some("docker") => BackendKind::Docker,
            Some("kubernetes") => BackendKind::Kubernetes,
            Some("local") => BackendKind::Local,
            Some(other) => {
                return Err(ConfigError::NotAllowed {
                    name: "SANDBOX_BACKEND",
                    value: other.into(),
                    allowed: "docker, kubernetes, local",
                })
            }
        };
        let token = match get("SANDBOX_TOKEN") {
            Some(token) => Some(token.into_bytes()),
            None if insecure_dev => None,
            None => return Err(ConfigError::MissingToken),
        };
        let size = |name: &'static str, default: &str| -> Result<u64, ConfigError> {
            let text = get(name).unwrap_or_else(|| default.to_owned());
            parse_size(&text).ok_or(ConfigError::BadShape {
                name,
                value: text,
                shape: "a size like 512m, 4g or 1048576",
            })
        };
        let networks = |name: &'static str| -> Result<Vec<Cidr>, ConfigError> {
            let text = get(name).unwrap_or_default();
            Cidr::parse_list(&text).map_err(|_| ConfigError::BadShape {
                name,
                value: text,
                shape: "comma-separated networks like 10.213.0.0/27,fd00::/64",
            })
        };
        let user = |name: &'static str, default: (u32, u32)| -> Result<(u32, u32), ConfigError> {
            let Some(text) = get(name) else {
                return Ok(default);
            };
            parse_uid_gid(&text).ok_or(ConfigError::BadShape {
                name,
                value: text,
                shape: "uid:gid",
            })
        };
        let max_body = number(
            "SANDBOX_MAX_REQUEST_BODY_BYTES",
            DEFAULT_MAX_REQUEST_BODY_BYTES,
            4096,
            u64::MAX,
        )?;
        let caches = flag("SANDBOX_CACHE_VOLUMES", true)?;
        let min_quota_mb = super::backend::docker_quota::MIN_DISK_QUOTA_BYTES >> 20;
        let mib = |name: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
            Ok(number(name, default, min, MAX_DISK_QUOTA_MB)? << 20)
        };
        let runtime_image =
            get("SANDBOX_RUNTIME_IMAGE").unwrap_or_else(|| DEFAULT_RUNTIME_IMAGE.into());
        let disk_quota = if flag("SANDBOX_DISK_QUOTAS", true)? {
            let dir =
                get("SANDBOX_DISK_QUOTA_DIR").unwrap_or_else(|| DEFAULT_DISK_QUOTA_DIR.into());
            // It becomes a bind mount `dir:dir`: absolute, and no `:` or `,`.
            if !dir.starts_with('/') || dir.contains([':', ',']) || dir.contains("/../") {
                return Err(ConfigError::BadShape {
                    name: "SANDBOX_DISK_QUOTA_DIR",
                    value: dir,
                    shape: "an absolute host path without ':' or ','",
                });
            }
            Some(DiskQuotaConfig {
                dir,
                helper_image: get("SANDBOX_DISK_QUOTA_HELPER_IMAGE")
                    .unwrap_or_else(|| runtime_image.clone()),
                org_cache_bytes: mib(
                    "SANDBOX_ORG_CACHE_QUOTA_MB",
                    DEFAULT_ORG_CACHE_QUOTA_MB,
                    min_quota_mb,
                )?,
            })
        } else {
            None
        };
        let agent = SessionResources {
            exec_user: user("SANDBOX_AGENT_USER", DEFAULT_EXEC_USER)?,
            cpus: number("SANDBOX_AGENT_CPUS", 2, 1, 1024)? as f64,
            memory_bytes: size("SANDBOX_AGENT_MEMORY", "4g")?,
            pids_limit: number("SANDBOX_AGENT_PIDS", 512, 64, 1 << 22)? as i64,
            nofile: (
                number("SANDBOX_AGENT_NOFILE_SOFT", 4096, 256, 1 << 20)?,
                number("SANDBOX_AGENT_NOFILE_HARD", 8192, 256, 1 << 20)?,
            ),
            fsize_bytes: number(
                "SANDBOX_AGENT_FSIZE_BYTES",
                512 * 1024 * 1024,
                1024 * 1024,
                u64::MAX,
            )?,
            tmp_bytes: size("SANDBOX_AGENT_TMP_SIZE", "512m")?,
            shm_bytes: size("SANDBOX_AGENT_SHM_SIZE", "512m")?,
            disk_quota_bytes: mib(
                "SANDBOX_AGENT_DISK_QUOTA_MB",
                DEFAULT_AGENT_DISK_QUOTA_MB,
                min_quota_mb,
            )?,
            ephemeral_storage_bytes: mib(
                "SANDBOX_AGENT_EPHEMERAL_STORAGE_MB",
                DEFAULT_AGENT_EPHEMERAL_STORAGE_MB,
                1,
            )?,
        };
        let default_profile = SessionResources {
            exec_user: (65534, 65534),
            cpus: 1.0,
            memory_bytes: 1500 * 1024 * 1024,
            pids_limit: 128,
            nofile: (1024, 4096),
            fsize_bytes: 104_857_600,
            tmp_bytes: 128 * 1024 * 1024,
            shm_bytes: 64 * 1024 * 1024,
            disk_quota_bytes: mib("SANDBOX_DISK_QUOTA_MB", DEFAULT_DISK_QUOTA_MB, min_quota_mb)?,
            ephemeral_storage_bytes: mib(
                "SANDBOX_EPHEMERAL_STORAGE_MB",
                DEFAULT_EPHEMERAL_STORAGE_MB,
                1,
            )?,
        };
        let kubernetes = kubernetes_settings(&get, &number)?;
        let tls = tls::tls_settings(&get, &flag, backend)?;
        Ok(SpawnerConfig {
            port: number("SANDBOX_PORT", u64::from(DEFAULT_PORT), 1, 65535)? as u16,
            backend,
            token,
            runtime_image,
            runtime: get("SANDBOX_RUNTIME"),
            host_session_root: PathBuf::from(
                get("SANDBOX_HOST_SESSION_ROOT")
                    .unwrap_or_else(|| DEFAULT_HOST_SESSION_ROOT.into()),
            ),
            egress_network: get("SANDBOX_EGRESS_NETWORK")
                .unwrap_or_else(|| DEFAULT_EGRESS_NETWORK.into()),
            egress_proxy: match get("SANDBOX_EGRESS_PROXY").as_deref() {
                Some("none") => None,
                Some(proxy) => Some(proxy.to_owned()),
                None => Some(DEFAULT_EGRESS_PROXY.into()),
            },
            no_proxy: get("SANDBOX_NO_PROXY").unwrap_or_else(|| DEFAULT_NO_PROXY.into()),
            docker_socket: get("SANDBOX_DOCKER_SOCKET")
                .unwrap_or_else(|| DEFAULT_DOCKER_SOCKET.into()),
            llm_gateway_url: match get("SANDBOX_LLM_GATEWAY_URL") {
                None => DEFAULT_LLM_GATEWAY_URL.to_owned(),
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    url.trim_end_matches('/').to_owned()
                }
                Some(url) => {
                    return Err(ConfigError::BadShape {
                        name: "SANDBOX_LLM_GATEWAY_URL",
                        value: url,
                        shape: "http://host:port or https://host",
                    })
                }
            },
            cache_volume_prefixes: caches.then(|| {
                [
                    get("SANDBOX_PIP_CACHE_VOLUME_PREFIX")
                        .unwrap_or_else(|| "tale-sandbox-pip-cache".into()),
                    get("SANDBOX_NPM_CACHE_VOLUME_PREFIX")
                        .unwrap_or_else(|| "tale-sandbox-npm-cache".into()),
                    get("SANDBOX_BUN_CACHE_VOLUME_PREFIX")
                        .unwrap_or_else(|| "tale-sandbox-bun-cache".into()),
                ]
            }),
            stack_label: match get("SANDBOX_STACK_LABEL") {
                None => None,
                Some(value) if crate::modes::spawner::backend::docker::label_value_ok(&value) => {
                    Some(value)
                }
                Some(value) => {
                    return Err(ConfigError::BadShape {
                        name: "SANDBOX_STACK_LABEL",
                        value,
                        shape: "1-128 characters of A-Z, a-z, 0-9, '_' and '-'",
                    })
                }
            },
            disk_quota,
            stdout_max_bytes: number(
                "SANDBOX_STDOUT_MAX_BYTES",
                DEFAULT_OUTPUT_MAX_BYTES,
                1024,
                u64::MAX,
            )?,
            stderr_max_bytes: number(
                "SANDBOX_STDERR_MAX_BYTES",
                DEFAULT_OUTPUT_MAX_BYTES,
                1024,
                u64::MAX,
            )?,
            max_request_body_bytes: max_body.min(RUNNERD_MAX_BODY_BYTES),
            edge: EdgeLimits {
                max_connections: number(
                    "SANDBOX_MAX_CONNECTIONS",
                    edge::DEFAULT_MAX_CONNECTIONS,
                    1,
                    1_000_000,
                )? as usize,
                max_preauth_connections_per_address: number(
                    "SANDBOX_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS",
                    edge::DEFAULT_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS,
                    1,
                    1_000_000,
                )? as usize,
                // One body of the largest size always fits.
                body_budget_bytes: number(
                    "SANDBOX_BODY_BUDGET_BYTES",
                    edge::DEFAULT_BODY_BUDGET_BYTES,
                    max_body.min(RUNNERD_MAX_BODY_BYTES),
                    u32::MAX as u64,
                )? as usize,
                body_read_timeout: std::time::Duration::from_millis(number(
                    "SANDBOX_BODY_READ_TIMEOUT_MS",
                    edge::DEFAULT_BODY_READ_TIMEOUT_MS,
                    100,
                    600_000,
                )?),
            },
            api_deny_sources: networks(edge::sources::API_DENY_SOURCES_ENV)?,
            docker_control_sources: networks("SANDBOX_DOCKER_CONTROL_SOURCES")?,
            max_sessions: number("SANDBOX_MAX_SESSIONS", DEFAULT_MAX_SESSIONS, 1, 100_000)?,
            max_sessions_per_org: number(
                "SANDBOX_MAX_SESSIONS_PER_ORG",
                DEFAULT_MAX_SESSIONS_PER_ORG,
                1,
                100_000,
            )?,
            limits: RequestLimits {
                max_lifetime_ms: number(
                    "SANDBOX_SESSION_MAX_LIFETIME_MS",
                    DEFAULT_SESSION_MAX_LIFETIME_MS,
                    60_000,
                    u64::MAX,
                )?,
                max_idle_ms: number(
                    "SANDBOX_SESSION_MAX_IDLE_MS",
                    DEFAULT_SESSION_MAX_IDLE_MS,
                    60_000,
                    u64::MAX,
                )?,
                exec_default_timeout_ms: number(
                    "SANDBOX_SESSION_EXEC_DEFAULT_TIMEOUT_MS",
                    DEFAULT_EXEC_TIMEOUT_MS,
                    1000,
                    u64::MAX,
                )?,
                exec_max_timeout_ms: number(
                    "SANDBOX_SESSION_EXEC_MAX_TIMEOUT_MS",
                    DEFAULT_EXEC_MAX_TIMEOUT_MS,
                    1000,
                    u64::MAX,
                )?,
            },
            create_timeout_ms: number(
                "SANDBOX_SESSION_CREATE_TIMEOUT_MS",
                DEFAULT_CREATE_TIMEOUT_MS,
                5000,
                u64::MAX,
            )?,
            sweep_interval_ms: number(
                "SANDBOX_SWEEP_INTERVAL_MS",
                DEFAULT_SWEEP_INTERVAL_MS,
                100,
                u64::MAX,
            )?,
            hardening: Hardening {
                read_only_rootfs: flag("SANDBOX_READ_ONLY_ROOTFS", true)?,
                no_new_privileges: flag("SANDBOX_NO_NEW_PRIVILEGES", true)?,
                drop_all_capabilities: flag("SANDBOX_DROP_CAPABILITIES", true)?,
            },
            agent,
            default_profile,
            kubernetes,
            tls,
        })
    }
}

/// Docker-style sizes: `512m`, `4g`, `1500m`, `64k`, `1048576` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let value: u64 = digits.parse().ok()?;
    let factor = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(factor)
}

#[cfg(test)]
mod tests;

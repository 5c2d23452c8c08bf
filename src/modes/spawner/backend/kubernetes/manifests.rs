//! The Kubernetes objects of a session, built as typed values (no I/O here): names, labels and
//! annotations (the truth a restarted spawner re-adopts from), the hardened Pod, its Secret and
//! workspace PVC, and the namespace's NetworkPolicy. Reading them back is `status.rs`.
use super::super::names;
use super::super::SessionSpec;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Label on session Pods and Secrets (`=1`): what `list_sessions` selects.
pub const SESSION_LABEL: &str = "tale.sandbox-session";
/// Label on session Pods (`=session`): what the NetworkPolicy selects.
pub const ROLE_LABEL: &str = "tale.sandbox/role";
pub const ROLE_SESSION: &str = "session";
/// Label on session Pods: [`org_hash`] of the organization, so one organization's sessions are
/// selected by the API server (label values are at most 63 characters of a restricted alphabet;
/// organization ids are not).
pub const ORG_HASH_LABEL: &str = "tale.dev/org-hash";
/// Label on workspace PVCs (`=1`).
pub const WORKSPACE_LABEL: &str = "tale.sandbox-session-ws";
pub const ANNOTATION_SESSION_ID: &str = "tale.dev/session-id";
pub const ANNOTATION_ORGANIZATION_ID: &str = "tale.dev/organization-id";
pub const ANNOTATION_PROFILE: &str = "tale.dev/profile";
/// Creation time, milliseconds since the epoch.
pub const ANNOTATION_CREATED_AT: &str = "tale.dev/created-at";
/// The session's TTL in milliseconds, as granted at creation.
pub const ANNOTATION_TTL_MS: &str = "tale.dev/ttl-ms";
/// The session's idle timeout in milliseconds, as granted at creation.
pub const ANNOTATION_IDLE_TIMEOUT_MS: &str = "tale.dev/idle-timeout-ms";
/// On the workspace PVC: whether the session's compute should run (`running`: a Pod that is lost
/// is brought back; `stopped`: stopped on purpose, only a create resumes it). PVCs without it (made
/// by an older release) are never healed.
pub const ANNOTATION_COMPUTE: &str = "tale.dev/compute";
pub const COMPUTE_RUNNING: &str = "running";
pub const COMPUTE_STOPPED: &str = "stopped";
/// The cluster autoscaler's per-Pod scale-down switch. Session Pods say `false`: a live session
/// holds running execs and its seeded env in memory, which a heal cannot bring back; idle sessions
/// are stopped by the sweep, which frees their node for scale-down anyway.
pub const ANNOTATION_SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const SAFE_TO_EVICT: &str = "false";
/// On the Pod (`1`): its creator records the seed in runnerd (`PUT /seed`). A Pod without it was
/// made by a previous release, which delivered the seed unrecorded (see
/// `Backend::creator_records_seed`).
pub const ANNOTATION_SEED_RECORD: &str = "tale.dev/seed-record";
/// The one container of a session Pod.
pub const CONTAINER_NAME: &str = "runner";
/// What the container runs: the runtime image's `tale runnerd` (its entrypoint too).
pub const RUNNERD_COMMAND: [&str; 2] = ["/usr/local/bin/tale", "runnerd"];
/// Where the workspace PVC is mounted (the same root the docker backend uses).
pub const WORKSPACE_PATH: &str = super::super::docker::WORKSPACE_PATH;
/// Secret key holding the hex SHA-256 of the session's runnerd token (the token never enters the
/// cluster).
pub const TOKEN_DIGEST_KEY: &str = crate::shared::protocol::runnerd::TOKEN_SHA256_ENV;
/// Secret keys holding runnerd's TLS certificate and key (PEM) when runnerd traffic is TLS; the
/// Pod reads them into the same-named environment variables.
pub const TLS_CERT_KEY: &str = crate::shared::protocol::runnerd::RUNNERD_TLS_CERT_ENV;
pub const TLS_KEY_KEY: &str = crate::shared::protocol::runnerd::RUNNERD_TLS_KEY_ENV;
/// Name of the namespace's session NetworkPolicy.
pub const NETWORK_POLICY_NAME: &str = "tale-sandbox-session-egress";
/// Grace given to runnerd when a session Pod is deleted (it forwards SIGTERM to every exec).
pub const STOP_GRACE_SECONDS: u32 = 5;
/// Readiness probe timing on `/readyz`.
pub const READINESS_INITIAL_DELAY_SECONDS: i32 = 1;
pub const READINESS_PERIOD_SECONDS: i32 = 5;
/// DNS, the only egress allowed outside the sandbox namespace.
pub const DNS_PORT: i32 = 53;
/// Label every namespace carries with its own name (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything the builders need besides the session itself.
#[derive(Clone, Debug)]
pub struct ManifestConfig {
    pub namespace: String,
    pub image: String,
    pub runtime_class: Option<String>,
    pub egress_proxy: Option<String>,
    pub no_proxy: String,
    pub workspace_bytes: u64,
    pub storage_class: Option<String>,
    pub cpu_request_millis: u64,
    pub memory_request_bytes: u64,
    pub runnerd_port: u16,
    pub read_only_rootfs: bool,
    pub no_new_privileges: bool,
    pub drop_all_capabilities: bool,
    /// Labels of the spawner Pods, the only ingress peers of runnerd.
    pub spawner_selector: BTreeMap<String, String>,
    pub spawner_namespace: String,
}

/// The [`ORG_HASH_LABEL`] value of an organization: the first 16 hex digits of its SHA-256.
pub fn org_hash(organization_id: &str) -> String {
    crate::shared::hmac::sha256_hex(organization_id.as_bytes())[..16].to_owned()
}

/// The name a session's Pod is created under: `tale-sbx-ses-<id>` for lowercase DNS-safe ids that
/// fit, else `tale-sbx-hash-<digest>` (`backend::names`, injective over valid ids).
pub fn pod_name(session_id: &str) -> String {
    names::session_base_name(session_id, names::NameRules::Kubernetes)
}

/// The Secret's name for a Pod base name.
pub fn secret_name_for(base: &str) -> String {
    format!("{base}-spec")
}

/// The PVC's name for a Pod base name.
pub fn pvc_name_for(base: &str) -> String {
    format!("{base}-ws")
}

pub fn secret_name(session_id: &str) -> String {
    secret_name_for(&pod_name(session_id))
}

pub fn pvc_name(session_id: &str) -> String {
    pvc_name_for(&pod_name(session_id))
}

/// Bytes as a Kubernetes quantity: the largest binary suffix that divides exactly (`4Gi`,
/// `1500Mi`), else plain bytes.
pub fn memory_quantity(bytes: u64) -> Quantity {
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes % unit == 0 {
            return Quantity(format!("{}{suffix}", bytes / unit));
        }
    }
    Quantity(bytes.to_string())
}

/// Millicores as a Kubernetes quantity: whole cores as `2`, else `500m`.
pub fn cpu_quantity(millis: u64) -> Quantity {
    if millis % 1000 == 0 {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The Secret `<pod>-spec`: the digest of the runnerd token and runnerd's TLS certificate and key,
/// nothing else (the seed env is pushed to runnerd once it is ready, never stored in the cluster).
pub fn secret(spec: &SessionSpec, config: &ManifestConfig) -> Secret {
    let mut data = BTreeMap::from([(
        TOKEN_DIGEST_KEY.to_string(),
        crate::shared::protocol::runnerd::token_digest_hex(spec.runnerd_token.as_bytes()),
    )]);
    data.extend(
        super::super::runnerd_tls_env(spec)
            .into_iter()
            .map(|(key, value)| (key.to_string(), value)),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&spec.session_id)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels(&[(SESSION_LABEL, "1")])),
            annotations: Some(labels(&[
                (ANNOTATION_SESSION_ID, &spec.session_id),
                (ANNOTATION_CREATED_AT, &spec.created_at_ms.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        string_data: Some(data),
        ..Default::default()
    }
}

/// What the workspace PVC records of its session beyond its owner: the compute wanted, and the
/// profile, creation time and limits a heal needs when the Pod is gone. A resume rewrites them.
pub fn workspace_record(spec: &SessionSpec) -> [(&'static str, String); 5] {
    [
        (ANNOTATION_COMPUTE, COMPUTE_RUNNING.to_owned()),
        (ANNOTATION_PROFILE, spec.profile.clone()),
        (ANNOTATION_CREATED_AT, spec.created_at_ms.to_string()),
        (ANNOTATION_TTL_MS, spec.ttl_ms.to_string()),
        (ANNOTATION_IDLE_TIMEOUT_MS, spec.idle_timeout_ms.to_string()),
    ]
}

/// `ephemeral-storage` request of a session container (capped at the profile's limit).
pub const EPHEMERAL_STORAGE_REQUEST_BYTES: u64 = 256 << 20;

/// Size of a session's workspace PVC: the profile's disk quota, capped by the configured
/// workspace size limit.
pub fn workspace_pvc_bytes(spec: &SessionSpec, config: &ManifestConfig) -> u64 {
    spec.resources.disk_quota_bytes.min(config.workspace_bytes)
}

/// The workspace PVC `<pod>-ws`: outlives stops, deleted only by destroy.
pub fn pvc(spec: &SessionSpec, config: &ManifestConfig) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(pvc_name(&spec.session_id)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels(&[(WORKSPACE_LABEL, "1")])),
            annotations: Some(
                [
                    (ANNOTATION_SESSION_ID, spec.session_id.clone()),
                    (ANNOTATION_ORGANIZATION_ID, spec.organization_id.clone()),
                ]
                .into_iter()
                .chain(workspace_record(spec))
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: config.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    memory_quantity(workspace_pvc_bytes(spec, config)),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The session Pod: runnerd runs directly as the profile's uid/gid (never root), with a read-only
/// root filesystem, no capabilities, no privilege escalation and the runtime's seccomp profile.
pub fn pod(spec: &SessionSpec, config: &ManifestConfig) -> Pod {
    pod_on_claim(spec, config, &pvc_name(&spec.session_id))
}

/// The Pod, mounting the workspace PVC `claim` (a session created before this release keeps its
/// PVC's old name).
pub fn pod_on_claim(spec: &SessionSpec, config: &ManifestConfig, claim: &str) -> Pod {
    let r = &spec.resources;
    let (uid, gid) = r.exec_user;
    let port = i32::from(config.runnerd_port);
    let from_secret = |key: &str| EnvVar {
        name: key.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_name(&spec.session_id),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tls = spec.runnerd_tls.is_some();
    let mut env = vec![
        from_secret(TOKEN_DIGEST_KEY),
        env("TALE_WORKSPACE_ROOT", WORKSPACE_PATH),
        env("TALE_EXEC_USER", format!("{uid}:{gid}")),
        env("TALE_RUNNERD_LISTEN", format!("0.0.0.0:{port}")),
    ];
    if tls {
        env.extend([from_secret(TLS_CERT_KEY), from_secret(TLS_KEY_KEY)]);
    }
    if let Some(proxy) = &config.egress_proxy {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push(self::env(name, proxy.clone()));
        }
        env.push(self::env("NO_PROXY", config.no_proxy.clone()));
        env.push(self::env("no_proxy", config.no_proxy.clone()));
    }
    let memory_limit = r.memory_bytes;
    let cpu_limit_millis = ((r.cpus * 1000.0).round() as u64).max(1);
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                cpu_quantity(config.cpu_request_millis.min(cpu_limit_millis)),
            ),
            (
                "memory".to_string(),
                memory_quantity(config.memory_request_bytes.min(memory_limit)),
            ),
            (
                "ephemeral-storage".to_string(),
                memory_quantity(EPHEMERAL_STORAGE_REQUEST_BYTES.min(r.ephemeral_storage_bytes)),
            ),
        ])),
        // The writable layer and logs; /tmp and /dev/shm are memory, the workspace is the PVC.
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), cpu_quantity(cpu_limit_millis)),
            ("memory".to_string(), memory_quantity(memory_limit)),
            (
                "ephemeral-storage".to_string(),
                memory_quantity(r.ephemeral_storage_bytes),
            ),
        ])),
        ..Default::default()
    };
    let memory_dir = |name: &str, bytes: u64| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(memory_quantity(bytes)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(RUNNERD_COMMAND.map(String::from).to_vec()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("runnerd".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(port),
                // The kubelet's HTTPS probes do not check the certificate.
                scheme: tls.then(|| "HTTPS".into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(READINESS_INITIAL_DELAY_SECONDS),
            period_seconds: Some(READINESS_PERIOD_SECONDS),
            ..Default::default()
        }),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(uid)),
            run_as_group: Some(i64::from(gid)),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(config.read_only_rootfs),
            allow_privilege_escalation: Some(!config.no_new_privileges),
            capabilities: config.drop_all_capabilities.then(|| Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("workspace", WORKSPACE_PATH),
            mount("tmp", "/tmp"),
            mount("dshm", "/dev/shm"),
        ]),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&spec.session_id)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels(&[
                (SESSION_LABEL, "1"),
                (ROLE_LABEL, ROLE_SESSION),
                (ORG_HASH_LABEL, &org_hash(&spec.organization_id)),
            ])),
            annotations: Some(labels(&[
                (ANNOTATION_SESSION_ID, &spec.session_id),
                (ANNOTATION_ORGANIZATION_ID, &spec.organization_id),
                (ANNOTATION_PROFILE, &spec.profile),
                (ANNOTATION_CREATED_AT, &spec.created_at_ms.to_string()),
                (ANNOTATION_TTL_MS, &spec.ttl_ms.to_string()),
                (
                    ANNOTATION_IDLE_TIMEOUT_MS,
                    &spec.idle_timeout_ms.to_string(),
                ),
                (ANNOTATION_SAFE_TO_EVICT, SAFE_TO_EVICT),
                (ANNOTATION_SEED_RECORD, "1"),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Always".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            runtime_class_name: config.runtime_class.clone(),
            termination_grace_period_seconds: Some(i64::from(STOP_GRACE_SECONDS)),
            security_context: Some(PodSecurityContext {
                fs_group: Some(i64::from(gid)),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: "workspace".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.to_owned(),
                        read_only: Some(false),
                    }),
                    ..Default::default()
                },
                memory_dir("tmp", r.tmp_bytes),
                memory_dir("dshm", r.shm_bytes),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The session NetworkPolicy of the namespace: session Pods may reach DNS anywhere and anything
/// inside the sandbox namespace (the egress proxy, the LLM gateway); only the spawner Pods may
/// reach them, and only on runnerd's port.
pub fn network_policy(config: &ManifestConfig) -> NetworkPolicy {
    let namespace_named = |name: &str| LabelSelector {
        match_labels: Some(labels(&[(NAMESPACE_NAME_LABEL, name)])),
        ..Default::default()
    };
    let port = |protocol: &str, number: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(number)),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(NETWORK_POLICY_NAME.into()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels(&[("app.kubernetes.io/managed-by", "tale")])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&[(ROLE_LABEL, ROLE_SESSION)])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector::default()),
                        ..Default::default()
                    }]),
                    ports: Some(vec![port("UDP", DNS_PORT), port("TCP", DNS_PORT)]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(namespace_named(&config.namespace)),
                        ..Default::default()
                    }]),
                    ports: None,
                },
            ]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(namespace_named(&config.spawner_namespace)),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(config.spawner_selector.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![port("TCP", i32::from(config.runnerd_port))]),
            }]),
        }),
    }
}

#[cfg(test)]
pub(in crate::modes::spawner::backend) mod fixtures {
    use super::super::super::SessionResources;
    use super::*;

    pub fn spec() -> SessionSpec {
        SessionSpec {
            session_id: "Ses_1".into(),
            organization_id: "org-1".into(),
            profile: "agent".into(),
            ttl_ms: 3_600_000,
            idle_timeout_ms: 600_000,
            created_at_ms: 1_700_000_000_000,
            resources: SessionResources {
                exec_user: (10001, 10002),
                cpus: 2.0,
                memory_bytes: 4 << 30,
                pids_limit: 512,
                nofile: (4096, 8192),
                fsize_bytes: 512 << 20,
                tmp_bytes: 512 << 20,
                shm_bytes: 64 << 20,
                disk_quota_bytes: 4 << 30,
                ephemeral_storage_bytes: 1 << 30,
            },
            runnerd_token: "secret-token".into(),
            runnerd_tls: Some(crate::shared::tls::SessionTls::derive(
                b"sandbox-token",
                "Ses_1",
            )),
        }
    }

    pub fn config() -> ManifestConfig {
        ManifestConfig {
            namespace: "tale-sandbox".into(),
            image: "tale-sandbox-runtime:latest".into(),
            runtime_class: Some("gvisor".into()),
            egress_proxy: Some("http://sandbox-egress:3128".into()),
            no_proxy: "127.0.0.1,localhost".into(),
            workspace_bytes: 4 << 30,
            storage_class: Some("fast".into()),
            cpu_request_millis: 500,
            memory_request_bytes: 1 << 30,
            runnerd_port: 8200,
            read_only_rootfs: true,
            no_new_privileges: true,
            drop_all_capabilities: true,
            spawner_selector: labels(&[("app.kubernetes.io/name", "tale-spawner")]),
            spawner_namespace: "tale".into(),
        }
    }
}

#[cfg(test)]
mod tests;

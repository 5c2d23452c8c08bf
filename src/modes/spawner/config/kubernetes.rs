//! The `SANDBOX_K8S_*` settings (and `SANDBOX_RUNTIME_CLASS`): read whatever the backend, used by the
//! kubernetes backend only, and validated with Kubernetes' own name and quantity syntax.
use super::kubernetes_heal::{heal_settings, HealSettings, HEAL_VARIABLES};
use super::kubernetes_network::{network_settings, NetworkSettings, NETWORK_VARIABLES};
use super::kubernetes_placement::{profile_placements, ProfilePlacements, PLACEMENT_VARIABLES};
use super::{parse_size, ConfigError};
use crate::modes::spawner::backend::BackendKind;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const DEFAULT_K8S_NAMESPACE: &str = "tale-sandbox";
pub const DEFAULT_K8S_WORKSPACE_SIZE: &str = "4Gi";
pub const DEFAULT_K8S_CPU_REQUEST: &str = "500m";
pub const DEFAULT_K8S_MEMORY_REQUEST: &str = "1Gi";
/// Labels of the spawner's own Pods (the Helm chart's): the only peers allowed to reach runnerd.
pub const DEFAULT_K8S_SPAWNER_SELECTOR: &str = "app.kubernetes.io/name=tale-spawner";

/// The `SANDBOX_K8S_*` settings (read whatever the backend; used by the kubernetes backend only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// Namespace of the session Pods, Secrets, PVCs and the NetworkPolicy.
    pub namespace: String,
    /// Size of each session's workspace PVC, in bytes.
    pub workspace_bytes: u64,
    /// StorageClass of the workspace PVCs; `None` for the cluster default.
    pub storage_class: Option<String>,
    /// CPU request of a session container, in millicores (capped at the profile's limit).
    pub cpu_request_millis: u64,
    /// Memory request of a session container, in bytes (capped at the profile's limit).
    pub memory_request_bytes: u64,
    /// `runtimeClassName` of session Pods; `None` for the node default.
    pub runtime_class: Option<String>,
    /// Labels of the spawner Pods: the NetworkPolicy admits runnerd traffic only from them.
    pub spawner_selector: BTreeMap<String, String>,
    /// Namespace of the spawner Pods; `None`: the client's own (in-cluster: the service account's).
    pub spawner_namespace: Option<String>,
    /// Port runnerd listens on inside session Pods.
    pub runnerd_port: u16,
    /// Pods per page of a session Pod LIST (`limit`; the rest follows by `continue`).
    pub list_page_size: u32,
    /// API server URL overriding in-cluster/kubeconfig discovery.
    pub server: Option<String>,
    /// Bearer token overriding the discovered credentials.
    pub token: Option<String>,
    /// PEM bundle of the API server's CA, overriding the discovered one.
    pub ca_file: Option<PathBuf>,
    /// Scheduling and pull settings of session Pods, per profile.
    pub placement: ProfilePlacements,
    /// DNS peers of the session NetworkPolicy, and whether the spawner manages it.
    pub network: NetworkSettings,
    /// Timeouts of healing: node loss, Multi-Attach, image pulls.
    pub heal: HealSettings,
}

/// `SANDBOX_K8S_*` (and `SANDBOX_RUNTIME_CLASS`) settings.
pub(super) fn kubernetes_settings(
    get: &dyn Fn(&str) -> Option<String>,
    number: &dyn Fn(&'static str, u64, u64, u64) -> Result<u64, ConfigError>,
) -> Result<KubernetesSettings, ConfigError> {
    let bad = |name: &'static str, value: String, shape: &'static str| ConfigError::BadShape {
        name,
        value,
        shape,
    };
    let dns_label =
        |name: &'static str, default: Option<&str>| -> Result<Option<String>, ConfigError> {
            match get(name).or_else(|| default.map(str::to_owned)) {
                None => Ok(None),
                Some(value) if is_dns_label(&value) => Ok(Some(value)),
                Some(value) => Err(bad(
                    name,
                    value,
                    "a DNS label (lowercase letters, digits and '-', at most 63)",
                )),
            }
        };
    let bytes = |name: &'static str, default: &str| -> Result<u64, ConfigError> {
        let text = get(name).unwrap_or_else(|| default.to_owned());
        parse_k8s_size(&text).ok_or_else(|| bad(name, text, "a size like 4Gi, 512Mi or 4g"))
    };
    let cpu_text = get("SANDBOX_K8S_CPU_REQUEST").unwrap_or_else(|| DEFAULT_K8S_CPU_REQUEST.into());
    let cpu_request_millis = parse_cpu_millis(&cpu_text).ok_or_else(|| {
        bad(
            "SANDBOX_K8S_CPU_REQUEST",
            cpu_text,
            "a CPU amount like 500m or 2",
        )
    })?;
    let selector_text =
        get("SANDBOX_K8S_SPAWNER_SELECTOR").unwrap_or_else(|| DEFAULT_K8S_SPAWNER_SELECTOR.into());
    let spawner_selector = parse_label_selector(&selector_text).ok_or_else(|| {
        bad(
            "SANDBOX_K8S_SPAWNER_SELECTOR",
            selector_text,
            "comma-separated label=value pairs",
        )
    })?;
    let storage_class =
        match get("SANDBOX_K8S_STORAGE_CLASS").or_else(|| get("SANDBOX_K8S_CACHE_STORAGECLASS")) {
            Some(class) if is_dns_subdomain(&class) => Some(class),
            Some(class) => {
                return Err(bad(
                    "SANDBOX_K8S_STORAGE_CLASS",
                    class,
                    "a StorageClass name (lowercase letters, digits, '-' and '.')",
                ))
            }
            None => None,
        };
    Ok(KubernetesSettings {
        namespace: dns_label("SANDBOX_K8S_NAMESPACE", Some(DEFAULT_K8S_NAMESPACE))?
            .unwrap_or_default(),
        workspace_bytes: bytes(
            "SANDBOX_K8S_WORKSPACE_SIZE_LIMIT",
            DEFAULT_K8S_WORKSPACE_SIZE,
        )?,
        storage_class,
        cpu_request_millis,
        memory_request_bytes: bytes("SANDBOX_K8S_MEMORY_REQUEST", DEFAULT_K8S_MEMORY_REQUEST)?,
        runtime_class: match get("SANDBOX_RUNTIME_CLASS") {
            None => None,
            Some(class) if class == "runc" => None,
            Some(class) if is_dns_subdomain(&class) => Some(class),
            Some(class) => {
                return Err(bad(
                    "SANDBOX_RUNTIME_CLASS",
                    class,
                    "a RuntimeClass name (lowercase letters, digits, '-' and '.')",
                ))
            }
        },
        spawner_selector,
        spawner_namespace: dns_label("SANDBOX_K8S_SPAWNER_NAMESPACE", None)?,
        runnerd_port: number(
            "SANDBOX_K8S_RUNNERD_PORT",
            u64::from(crate::shared::protocol::runnerd::DEFAULT_PORT),
            1,
            65535,
        )? as u16,
        list_page_size: number(
            "SANDBOX_K8S_LIST_PAGE_SIZE",
            u64::from(crate::modes::spawner::backend::kubernetes::watch::LIST_PAGE_SIZE),
            1,
            5000,
        )? as u32,
        server: get("SANDBOX_K8S_SERVER"),
        token: get("SANDBOX_K8S_TOKEN"),
        ca_file: get("SANDBOX_K8S_CAFILE").map(PathBuf::from),
        placement: profile_placements(get)?,
        network: network_settings(get)?,
        heal: heal_settings(number)?,
    })
}

/// RFC 1123 label: what namespaces are.
pub fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// RFC 1123 subdomain: what StorageClass and RuntimeClass names are.
pub fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// Kubernetes binary sizes (`4Gi`, `512Mi`, `64Ki`, `1Ti`), or Docker-style ones ([`parse_size`]).
pub fn parse_k8s_size(text: &str) -> Option<u64> {
    let text = text.trim();
    for (suffix, shift) in [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)] {
        if let Some(digits) = text.strip_suffix(suffix) {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return digits.parse::<u64>().ok()?.checked_mul(1 << shift);
        }
    }
    parse_size(text)
}

/// CPU amounts as Kubernetes writes them: `500m` (millicores), `2`, `0.5`. In millicores.
pub fn parse_cpu_millis(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(millis) = text.strip_suffix('m') {
        return millis
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| millis.parse().ok())
            .flatten()
            .filter(|m| *m > 0);
    }
    let cores: f64 = text.parse().ok()?;
    (cores.is_finite() && cores > 0.0 && cores < 1e6).then(|| (cores * 1000.0).round() as u64)
}

/// `key=value,key2=value2` with Kubernetes label syntax (an optional `prefix/` on keys).
pub fn parse_label_selector(text: &str) -> Option<BTreeMap<String, String>> {
    let value_ok = |v: &str| {
        v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let mut labels = BTreeMap::new();
    for pair in text.split(',') {
        let (key, value) = pair.trim().split_once('=')?;
        let name = match key.split_once('/') {
            Some((prefix, name)) if is_dns_subdomain(prefix) => name,
            Some(_) => return None,
            None => key,
        };
        if name.is_empty() || !value_ok(name) || !value_ok(value) {
            return None;
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    (!labels.is_empty()).then_some(labels)
}

/// Kubernetes-only variables that are set while another backend runs (worth a warning: they do
/// nothing there).
pub fn ignored_kubernetes_variables(
    lookup: impl Fn(&str) -> Option<String>,
    backend: BackendKind,
) -> Vec<&'static str> {
    if backend == BackendKind::Kubernetes {
        return Vec::new();
    }
    KUBERNETES_VARIABLES
        .iter()
        .chain(PLACEMENT_VARIABLES)
        .chain(NETWORK_VARIABLES)
        .chain(HEAL_VARIABLES)
        .copied()
        .filter(|name| lookup(name).is_some_and(|v| !v.trim().is_empty()))
        .collect()
}

/// Every variable only the kubernetes backend reads.
pub const KUBERNETES_VARIABLES: &[&str] = &[
    "SANDBOX_K8S_NAMESPACE",
    "SANDBOX_K8S_WORKSPACE_SIZE_LIMIT",
    "SANDBOX_K8S_STORAGE_CLASS",
    "SANDBOX_K8S_CACHE_STORAGECLASS",
    "SANDBOX_K8S_CPU_REQUEST",
    "SANDBOX_K8S_MEMORY_REQUEST",
    "SANDBOX_RUNTIME_CLASS",
    "SANDBOX_K8S_SPAWNER_SELECTOR",
    "SANDBOX_K8S_SPAWNER_NAMESPACE",
    "SANDBOX_K8S_RUNNERD_PORT",
    "SANDBOX_K8S_LIST_PAGE_SIZE",
    "SANDBOX_K8S_SERVER",
    "SANDBOX_K8S_TOKEN",
    "SANDBOX_K8S_CAFILE",
];

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;
    use std::collections::HashMap;

    /// Kubernetes settings: defaults, the storage-class alias, and errors naming the variable.
    #[test]
    fn kubernetes_settings() {
        let k = config(&[("SANDBOX_TOKEN", "t")], false).unwrap().kubernetes;
        assert_eq!(k.namespace, "tale-sandbox");
        assert_eq!(k.workspace_bytes, 4 << 30);
        assert_eq!(
            (k.cpu_request_millis, k.memory_request_bytes),
            (500, 1 << 30)
        );
        assert_eq!(
            (k.storage_class, k.runtime_class, k.runnerd_port),
            (None, None, 8200)
        );
        assert_eq!(
            k.spawner_selector,
            BTreeMap::from([("app.kubernetes.io/name".into(), "tale-spawner".into())])
        );
        let k = config(
            &[
                ("SANDBOX_TOKEN", "t"),
                ("SANDBOX_K8S_CACHE_STORAGECLASS", "fast-ssd"),
                ("SANDBOX_RUNTIME_CLASS", "runc"),
                ("SANDBOX_K8S_WORKSPACE_SIZE_LIMIT", "10g"),
                ("SANDBOX_K8S_CPU_REQUEST", "0.25"),
                ("SANDBOX_K8S_SPAWNER_SELECTOR", "app=spawner, tier=control"),
            ],
            false,
        )
        .unwrap()
        .kubernetes;
        assert_eq!(k.storage_class.as_deref(), Some("fast-ssd"));
        assert_eq!(k.runtime_class, None, "runc means the node default");
        assert_eq!((k.workspace_bytes, k.cpu_request_millis), (10 << 30, 250));
        assert_eq!(k.spawner_selector.len(), 2);
        let err = |pair: (&str, &str)| {
            config(&[("SANDBOX_TOKEN", "t"), pair], false)
                .unwrap_err()
                .to_string()
        };
        assert!(err(("SANDBOX_K8S_NAMESPACE", "Tale_Sandbox")).contains("SANDBOX_K8S_NAMESPACE"));
        assert!(err(("SANDBOX_K8S_MEMORY_REQUEST", "1GB")).contains("SANDBOX_K8S_MEMORY_REQUEST"));
        assert!(err(("SANDBOX_K8S_CPU_REQUEST", "-1")).contains("SANDBOX_K8S_CPU_REQUEST"));
        assert!(err(("SANDBOX_K8S_SPAWNER_SELECTOR", "app")).contains("label=value"));
        assert!(err(("SANDBOX_K8S_RUNNERD_PORT", "0")).contains("SANDBOX_K8S_RUNNERD_PORT"));
        assert!(err(("SANDBOX_RUNTIME_CLASS", "g visor")).contains("SANDBOX_RUNTIME_CLASS"));
        let set = HashMap::from([("SANDBOX_K8S_NAMESPACE", "x")]);
        let lookup = |name: &str| set.get(name).map(|v| v.to_string());
        assert_eq!(
            ignored_kubernetes_variables(lookup, BackendKind::Docker),
            ["SANDBOX_K8S_NAMESPACE"]
        );
        assert!(ignored_kubernetes_variables(lookup, BackendKind::Kubernetes).is_empty());
    }

    /// Kubernetes sizes and CPU amounts.
    #[test]
    fn quantities() {
        assert_eq!(parse_k8s_size("4Gi"), Some(4 << 30));
        assert_eq!(parse_k8s_size("1500Mi"), Some(1500 << 20));
        assert_eq!(
            parse_k8s_size("1500m"),
            Some(1500 << 20),
            "Docker-style m is MiB"
        );
        assert_eq!(parse_k8s_size("Gi"), None);
        assert_eq!(parse_k8s_size("1.5Gi"), None);
        assert_eq!(parse_cpu_millis("500m"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("0m"), None);
        assert_eq!(parse_cpu_millis("1.5x"), None);
    }
}

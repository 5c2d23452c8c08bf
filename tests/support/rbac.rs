//! The Kubernetes API verbs the spawner's kubernetes backend needs, per resource: the Helm chart's
//! Role must grant exactly these (tests/helm_chart.rs) and the backend must use exactly these
//! (tests/spawner_kubernetes.rs, from the fake API server's recorded requests).
#![allow(dead_code)]

/// (API group, resource, verbs), verbs sorted.
pub const SPAWNER_RULES: &[(&str, &str, &[&str])] = &[
    ("", "events", &["list"]),
    (
        "",
        "persistentvolumeclaims",
        &["create", "delete", "get", "list", "patch"],
    ),
    ("", "pods", &["create", "delete", "get", "list", "watch"]),
    ("", "secrets", &["create", "delete", "get", "patch"]),
    (
        "coordination.k8s.io",
        "leases",
        &["create", "delete", "list"],
    ),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["create", "get", "update"],
    ),
];

/// The optional ClusterRole (chart value `sessions.nodeAccess`): Nodes and VolumeAttachments are
/// cluster-scoped.
pub const NODE_RULES: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["get"]),
    ("storage.k8s.io", "volumeattachments", &["list"]),
];

/// [`SPAWNER_RULES`] as owned, sorted tuples for comparisons.
pub fn rules() -> Vec<(String, String, Vec<String>)> {
    let mut rules: Vec<_> = SPAWNER_RULES
        .iter()
        .map(|(group, resource, verbs)| {
            (
                group.to_string(),
                resource.to_string(),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    rules.sort();
    rules
}

//! The Kubernetes API verbs the spawner's kubernetes backend needs, per resource: the Helm chart's
//! Role must grant exactly these (tests/helm_chart.rs) and the backend must use exactly these
//! (tests/spawner_kubernetes.rs, from the fake API server's recorded requests).
#![allow(dead_code)]

/// (API group, resource, verbs), verbs sorted.
pub const SPAWNER_RULES: &[(&str, &str, &[&str])] = &[
    (
        "",
        "persistentvolumeclaims",
        &["create", "delete", "get", "patch"],
    ),
    ("", "pods", &["create", "delete", "get", "list", "watch"]),
    ("", "secrets", &["create", "delete", "get"]),
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

//! How the session NetworkPolicy treats DNS, and whether the spawner manages the policy at all:
//! `SANDBOX_K8S_NETWORK_POLICY`, `SANDBOX_K8S_DNS_NAMESPACE`, `SANDBOX_K8S_DNS_SELECTOR`,
//! `SANDBOX_K8S_NODE_LOCAL_DNS`, `SANDBOX_K8S_EGRESS_PORTS` and `SANDBOX_K8S_EGRESS_PROXY_NAMESPACE`.
use super::kubernetes::{is_dns_label, parse_label_selector};
use super::ConfigError;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Namespace of the cluster resolver (CoreDNS/kube-dns on every common distribution).
pub const DEFAULT_K8S_DNS_NAMESPACE: &str = "kube-system";
/// Labels of the cluster resolver's Pods (CoreDNS keeps kube-dns's label).
pub const DEFAULT_K8S_DNS_SELECTOR: &str = "k8s-app=kube-dns";
/// TCP ports sessions may reach in the sessions (and egress proxy) namespace: the egress proxy's
/// and the LLM gateway's default ports.
pub const DEFAULT_K8S_EGRESS_PORTS: &str = "3128,8080";
/// Most ports `SANDBOX_K8S_EGRESS_PORTS` may list.
pub const MAX_K8S_EGRESS_PORTS: usize = 16;

/// The session NetworkPolicy's DNS peers and who owns the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSettings {
    /// false (`SANDBOX_K8S_NETWORK_POLICY=unmanaged`): the spawner never creates or replaces the
    /// policy; the operator keeps one (or a CNI-specific equivalent) in place.
    pub managed: bool,
    /// Namespace and Pod labels of the only DNS servers sessions may query.
    pub dns_namespace: String,
    pub dns_selector: BTreeMap<String, String>,
    /// A node-local DNS cache address (e.g. NodeLocal DNSCache's 169.254.20.10), also allowed.
    pub node_local_dns: Option<IpAddr>,
    /// The only TCP ports sessions may reach inside the cluster (the proxy's and the gateway's).
    pub egress_ports: Vec<u16>,
    /// Namespace of the egress proxy when it is not the sessions namespace.
    pub egress_proxy_namespace: Option<String>,
}

pub(super) fn network_settings(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<NetworkSettings, ConfigError> {
    let bad = |name: &'static str, value: String, shape: &'static str| ConfigError::BadShape {
        name,
        value,
        shape,
    };
    let managed = match get("SANDBOX_K8S_NETWORK_POLICY").as_deref() {
        None | Some("managed") => true,
        Some("unmanaged") => false,
        Some(other) => {
            return Err(bad(
                "SANDBOX_K8S_NETWORK_POLICY",
                other.to_owned(),
                "managed or unmanaged",
            ))
        }
    };
    let dns_namespace =
        get("SANDBOX_K8S_DNS_NAMESPACE").unwrap_or_else(|| DEFAULT_K8S_DNS_NAMESPACE.into());
    if !is_dns_label(&dns_namespace) {
        return Err(bad(
            "SANDBOX_K8S_DNS_NAMESPACE",
            dns_namespace,
            "a namespace name (a DNS label)",
        ));
    }
    let selector_text =
        get("SANDBOX_K8S_DNS_SELECTOR").unwrap_or_else(|| DEFAULT_K8S_DNS_SELECTOR.into());
    let dns_selector = parse_label_selector(&selector_text).ok_or_else(|| {
        bad(
            "SANDBOX_K8S_DNS_SELECTOR",
            selector_text,
            "comma-separated label=value pairs",
        )
    })?;
    let node_local_dns = match get("SANDBOX_K8S_NODE_LOCAL_DNS") {
        None => None,
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            bad(
                "SANDBOX_K8S_NODE_LOCAL_DNS",
                text,
                "an IP address like 169.254.20.10",
            )
        })?),
    };
    let ports_text =
        get("SANDBOX_K8S_EGRESS_PORTS").unwrap_or_else(|| DEFAULT_K8S_EGRESS_PORTS.into());
    let egress_ports: Option<Vec<u16>> = ports_text
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
        .collect();
    let egress_ports = egress_ports
        .filter(|ports| ports.len() <= MAX_K8S_EGRESS_PORTS)
        .ok_or_else(|| {
            bad(
                "SANDBOX_K8S_EGRESS_PORTS",
                ports_text,
                "comma-separated TCP ports (at most 16)",
            )
        })?;
    let egress_proxy_namespace = match get("SANDBOX_K8S_EGRESS_PROXY_NAMESPACE") {
        None => None,
        Some(ns) if is_dns_label(&ns) => Some(ns),
        Some(ns) => {
            return Err(bad(
                "SANDBOX_K8S_EGRESS_PROXY_NAMESPACE",
                ns,
                "a namespace name (a DNS label)",
            ))
        }
    };
    Ok(NetworkSettings {
        managed,
        dns_namespace,
        dns_selector,
        node_local_dns,
        egress_ports,
        egress_proxy_namespace,
    })
}

/// Every variable of this module (only the kubernetes backend reads them).
pub const NETWORK_VARIABLES: &[&str] = &[
    "SANDBOX_K8S_NETWORK_POLICY",
    "SANDBOX_K8S_DNS_NAMESPACE",
    "SANDBOX_K8S_DNS_SELECTOR",
    "SANDBOX_K8S_NODE_LOCAL_DNS",
    "SANDBOX_K8S_EGRESS_PORTS",
    "SANDBOX_K8S_EGRESS_PROXY_NAMESPACE",
];

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;

    fn network(pairs: &[(&str, &str)]) -> Result<NetworkSettings, String> {
        let mut all = vec![("SANDBOX_TOKEN", "t")];
        all.extend_from_slice(pairs);
        config(&all, false)
            .map(|c| c.kubernetes.network)
            .map_err(|e| e.to_string())
    }

    /// Defaults (managed, kube-dns in kube-system, no node-local address), overrides, refusals.
    #[test]
    fn network_settings_read() {
        let n = network(&[]).unwrap();
        assert!(n.managed);
        assert_eq!(n.dns_namespace, "kube-system");
        assert_eq!(
            n.dns_selector,
            BTreeMap::from([("k8s-app".into(), "kube-dns".into())])
        );
        assert_eq!(n.node_local_dns, None);
        assert_eq!(
            (n.egress_ports, n.egress_proxy_namespace),
            (vec![3128, 8080], None)
        );
        let n = network(&[
            ("SANDBOX_K8S_EGRESS_PORTS", "3129, 443"),
            ("SANDBOX_K8S_EGRESS_PROXY_NAMESPACE", "tale-egress"),
            ("SANDBOX_K8S_NETWORK_POLICY", "unmanaged"),
            ("SANDBOX_K8S_DNS_NAMESPACE", "dns"),
            ("SANDBOX_K8S_DNS_SELECTOR", "app=coredns"),
            ("SANDBOX_K8S_NODE_LOCAL_DNS", "169.254.20.10"),
        ])
        .unwrap();
        assert!(!n.managed);
        assert_eq!(n.egress_ports, [3129, 443]);
        assert_eq!(n.egress_proxy_namespace.as_deref(), Some("tale-egress"));
        assert_eq!(n.dns_namespace, "dns");
        assert_eq!(n.dns_selector["app"], "coredns");
        assert_eq!(n.node_local_dns, Some("169.254.20.10".parse().unwrap()));
        for (name, value) in [
            ("SANDBOX_K8S_NETWORK_POLICY", "off"),
            ("SANDBOX_K8S_DNS_NAMESPACE", "Kube_System"),
            ("SANDBOX_K8S_DNS_SELECTOR", "kube-dns"),
            ("SANDBOX_K8S_NODE_LOCAL_DNS", "169.254.20.10/32"),
            ("SANDBOX_K8S_EGRESS_PORTS", "3128,http"),
            ("SANDBOX_K8S_EGRESS_PORTS", "0"),
            ("SANDBOX_K8S_EGRESS_PROXY_NAMESPACE", "Egress"),
        ] {
            let err = network(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }
}

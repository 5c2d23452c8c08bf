//! The session NetworkPolicy as applied: [`manifests::network_policy`] with its DNS rule's peers
//! narrowed from "any Pod in any namespace" to the resolver's Pods (namespace and labels
//! configurable) plus an optional node-local DNS cache address, and its in-cluster rule narrowed
//! from every port to the egress proxy's and gateway's ports, in the sessions namespace and the
//! proxy's own (typed values, no I/O).
use super::manifests::{self, labels, ManifestConfig, DNS_PORT, NAMESPACE_NAME_LABEL};
use crate::modes::spawner::config::NetworkSettings;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The namespace's session NetworkPolicy as the spawner applies it.
pub fn session_network_policy(config: &ManifestConfig, network: &NetworkSettings) -> NetworkPolicy {
    let mut policy = manifests::network_policy(config);
    if let Some(egress) = policy.spec.as_mut().and_then(|s| s.egress.as_mut()) {
        let is_dns = |rule: &NetworkPolicyEgressRule| {
            rule.ports.as_ref().is_some_and(|ports| {
                ports
                    .iter()
                    .any(|p| p.port == Some(IntOrString::Int(DNS_PORT)))
            })
        };
        // The namespace rule (every port of every Pod there) becomes the proxy's and gateway's
        // ports only, in the sessions namespace and the proxy's own.
        egress.retain(|rule| !is_dns(rule) && rule.ports.is_some());
        egress.insert(0, dns_rule(network));
        egress.push(in_cluster_rule(config, network));
    }
    policy
}

/// TCP to `egress_ports` on any Pod of the sessions namespace and of the egress proxy's.
pub fn in_cluster_rule(
    config: &ManifestConfig,
    network: &NetworkSettings,
) -> NetworkPolicyEgressRule {
    let mut namespaces = vec![config.namespace.clone()];
    namespaces.extend(
        network
            .egress_proxy_namespace
            .iter()
            .filter(|ns| **ns != config.namespace)
            .cloned(),
    );
    NetworkPolicyEgressRule {
        to: Some(
            namespaces
                .iter()
                .map(|ns| NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[(NAMESPACE_NAME_LABEL, ns)])),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(
            network
                .egress_ports
                .iter()
                .map(|port| NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(i32::from(*port))),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// DNS (53 UDP and TCP) to the resolver's Pods and the node-local cache address only.
pub fn dns_rule(network: &NetworkSettings) -> NetworkPolicyEgressRule {
    let mut to = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(labels(&[(NAMESPACE_NAME_LABEL, &network.dns_namespace)])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(network.dns_selector.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(ip) = network.node_local_dns {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        to.push(NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: format!("{ip}/{bits}"),
                except: None,
            }),
            ..Default::default()
        });
    }
    let port = |protocol: &str| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(DNS_PORT)),
        ..Default::default()
    };
    NetworkPolicyEgressRule {
        to: Some(to),
        ports: Some(vec![port("UDP"), port("TCP")]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifests::fixtures::config;
    use super::*;
    use serde_json::json;

    fn settings(node_local: Option<&str>) -> NetworkSettings {
        NetworkSettings {
            managed: true,
            dns_namespace: "kube-system".into(),
            dns_selector: labels(&[("k8s-app", "kube-dns")]),
            node_local_dns: node_local.map(|ip| ip.parse().unwrap()),
            egress_ports: vec![3128, 8080],
            egress_proxy_namespace: None,
        }
    }

    /// DNS goes only to the resolver's Pods (and the node-local address when set), never to any
    /// Pod of any namespace; the other rules are untouched.
    #[test]
    fn dns_only_to_the_resolver() {
        let plain = serde_json::to_value(manifests::network_policy(&config())).unwrap();
        let policy =
            serde_json::to_value(session_network_policy(&config(), &settings(None))).unwrap();
        let egress = policy["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2);
        assert_eq!(
            egress[0]["to"],
            json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
            }])
        );
        assert_eq!(
            egress[0]["ports"],
            json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}])
        );
        assert_eq!(
            egress[1],
            json!({
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tale-sandbox"}}}],
                "ports": [{"protocol": "TCP", "port": 3128}, {"protocol": "TCP", "port": 8080}]
            }),
            "only the proxy's and gateway's ports in the sessions namespace"
        );
        assert!(
            plain["spec"]["egress"][1].get("ports").is_none(),
            "the old rule: every port"
        );
        assert_eq!(policy["spec"]["ingress"], plain["spec"]["ingress"]);
        assert_ne!(
            plain["spec"]["egress"][0], egress[0],
            "the old rule allowed any Pod"
        );

        let mut own_proxy = settings(Some("169.254.20.10"));
        own_proxy.egress_proxy_namespace = Some("tale-egress".into());
        let policy = serde_json::to_value(session_network_policy(&config(), &own_proxy)).unwrap();
        assert_eq!(
            policy["spec"]["egress"][1]["to"][1],
            json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tale-egress"}}})
        );
        assert_eq!(
            policy["spec"]["egress"][0]["to"][1],
            json!({"ipBlock": {"cidr": "169.254.20.10/32"}})
        );
        let policy = serde_json::to_value(session_network_policy(
            &config(),
            &settings(Some("fd00::a")),
        ))
        .unwrap();
        assert_eq!(
            policy["spec"]["egress"][0]["to"][1]["ipBlock"]["cidr"],
            "fd00::a/128"
        );
    }
}

//! The session NetworkPolicy with DNS limited to the cluster resolver: [`manifests::network_policy`]
//! with its DNS rule's peers narrowed from "any Pod in any namespace" to the resolver's Pods
//! (namespace and labels configurable) plus an optional node-local DNS cache address (typed
//! values, no I/O).
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
        egress.retain(|rule| !is_dns(rule));
        egress.insert(0, dns_rule(network));
    }
    policy
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
        assert_eq!(egress[1], plain["spec"]["egress"][1], "other rules kept");
        assert_eq!(policy["spec"]["ingress"], plain["spec"]["ingress"]);
        assert_ne!(
            plain["spec"]["egress"][0], egress[0],
            "the old rule allowed any Pod"
        );

        let policy = serde_json::to_value(session_network_policy(
            &config(),
            &settings(Some("169.254.20.10")),
        ))
        .unwrap();
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

//! A session Pod placed for its profile: [`manifests::pod_on_claim`] with the profile's `imagePullSecrets`,
//! `nodeSelector`, tolerations, `priorityClassName`, `runtimeClassName` and image pull policy
//! (typed values, no I/O). Fields left unset stay absent, so the default Pod is unchanged.
use super::super::SessionSpec;
use super::manifests::{self, ManifestConfig};
use crate::modes::spawner::config::{PodPlacement, ProfilePlacements};
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod};

/// The Pod of `spec` on the workspace PVC `claim`, placed as its profile says.
pub fn session_pod(
    spec: &SessionSpec,
    config: &ManifestConfig,
    placements: &ProfilePlacements,
    claim: &str,
) -> Pod {
    let mut pod = manifests::pod_on_claim(spec, config, claim);
    apply(&mut pod, placements.for_profile(&spec.profile));
    pod
}

/// Writes `placement` into `pod`'s spec and every container.
pub fn apply(pod: &mut Pod, placement: &PodPlacement) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let non_empty = |v: bool| (!v).then_some(());
    spec.image_pull_secrets = non_empty(placement.image_pull_secrets.is_empty()).map(|()| {
        placement
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    });
    spec.node_selector =
        non_empty(placement.node_selector.is_empty()).map(|()| placement.node_selector.clone());
    spec.tolerations =
        non_empty(placement.tolerations.is_empty()).map(|()| placement.tolerations.clone());
    spec.priority_class_name = placement.priority_class.clone();
    spec.runtime_class_name = placement.runtime_class.clone();
    for container in &mut spec.containers {
        container.image_pull_policy = Some(placement.image_pull_policy.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifests::fixtures::{config, spec};
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;
    use std::collections::BTreeMap;

    fn placement(runtime_class: &str, pull_policy: &str) -> PodPlacement {
        PodPlacement {
            image_pull_secrets: vec!["regcred".into()],
            node_selector: BTreeMap::from([("pool".into(), runtime_class.into())]),
            tolerations: vec![Toleration {
                key: Some("sandbox".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }],
            priority_class: Some("tale-sessions".into()),
            runtime_class: Some(runtime_class.into()),
            image_pull_policy: pull_policy.into(),
        }
    }

    /// Each profile's Pod carries that profile's placement; an empty placement leaves the fields
    /// absent (the default Pod unchanged but for its pull policy).
    #[test]
    fn pods_follow_their_profile() {
        let placements = ProfilePlacements {
            default: placement("gvisor", "Always"),
            agent: placement("kata", "Never"),
        };
        let mut agent_spec = spec();
        agent_spec.profile = "agent".into();
        let pod = serde_json::to_value(session_pod(&agent_spec, &config(), &placements, "claim"))
            .unwrap();
        let s = &pod["spec"];
        assert_eq!(
            s["imagePullSecrets"],
            serde_json::json!([{"name": "regcred"}])
        );
        assert_eq!(s["nodeSelector"], serde_json::json!({"pool": "kata"}));
        assert_eq!(
            s["tolerations"],
            serde_json::json!([{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert_eq!(s["priorityClassName"], "tale-sessions");
        assert_eq!(s["runtimeClassName"], "kata");
        assert_eq!(s["containers"][0]["imagePullPolicy"], "Never");
        let mut default_spec = spec();
        default_spec.profile = "default".into();
        let pod = serde_json::to_value(session_pod(&default_spec, &config(), &placements, "claim"))
            .unwrap();
        assert_eq!(pod["spec"]["runtimeClassName"], "gvisor");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");

        let empty = PodPlacement {
            image_pull_policy: "IfNotPresent".into(),
            ..PodPlacement::default()
        };
        let mut plain = manifests::pod(&default_spec, &config());
        plain.spec.as_mut().unwrap().runtime_class_name = None;
        let mut placed = manifests::pod(&default_spec, &config());
        apply(&mut placed, &empty);
        assert_eq!(placed, plain);
        let text = serde_json::to_string(&placed).unwrap();
        for field in [
            "imagePullSecrets",
            "nodeSelector",
            "tolerations",
            "priorityClassName",
        ] {
            assert!(!text.contains(field), "{field} absent: {text}");
        }
    }
}

//! Where and how session Pods are scheduled and pulled, per profile: `imagePullSecrets`,
//! `nodeSelector`, tolerations, `priorityClassName`, `runtimeClassName` and the image pull policy.
//! Profiles are configured as today: `SANDBOX_K8S_<X>` (and `SANDBOX_RUNTIME_CLASS`) apply to
//! every profile, and the agent profile's `SANDBOX_AGENT_K8S_<X>` (`SANDBOX_AGENT_RUNTIME_CLASS`)
//! replaces it for agent sessions (`none` clears it there).
use super::kubernetes::{is_dns_subdomain, parse_label_selector};
use super::ConfigError;
use k8s_openapi::api::core::v1::Toleration;
use std::collections::BTreeMap;

/// Most tolerations one profile may carry.
pub const MAX_TOLERATIONS: usize = 32;
/// Most image pull Secrets one profile may name.
pub const MAX_IMAGE_PULL_SECRETS: usize = 16;
/// The pull policy when none is set: a node pulls the (tag-pinned) runtime image once.
pub const DEFAULT_IMAGE_PULL_POLICY: &str = "IfNotPresent";
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
const TOLERATION_OPERATORS: [&str; 2] = ["Equal", "Exists"];
const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Scheduling and pull settings of one profile's session Pods.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlacement {
    /// Secrets (in the sessions namespace) the kubelet pulls the runtime image with.
    pub image_pull_secrets: Vec<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub priority_class: Option<String>,
    /// `runtimeClassName` (e.g. gVisor or Kata for untrusted code); `None`: the node default.
    pub runtime_class: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
}

/// Nothing set but the default pull policy: what a configuration without any placement variable
/// gives each profile.
impl Default for PodPlacement {
    fn default() -> Self {
        PodPlacement {
            image_pull_secrets: vec![],
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            priority_class: None,
            runtime_class: None,
            image_pull_policy: DEFAULT_IMAGE_PULL_POLICY.into(),
        }
    }
}

// Every field compares totally (strings, maps, tolerations of strings and integers); k8s-openapi
// derives only `PartialEq` on `Toleration`.
impl Eq for PodPlacement {}

/// The placement of each profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilePlacements {
    pub default: PodPlacement,
    pub agent: PodPlacement,
}

impl ProfilePlacements {
    /// The placement of a profile by its wire name (`agent`; anything else is the default).
    pub fn for_profile(&self, profile: &str) -> &PodPlacement {
        if profile == crate::shared::protocol::spawner::Profile::Agent.as_str() {
            &self.agent
        } else {
            &self.default
        }
    }
}

/// The variables, as (every profile, agent profile) pairs.
const PULL_SECRETS: (&str, &str) = (
    "SANDBOX_K8S_IMAGE_PULL_SECRETS",
    "SANDBOX_AGENT_K8S_IMAGE_PULL_SECRETS",
);
const NODE_SELECTOR: (&str, &str) = (
    "SANDBOX_K8S_NODE_SELECTOR",
    "SANDBOX_AGENT_K8S_NODE_SELECTOR",
);
const TOLERATIONS: (&str, &str) = ("SANDBOX_K8S_TOLERATIONS", "SANDBOX_AGENT_K8S_TOLERATIONS");
const PRIORITY_CLASS: (&str, &str) = (
    "SANDBOX_K8S_PRIORITY_CLASS",
    "SANDBOX_AGENT_K8S_PRIORITY_CLASS",
);
const RUNTIME_CLASS: (&str, &str) = ("SANDBOX_RUNTIME_CLASS", "SANDBOX_AGENT_RUNTIME_CLASS");
const PULL_POLICY: (&str, &str) = (
    "SANDBOX_K8S_IMAGE_PULL_POLICY",
    "SANDBOX_AGENT_K8S_IMAGE_PULL_POLICY",
);

/// Every placement variable (only the kubernetes backend reads them).
pub const PLACEMENT_VARIABLES: &[&str] = &[
    PULL_SECRETS.0,
    PULL_SECRETS.1,
    NODE_SELECTOR.0,
    NODE_SELECTOR.1,
    TOLERATIONS.0,
    TOLERATIONS.1,
    PRIORITY_CLASS.0,
    PRIORITY_CLASS.1,
    RUNTIME_CLASS.1,
    PULL_POLICY.0,
    PULL_POLICY.1,
];

/// Reads both profiles' placement.
pub(super) fn profile_placements(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<ProfilePlacements, ConfigError> {
    let default = placement(get, None)?;
    let agent = placement(get, Some(&default))?;
    Ok(ProfilePlacements { default, agent })
}

/// One profile's placement: the agent's (`base` given) falls back to `base` per setting.
fn placement(
    get: &dyn Fn(&str) -> Option<String>,
    base: Option<&PodPlacement>,
) -> Result<PodPlacement, ConfigError> {
    // The value of a pair for this profile: `Some(None)` is "cleared" (`none`), `None` is unset.
    let value = |pair: (&'static str, &'static str)| -> (&'static str, Option<Option<String>>) {
        let name = if base.is_some() { pair.1 } else { pair.0 };
        let raw = get(name).filter(|v| !v.is_empty());
        (name, raw.map(|v| (v != "none").then_some(v)))
    };
    let bad = |name: &'static str, value: String, shape: &'static str| ConfigError::BadShape {
        name,
        value,
        shape,
    };

    let image_pull_secrets = match value(PULL_SECRETS) {
        (_, None) => base
            .map(|b| b.image_pull_secrets.clone())
            .unwrap_or_default(),
        (_, Some(None)) => Vec::new(),
        (name, Some(Some(text))) => {
            let names: Vec<String> = text.split(',').map(|n| n.trim().to_owned()).collect();
            if names.len() > MAX_IMAGE_PULL_SECRETS || !names.iter().all(|n| is_dns_subdomain(n)) {
                return Err(bad(
                    name,
                    text,
                    "comma-separated Secret names (at most 16; lowercase letters, digits, '-' and '.')",
                ));
            }
            names
        }
    };
    let node_selector = match value(NODE_SELECTOR) {
        (_, None) => base.map(|b| b.node_selector.clone()).unwrap_or_default(),
        (_, Some(None)) => BTreeMap::new(),
        (name, Some(Some(text))) => parse_label_selector(&text)
            .ok_or_else(|| bad(name, text, "comma-separated label=value pairs"))?,
    };
    let tolerations = match value(TOLERATIONS) {
        (_, None) => base.map(|b| b.tolerations.clone()).unwrap_or_default(),
        (_, Some(None)) => Vec::new(),
        (name, Some(Some(text))) => parse_tolerations(&text).ok_or_else(|| {
            bad(
                name,
                text,
                "a JSON array of at most 32 tolerations ({\"key\", \"operator\": Equal|Exists, \"value\", \"effect\": NoSchedule|PreferNoSchedule|NoExecute, \"tolerationSeconds\"})",
            )
        })?,
    };
    let class = |pair, inherited: Option<&Option<String>>, what: &'static str| match value(pair) {
        (_, None) => Ok(inherited.cloned().flatten()),
        (_, Some(None)) => Ok(None),
        // `runc` is the node default, as for the docker backend.
        (_, Some(Some(class))) if pair == RUNTIME_CLASS && class == "runc" => Ok(None),
        (_, Some(Some(class))) if is_dns_subdomain(&class) => Ok(Some(class)),
        (name, Some(Some(class))) => Err(bad(name, class, what)),
    };
    let priority_class = class(
        PRIORITY_CLASS,
        base.map(|b| &b.priority_class),
        "a PriorityClass name (lowercase letters, digits, '-' and '.')",
    )?;
    let runtime_class = class(
        RUNTIME_CLASS,
        base.map(|b| &b.runtime_class),
        "a RuntimeClass name (lowercase letters, digits, '-' and '.')",
    )?;
    let image_pull_policy = match value(PULL_POLICY) {
        (_, None) | (_, Some(None)) => base
            .map(|b| b.image_pull_policy.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE_PULL_POLICY.into()),
        (_, Some(Some(policy))) if PULL_POLICIES.contains(&policy.as_str()) => policy,
        (name, Some(Some(policy))) => {
            return Err(bad(name, policy, "Always, IfNotPresent or Never"))
        }
    };
    Ok(PodPlacement {
        image_pull_secrets,
        node_selector,
        tolerations,
        priority_class,
        runtime_class,
        image_pull_policy,
    })
}

/// A JSON array of tolerations with the operators and effects Kubernetes accepts; unknown fields
/// are refused (a typo must not silently drop a toleration's meaning).
fn parse_tolerations(text: &str) -> Option<Vec<Toleration>> {
    const FIELDS: [&str; 5] = ["key", "operator", "value", "effect", "tolerationSeconds"];
    let raw: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(text).ok()?;
    if raw.len() > MAX_TOLERATIONS
        || raw
            .iter()
            .any(|t| t.keys().any(|k| !FIELDS.contains(&k.as_str())))
    {
        return None;
    }
    let tolerations: Vec<Toleration> = serde_json::from_str(text).ok()?;
    let valid = tolerations.iter().all(|t| {
        let operator = t.operator.as_deref().unwrap_or("Equal");
        TOLERATION_OPERATORS.contains(&operator)
            && t.effect.as_deref().is_none_or(|e| TAINT_EFFECTS.contains(&e))
            // Exists takes no value; an empty key with Exists tolerates everything.
            && (operator == "Equal" || t.value.as_deref().is_none_or(str::is_empty))
            && (operator == "Exists" || t.key.as_deref().is_some_and(|k| !k.is_empty()))
            // tolerationSeconds only means something for NoExecute.
            && (t.toleration_seconds.is_none() || t.effect.as_deref() == Some("NoExecute"))
    });
    valid.then_some(tolerations)
}

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;

    fn placements(pairs: &[(&str, &str)]) -> Result<ProfilePlacements, String> {
        let mut all = vec![("SANDBOX_TOKEN", "t")];
        all.extend_from_slice(pairs);
        config(&all, false)
            .map(|c| c.kubernetes.placement)
            .map_err(|e| e.to_string())
    }

    /// Defaults: nothing set but the pull policy `IfNotPresent`, the same for both profiles.
    #[test]
    fn placement_defaults() {
        let p = placements(&[]).unwrap();
        let expected = PodPlacement {
            image_pull_policy: "IfNotPresent".into(),
            ..PodPlacement::default()
        };
        assert_eq!(expected.image_pull_secrets, Vec::<String>::new());
        assert!(expected.node_selector.is_empty() && expected.tolerations.is_empty());
        assert_eq!(
            (&expected.priority_class, &expected.runtime_class),
            (&None, &None)
        );
        assert_eq!((&p.default, &p.agent), (&expected, &expected));
    }

    /// Every setting applies to both profiles; the agent's own variable replaces it for agent
    /// sessions only, and `none` clears it there.
    #[test]
    fn agent_profile_overrides() {
        let p = placements(&[
            ("SANDBOX_K8S_IMAGE_PULL_SECRETS", "regcred, mirror.creds"),
            ("SANDBOX_K8S_NODE_SELECTOR", "pool=sandbox"),
            (
                "SANDBOX_K8S_TOLERATIONS",
                r#"[{"key":"sandbox","operator":"Equal","value":"yes","effect":"NoSchedule"}]"#,
            ),
            ("SANDBOX_K8S_PRIORITY_CLASS", "tale-sessions"),
            ("SANDBOX_RUNTIME_CLASS", "gvisor"),
            ("SANDBOX_K8S_IMAGE_PULL_POLICY", "Always"),
            ("SANDBOX_AGENT_RUNTIME_CLASS", "kata"),
            ("SANDBOX_AGENT_K8S_NODE_SELECTOR", "pool=agents,disk=ssd"),
            ("SANDBOX_AGENT_K8S_PRIORITY_CLASS", "none"),
            (
                "SANDBOX_AGENT_K8S_TOLERATIONS",
                r#"[{"operator":"Exists","effect":"NoExecute","tolerationSeconds":30}]"#,
            ),
        ])
        .unwrap();
        let d = &p.default;
        assert_eq!(d.image_pull_secrets, ["regcred", "mirror.creds"]);
        assert_eq!(d.node_selector["pool"], "sandbox");
        assert_eq!(d.tolerations[0].value.as_deref(), Some("yes"));
        assert_eq!(d.priority_class.as_deref(), Some("tale-sessions"));
        assert_eq!(d.runtime_class.as_deref(), Some("gvisor"));
        assert_eq!(d.image_pull_policy, "Always");
        let a = &p.agent;
        assert_eq!(a.image_pull_secrets, d.image_pull_secrets, "inherited");
        assert_eq!(a.image_pull_policy, "Always", "inherited");
        assert_eq!(a.node_selector.len(), 2);
        assert_eq!(a.priority_class, None, "cleared with none");
        assert_eq!(a.runtime_class.as_deref(), Some("kata"));
        assert_eq!(a.tolerations[0].toleration_seconds, Some(30));
        assert_eq!(p.for_profile("agent"), a);
        assert_eq!(p.for_profile("default"), d);
        let p = placements(&[
            ("SANDBOX_RUNTIME_CLASS", "gvisor"),
            ("SANDBOX_AGENT_RUNTIME_CLASS", "runc"),
        ])
        .unwrap();
        assert_eq!(p.agent.runtime_class, None, "runc is the node default");
    }

    /// Bad values are refused at boot, naming the variable.
    #[test]
    fn placement_errors() {
        let refused = |name: &str, value: &str| {
            let err = placements(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{name}={value}: {err}");
        };
        refused("SANDBOX_K8S_IMAGE_PULL_SECRETS", "Reg_Cred");
        refused(
            "SANDBOX_K8S_IMAGE_PULL_SECRETS",
            &vec!["s"; MAX_IMAGE_PULL_SECRETS + 1].join(","),
        );
        refused("SANDBOX_AGENT_K8S_NODE_SELECTOR", "pool");
        refused("SANDBOX_K8S_TOLERATIONS", "{}");
        refused(
            "SANDBOX_K8S_TOLERATIONS",
            r#"[{"key":"a","operator":"In"}]"#,
        );
        refused(
            "SANDBOX_K8S_TOLERATIONS",
            r#"[{"key":"a","efect":"NoSchedule"}]"#,
        );
        refused(
            "SANDBOX_K8S_TOLERATIONS",
            r#"[{"operator":"Equal","value":"x"}]"#,
        );
        refused(
            "SANDBOX_K8S_TOLERATIONS",
            r#"[{"key":"a","effect":"NoSchedule","tolerationSeconds":5}]"#,
        );
        refused(
            "SANDBOX_K8S_TOLERATIONS",
            &format!(
                "[{}]",
                vec![r#"{"operator":"Exists"}"#; MAX_TOLERATIONS + 1].join(",")
            ),
        );
        refused("SANDBOX_K8S_PRIORITY_CLASS", "High Priority");
        refused("SANDBOX_AGENT_RUNTIME_CLASS", "g visor");
        refused("SANDBOX_K8S_IMAGE_PULL_POLICY", "always");
        refused("SANDBOX_AGENT_K8S_IMAGE_PULL_POLICY", "Sometimes");
    }
}

//! How long the kubernetes backend waits before it heals or gives up on a session Pod:
//! `SANDBOX_K8S_NODE_LOST_TIMEOUT_MS`, `SANDBOX_K8S_ATTACH_TIMEOUT_MS` and
//! `SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS` (README, "Sessions heal (Kubernetes)").
use super::ConfigError;
use std::time::Duration;

/// A node whose `Ready` condition has not been `True` for this long has lost its Pods (the
/// node lifecycle controller's own default grace before it taints a node unreachable is 40 s).
pub const DEFAULT_K8S_NODE_LOST_TIMEOUT_MS: u64 = 60_000;
/// How long a starting Pod may wait for its workspace volume to be attached (a Multi-Attach: the
/// RWO volume still held by another node). Kubernetes' attach/detach controller force-detaches
/// from an unreachable node after 6 minutes; an out-of-service taint releases it at once.
pub const DEFAULT_K8S_ATTACH_TIMEOUT_MS: u64 = 120_000;
/// How long a starting Pod may retry pulling its image (`ErrImagePull`, `ImagePullBackOff`) before
/// the create fails: registries have outages and rate limits; a bad image name fails at once.
pub const DEFAULT_K8S_IMAGE_PULL_TIMEOUT_MS: u64 = 60_000;
/// Largest accepted value of the three timeouts (one hour).
pub const MAX_K8S_HEAL_TIMEOUT_MS: u64 = 3_600_000;

/// Timeouts of the kubernetes backend's healing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealSettings {
    /// How long a node must be not-Ready before its Pods count as lost.
    pub node_lost: Duration,
    /// Own deadline of a Multi-Attach wait (bounded by the create deadline too).
    pub attach: Duration,
    /// Own deadline of transient image pull errors (bounded by the create deadline too).
    pub image_pull: Duration,
}

impl Default for HealSettings {
    fn default() -> HealSettings {
        HealSettings {
            node_lost: Duration::from_millis(DEFAULT_K8S_NODE_LOST_TIMEOUT_MS),
            attach: Duration::from_millis(DEFAULT_K8S_ATTACH_TIMEOUT_MS),
            image_pull: Duration::from_millis(DEFAULT_K8S_IMAGE_PULL_TIMEOUT_MS),
        }
    }
}

/// The variables read here (kubernetes backend only).
pub const HEAL_VARIABLES: &[&str] = &[
    "SANDBOX_K8S_NODE_LOST_TIMEOUT_MS",
    "SANDBOX_K8S_ATTACH_TIMEOUT_MS",
    "SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS",
];

pub(super) fn heal_settings(
    number: &dyn Fn(&'static str, u64, u64, u64) -> Result<u64, ConfigError>,
) -> Result<HealSettings, ConfigError> {
    let ms = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
        number(name, default, 0, MAX_K8S_HEAL_TIMEOUT_MS).map(Duration::from_millis)
    };
    Ok(HealSettings {
        node_lost: ms(
            "SANDBOX_K8S_NODE_LOST_TIMEOUT_MS",
            DEFAULT_K8S_NODE_LOST_TIMEOUT_MS,
        )?,
        attach: ms(
            "SANDBOX_K8S_ATTACH_TIMEOUT_MS",
            DEFAULT_K8S_ATTACH_TIMEOUT_MS,
        )?,
        image_pull: ms(
            "SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS",
            DEFAULT_K8S_IMAGE_PULL_TIMEOUT_MS,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::SpawnerConfig;
    use super::*;

    /// Defaults when unset; values in milliseconds; out of range is refused by name.
    #[test]
    fn heal_timeouts() {
        let config = SpawnerConfig::from_env(|_| None, true).unwrap();
        assert_eq!(config.kubernetes.heal, HealSettings::default());
        let set = |name: &str, value: &str| {
            let (name, value) = (name.to_owned(), value.to_owned());
            SpawnerConfig::from_env(move |k| (k == name).then(|| value.clone()), true)
        };
        let config = set("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS", "1500").unwrap();
        assert_eq!(
            config.kubernetes.heal.node_lost,
            Duration::from_millis(1500)
        );
        let config = set("SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS", "0").unwrap();
        assert_eq!(config.kubernetes.heal.image_pull, Duration::ZERO);
        let err = set("SANDBOX_K8S_ATTACH_TIMEOUT_MS", "99999999")
            .unwrap_err()
            .to_string();
        assert!(err.contains("SANDBOX_K8S_ATTACH_TIMEOUT_MS"), "{err}");
    }
}

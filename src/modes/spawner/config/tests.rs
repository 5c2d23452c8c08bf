use super::*;
use std::collections::HashMap;

pub(super) fn config(pairs: &[(&str, &str)], insecure: bool) -> Result<SpawnerConfig, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    SpawnerConfig::from_env(|name| map.get(name).cloned(), insecure)
}

/// The token is mandatory unless explicitly in dev mode; defaults follow the original.
#[test]
fn token_and_defaults() {
    assert_eq!(config(&[], false).unwrap_err(), ConfigError::MissingToken);
    let dev = config(&[], true).unwrap();
    assert!(dev.token.is_none());
    let c = config(&[("SANDBOX_TOKEN", " t ")], false).unwrap();
    assert_eq!(c.token.as_deref(), Some(&b"t"[..]));
    assert_eq!(
        (c.port, c.backend, c.max_sessions, c.max_sessions_per_org),
        (8003, BackendKind::Docker, 16, 50)
    );
    assert_eq!(c.limits.max_idle_ms, 1_800_000);
    assert_eq!(c.agent.memory_bytes, 4 << 30);
    assert_eq!(c.agent.exec_user, (10001, 10001));
    assert_eq!(c.llm_gateway_url, "http://sandbox-llm-gateway:8080");
    let c = config(
        &[
            ("SANDBOX_TOKEN", "t"),
            ("SANDBOX_LLM_GATEWAY_URL", "https://gw/"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(c.llm_gateway_url, "https://gw");
}

/// The edge limits: documented defaults, each settable, a budget below one body refused.
#[test]
fn edge_limits() {
    let c = config(&[("SANDBOX_TOKEN", "t")], false).unwrap();
    assert_eq!(c.edge, EdgeLimits::default());
    let c = config(
        &[
            ("SANDBOX_TOKEN", "t"),
            ("SANDBOX_MAX_CONNECTIONS", "10"),
            ("SANDBOX_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS", "3"),
            ("SANDBOX_BODY_BUDGET_BYTES", "4194304"),
            ("SANDBOX_BODY_READ_TIMEOUT_MS", "1500"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(
        c.edge,
        EdgeLimits {
            max_connections: 10,
            max_preauth_connections_per_address: 3,
            body_budget_bytes: 4 << 20,
            body_read_timeout: std::time::Duration::from_millis(1500),
        }
    );
    let err = config(
        &[
            ("SANDBOX_TOKEN", "t"),
            ("SANDBOX_BODY_BUDGET_BYTES", "1000"),
        ],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("SANDBOX_BODY_BUDGET_BYTES"), "{err}");
}

/// Bad numbers and choices name the variable.
#[test]
fn errors_name_the_variable() {
    let base = [("SANDBOX_TOKEN", "t")];
    let with = |extra: (&'static str, &'static str)| {
        let mut pairs = base.to_vec();
        pairs.push(extra);
        config(&pairs, false).unwrap_err().to_string()
    };
    assert!(with(("SANDBOX_PORT", "abc")).contains("SANDBOX_PORT"));
    assert!(with(("SANDBOX_PORT", "70000")).contains("between 1 and 65535"));
    assert!(with(("SANDBOX_SESSION_MAX_IDLE_MS", "10")).contains("SANDBOX_SESSION_MAX_IDLE_MS"));
    assert!(with(("SANDBOX_BACKEND", "podman")).contains("SANDBOX_BACKEND"));
    assert!(with(("SANDBOX_AGENT_MEMORY", "lots")).contains("SANDBOX_AGENT_MEMORY"));
    assert!(with(("SANDBOX_AGENT_USER", "agent")).contains("uid:gid"));
    assert!(with(("SANDBOX_LLM_GATEWAY_URL", "gw:8080")).contains("SANDBOX_LLM_GATEWAY_URL"));
    let c = config(
        &[
            ("SANDBOX_TOKEN", "t"),
            ("SANDBOX_PORT", " "),
            ("SANDBOX_MAX_REQUEST_BODY_BYTES", "99999999"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(c.port, 8003);
    assert_eq!(c.max_request_body_bytes, RUNNERD_MAX_BODY_BYTES);
}

/// Disk quotas: on by default with documented sizes per profile, settable, bounded, and off
/// with `SANDBOX_DISK_QUOTAS=0`.
#[test]
fn disk_quotas() {
    let c = config(&[("SANDBOX_TOKEN", "t")], false).unwrap();
    let quota = c.disk_quota.clone().unwrap();
    assert_eq!(quota.dir, DEFAULT_DISK_QUOTA_DIR);
    assert_eq!(quota.helper_image, DEFAULT_RUNTIME_IMAGE);
    assert_eq!(quota.org_cache_bytes, DEFAULT_ORG_CACHE_QUOTA_MB << 20);
    assert_eq!(
        c.default_profile.disk_quota_bytes,
        DEFAULT_DISK_QUOTA_MB << 20
    );
    assert_eq!(c.agent.disk_quota_bytes, DEFAULT_AGENT_DISK_QUOTA_MB << 20);
    assert_eq!(
        c.agent.ephemeral_storage_bytes,
        DEFAULT_AGENT_EPHEMERAL_STORAGE_MB << 20
    );
    let c = config(
        &[
            ("SANDBOX_TOKEN", "t"),
            ("SANDBOX_DISK_QUOTA_MB", "64"),
            ("SANDBOX_AGENT_DISK_QUOTA_MB", "128"),
            ("SANDBOX_ORG_CACHE_QUOTA_MB", "32"),
            ("SANDBOX_DISK_QUOTA_DIR", "/srv/quota"),
            ("SANDBOX_DISK_QUOTA_HELPER_IMAGE", "helper:1"),
            ("SANDBOX_EPHEMERAL_STORAGE_MB", "100"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(c.default_profile.disk_quota_bytes, 64 << 20);
    assert_eq!(c.agent.disk_quota_bytes, 128 << 20);
    assert_eq!(c.default_profile.ephemeral_storage_bytes, 100 << 20);
    let quota = c.disk_quota.unwrap();
    assert_eq!(
        (
            quota.dir.as_str(),
            quota.helper_image.as_str(),
            quota.org_cache_bytes
        ),
        ("/srv/quota", "helper:1", 32 << 20)
    );
    let off = config(
        &[("SANDBOX_TOKEN", "t"), ("SANDBOX_DISK_QUOTAS", "0")],
        false,
    )
    .unwrap();
    assert!(off.disk_quota.is_none());
    for (name, value) in [
        ("SANDBOX_DISK_QUOTA_MB", "8"),
        ("SANDBOX_AGENT_DISK_QUOTA_MB", "99999999999"),
        ("SANDBOX_DISK_QUOTA_DIR", "relative/dir"),
        ("SANDBOX_DISK_QUOTA_DIR", "/a:/b"),
    ] {
        let err = config(&[("SANDBOX_TOKEN", "t"), (name, value)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
    }
}

/// Sizes as Docker writes them.
/// `SANDBOX_STACK_LABEL` is unset by default, taken as given when it is a label value, and
/// refused (named) otherwise.
#[test]
fn stack_label() {
    let c = config(&[("SANDBOX_TOKEN", "t")], false).unwrap();
    assert_eq!(c.stack_label, None);
    let c = config(
        &[("SANDBOX_TOKEN", "t"), ("SANDBOX_STACK_LABEL", "qs-1")],
        false,
    )
    .unwrap();
    assert_eq!(c.stack_label.as_deref(), Some("qs-1"));
    for bad in ["a b", "x=y", "é"] {
        let err = config(
            &[("SANDBOX_TOKEN", "t"), ("SANDBOX_STACK_LABEL", bad)],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SANDBOX_STACK_LABEL"), "{bad}: {err}");
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512m"), Some(512 << 20));
    assert_eq!(parse_size("4G"), Some(4 << 30));
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("1.5g"), None);
    assert_eq!(parse_size("x"), None);
}

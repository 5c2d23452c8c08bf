use super::fixtures::{config, spec};
use super::*;

/// Names: plain for lowercase DNS-safe ids, hashed in their own namespace otherwise (no longer
/// the SHA-1 prefix, which collided with plain 16-hex ids); Secret and PVC suffixed.
#[test]
fn names() {
    assert_eq!(pod_name("abc"), "tale-sbx-ses-abc");
    assert_eq!(secret_name("abc"), "tale-sbx-ses-abc-spec");
    assert_eq!(pvc_name("abc"), "tale-sbx-ses-abc-ws");
    assert!(pod_name("Abc").starts_with("tale-sbx-hash-"));
    assert!(pod_name(&"X_".repeat(32)).len() <= 63);
}

/// Docker-style sizes map to exact binary quantities; CPUs to cores or millicores.
#[test]
fn quantities() {
    let q = |bytes| memory_quantity(bytes).0;
    assert_eq!(q(4 << 30), "4Gi");
    assert_eq!(q(1500 << 20), "1500Mi");
    assert_eq!(q(2 << 40), "2Ti");
    assert_eq!(q(1536), "1536", "1.5 KiB has no exact binary suffix");
    assert_eq!(q(3 << 10), "3Ki");
    assert_eq!(q(1000), "1000");
    assert_eq!(q(0), "0");
    assert_eq!(cpu_quantity(2000).0, "2");
    assert_eq!(cpu_quantity(500).0, "500m");
    assert_eq!(cpu_quantity(1500).0, "1500m");
}

/// The Pod carries identity and limits as annotations and the full hardening.
#[test]
fn pod_is_labelled_and_hardened() {
    let pod = pod(&spec(), &config());
    let meta = &pod.metadata;
    assert_eq!(meta.name.as_deref(), Some(pod_name("Ses_1").as_str()));
    assert!(pod_name("Ses_1").starts_with("tale-sbx-hash-"));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels[SESSION_LABEL], "1");
    assert_eq!(labels[ROLE_LABEL], "session");
    let notes = meta.annotations.as_ref().unwrap();
    assert_eq!(notes[ANNOTATION_SESSION_ID], "Ses_1");
    assert_eq!(notes[ANNOTATION_ORGANIZATION_ID], "org-1");
    assert_eq!(notes[ANNOTATION_PROFILE], "agent");
    assert_eq!(notes[ANNOTATION_CREATED_AT], "1700000000000");
    assert_eq!(notes[ANNOTATION_TTL_MS], "3600000");
    assert_eq!(notes[ANNOTATION_IDLE_TIMEOUT_MS], "600000");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    let pod_security = spec.security_context.as_ref().unwrap();
    assert_eq!(pod_security.fs_group, Some(10002));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let c = &spec.containers[0];
    assert_eq!(c.name, "runner");
    assert_eq!(
        c.command.as_ref().unwrap(),
        &["/usr/local/bin/tale", "runnerd"]
    );
    let s = c.security_context.as_ref().unwrap();
    assert_eq!((s.run_as_user, s.run_as_group), (Some(10001), Some(10002)));
    assert_eq!(s.run_as_non_root, Some(true));
    assert_eq!(s.read_only_root_filesystem, Some(true));
    assert_eq!(s.allow_privilege_escalation, Some(false));
    assert_eq!(
        s.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &["ALL"]
    );
    let resources = c.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("500m", "1Gi")
    );
    assert_eq!(
        (limits["cpu"].0.as_str(), limits["memory"].0.as_str()),
        ("2", "4Gi")
    );
    assert_eq!(
        (
            requests["ephemeral-storage"].0.as_str(),
            limits["ephemeral-storage"].0.as_str()
        ),
        ("256Mi", "1Gi")
    );
    let env: BTreeMap<&str, Option<&str>> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env["TALE_RUNNERD_TOKEN_SHA256"], None, "from the Secret");
    assert_eq!(env["TALE_WORKSPACE_ROOT"], Some("/workspace"));
    assert_eq!(env["HTTPS_PROXY"], Some("http://sandbox-egress:3128"));
    assert_eq!(env["NO_PROXY"], Some("127.0.0.1,localhost"));
    assert!(!env.contains_key("TALE_RUNNERD_TOKEN"));
    assert_eq!(env["TALE_RUNNERD_TLS_CERT"], None, "from the Secret");
    assert_eq!(env["TALE_RUNNERD_TLS_KEY"], None, "from the Secret");
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"), "runnerd serves TLS");
    let volumes = spec.volumes.as_ref().unwrap();
    let tmp = volumes.iter().find(|v| v.name == "tmp").unwrap();
    let tmp = tmp.empty_dir.as_ref().unwrap();
    assert_eq!(tmp.medium.as_deref(), Some("Memory"));
    assert_eq!(tmp.size_limit.as_ref().unwrap().0, "512Mi");
    let json = serde_json::to_string(&pod).unwrap();
    assert!(
        !json.contains("secret-token"),
        "the token never enters the Pod"
    );
    assert!(
        !json.contains("PRIVATE KEY"),
        "the TLS key is in the Secret only"
    );
}

/// Requests never exceed the profile's limits (the API would refuse the Pod).
#[test]
fn requests_are_capped_at_limits() {
    let mut spec = spec();
    spec.resources.cpus = 0.25;
    spec.resources.memory_bytes = 512 << 20;
    let mut config = config();
    config.runtime_class = None;
    config.egress_proxy = None;
    let pod = pod(&spec, &config);
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("250m", "512Mi")
    );
    assert_eq!(pod.spec.as_ref().unwrap().runtime_class_name, None);
    assert!(!c.env.iter().flatten().any(|e| e.name.contains("PROXY")));
}

/// The Secret holds only the token's digest and runnerd's TLS certificate and key; the PVC is
/// sized and classed.
#[test]
fn secret_and_pvc() {
    let secret = secret(&spec(), &config());
    let data = secret.string_data.as_ref().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(
        data[TOKEN_DIGEST_KEY],
        crate::shared::hmac::sha256_hex(b"secret-token")
    );
    let tls = spec().runnerd_tls.unwrap();
    assert_eq!(data[TLS_CERT_KEY], tls.cert_pem());
    assert_eq!(data[TLS_KEY_KEY], tls.key_pem());
    let pvc = pvc(&spec(), &config());
    assert_eq!(pvc.metadata.labels.as_ref().unwrap()[WORKSPACE_LABEL], "1");
    let pvc_spec = pvc.spec.as_ref().unwrap();
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        pvc_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "4Gi"
    );
}

/// The PVC is the profile's disk quota, capped by the workspace size limit; the
/// `ephemeral-storage` request never exceeds a small limit.
#[test]
fn pvc_and_ephemeral_storage_follow_the_profile() {
    let storage = |pvc: PersistentVolumeClaim| {
        pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"]
            .0
            .clone()
    };
    let mut small = spec();
    small.resources.disk_quota_bytes = 64 << 20;
    small.resources.ephemeral_storage_bytes = 100 << 20;
    assert_eq!(storage(pvc(&small, &config())), "64Mi");
    let mut big = spec();
    big.resources.disk_quota_bytes = 100 << 30;
    assert_eq!(storage(pvc(&big, &config())), "4Gi");
    let pod = pod(&small, &config());
    let resources = pod.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["ephemeral-storage"].0, "100Mi");
    assert_eq!(resources.limits.unwrap()["ephemeral-storage"].0, "100Mi");
}

/// The NetworkPolicy admits runnerd traffic from the spawner's Pods only.
#[test]
fn network_policy_rules() {
    let policy = network_policy(&config());
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()[ROLE_LABEL],
        "session"
    );
    let ingress = &spec.ingress.unwrap()[0];
    let from = &ingress.from.as_ref().unwrap()[0];
    assert_eq!(
        from.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/name"],
        "tale-spawner"
    );
    assert_eq!(
        from.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[NAMESPACE_NAME_LABEL],
        "tale"
    );
    assert_eq!(
        ingress.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(8200))
    );
    let egress = spec.egress.unwrap();
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0].ports.as_ref().unwrap().len(), 2);
}

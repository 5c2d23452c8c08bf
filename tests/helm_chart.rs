//! The Helm chart `helm/tale`, linted (`--strict`) and rendered by Helm's own engine: the helm v4
//! SDK in the `helm-python-sdk` wheel, which scripts/setup.sh installs into /opt/tale-helm-sdk
//! (Debian ships no helm binary; `TALE_HELM_PYTHON` names another interpreter that has it). The
//! rendered objects are checked against the spawner itself: its Role grants exactly the verbs the
//! backend uses, and its env parses with the spawner's own configuration reader.
//! Every rendered object is validated against the official Kubernetes OpenAPI schemas (strict, the
//! oldest and newest supported versions; `support::k8s_schema`).
//! These tests FAIL (never skip) when that interpreter is missing.
mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tale::modes::spawner::backend::BackendKind;
use tale::modes::spawner::config::SpawnerConfig;

const RELEASE: &str = "tale";
const RELEASE_NAMESPACE: &str = "tale-system";

struct Rendered {
    lint: Value,
    documents: Vec<Value>,
    /// NOTES.txt as rendered.
    notes: String,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.documents
            .iter()
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {:#?}", self.documents))
    }
}

fn render(values: Value) -> Rendered {
    try_render(values).unwrap_or_else(|e| panic!("helm render failed: {e}"))
}

/// Renders the chart, or Helm's error (e.g. values that break values.schema.json).
fn try_render(values: Value) -> Result<Rendered, String> {
    let python = std::env::var("TALE_HELM_PYTHON")
        .unwrap_or_else(|_| "/opt/tale-helm-sdk/bin/python".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&python)
        .arg(root.join("scripts/helm-render.py"))
        .arg(root.join("helm/tale"))
        .args([RELEASE, RELEASE_NAMESPACE, &values.to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{python}: {e}; scripts/setup.sh installs helm-python-sdk into /opt/tale-helm-sdk"
            )
        });
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let documents: Vec<Value> = parsed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["object"].clone())
        .collect();
    // Every rendered object, whatever the values, fits the official Kubernetes schemas.
    support::k8s_schema::assert_valid(&documents);
    Ok(Rendered {
        lint: parsed["lint"].clone(),
        documents,
        notes: parsed["notes"].as_str().unwrap_or_default().to_owned(),
    })
}

/// The spawner container's env: literal values, and `secretKeyRef`s as "secret/key".
fn env_of(deployment: &Value) -> BTreeMap<String, String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(value) => value.to_owned(),
                None => {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    format!(
                        "secret:{}/{}",
                        r["name"].as_str().unwrap(),
                        r["key"].as_str().unwrap()
                    )
                }
            };
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// The Role's rules as sorted (group, resource, sorted verbs).
fn role_rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut rules = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                let mut verbs: Vec<String> = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                verbs.sort();
                rules.push((
                    group.as_str().unwrap().to_owned(),
                    resource.as_str().unwrap().to_owned(),
                    verbs,
                ));
            }
        }
    }
    rules.sort();
    rules
}

/// Default values: lint clean, every object there, RBAC exact, and the spawner's env is a valid
/// kubernetes configuration that matches the chart's own labels, namespaces and Services.
#[test]
fn default_chart() {
    let chart = render(json!({}));
    assert_eq!(chart.lint["errors"], json!([]), "{}", chart.lint);
    let findings: Vec<&Value> = chart.lint["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_u64() >= Some(2))
        .collect();
    assert!(findings.is_empty(), "lint warnings or errors: {findings:?}");

    let mut kinds: Vec<&str> = chart
        .documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "Deployment",
            "Deployment",
            "Namespace",
            "Namespace",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount"
        ]
    );

    let role = chart.named("Role", "tale-spawner");
    assert_eq!(
        role["metadata"]["namespace"], "tale-sandbox",
        "namespaced in the sessions namespace"
    );
    assert_eq!(
        role_rules(role),
        support::rbac::rules(),
        "exactly the verbs the backend uses"
    );
    assert!(
        !role.to_string().contains("exec"),
        "never pods/exec: {role}"
    );
    assert!(chart.of_kind("ClusterRole").is_empty());
    let binding = chart.named("RoleBinding", "tale-spawner");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "tale-spawner", "namespace": RELEASE_NAMESPACE})
    );

    let spawner = chart.named("Deployment", "tale-spawner");
    let pod = &spawner["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "tale-spawner");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let env = env_of(spawner);
    assert_eq!(env["SANDBOX_BACKEND"], "kubernetes");
    assert_eq!(env["SANDBOX_TOKEN"], "secret:tale-token/token");
    assert!(
        chart.of_kind("Secret").is_empty(),
        "the chart never generates a token (it would change on every render)"
    );
    assert!(
        chart.notes.contains("create secret generic tale-token"),
        "NOTES.txt says how to create the token Secret: {}",
        chart.notes
    );

    // The env as the spawner reads it (the token stands in for the Secret's value).
    let lookup: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if v.starts_with("secret:") {
                    "from-secret".into()
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    let config = SpawnerConfig::from_env(|name| lookup.get(name).cloned(), false)
        .expect("the chart's env is a valid configuration");
    assert_eq!(config.backend, BackendKind::Kubernetes);
    let k = &config.kubernetes;
    assert_eq!(k.namespace, "tale-sandbox");
    assert_eq!(k.spawner_namespace.as_deref(), Some(RELEASE_NAMESPACE));
    let pod_labels = pod["metadata"]["labels"].as_object().unwrap();
    for (key, value) in &k.spawner_selector {
        assert_eq!(
            pod_labels.get(key).and_then(Value::as_str),
            Some(value.as_str()),
            "spawner Pods carry {key}={value}"
        );
    }
    let service = chart.named("Service", "tale-spawner");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], 8003);
    assert_eq!(u64::from(config.port), 8003);
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "the Service selects the spawner Pods"
        );
    }

    // Sessions reach the egress proxy Service in its own namespace.
    let egress_service = chart.named("Service", "tale-egress");
    assert_eq!(egress_service["metadata"]["namespace"], "tale-egress");
    assert_eq!(
        config.egress_proxy.as_deref(),
        Some("http://tale-egress.tale-egress.svc:3128")
    );
    let egress = chart.named("Deployment", "tale-egress");
    let egress_container = &egress["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        egress_container["command"],
        json!(["/usr/local/bin/tale", "egress-proxy", "run", "--no-dns"])
    );
    assert_eq!(
        egress_container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        chart.named("Namespace", "tale-sandbox")["metadata"]["annotations"]
            ["helm.sh/resource-policy"],
        "keep"
    );
}

/// An existing token Secret, no egress proxy, no namespace, a storage and runtime class, a cap.
#[test]
fn chart_options() {
    let chart = render(json!({
        "token": {"existingSecret": "platform-tale", "existingSecretKey": "sandbox-token"},
        "egressProxy": {"enabled": false},
        "sessions": {"createNamespace": false, "namespace": "agents", "storageClass": "fast-ssd", "runtimeClass": "gvisor"},
        "spawner": {"limits": {"maxSessions": 64}},
    }));
    assert_eq!(chart.lint["errors"], json!([]), "{}", chart.lint);
    assert!(
        chart.of_kind("Secret").is_empty(),
        "the existing Secret is used"
    );
    assert!(chart.of_kind("Namespace").is_empty());
    assert_eq!(chart.of_kind("Deployment").len(), 1, "no egress proxy");
    assert_eq!(
        chart.named("Role", "tale-spawner")["metadata"]["namespace"],
        "agents"
    );
    let env = env_of(chart.named("Deployment", "tale-spawner"));
    assert_eq!(env["SANDBOX_TOKEN"], "secret:platform-tale/sandbox-token");
    let lookup: HashMap<String, String> = env.into_iter().collect();
    let config = SpawnerConfig::from_env(|name| lookup.get(name).cloned(), false).unwrap();
    assert_eq!(config.egress_proxy, None, "SANDBOX_EGRESS_PROXY=none");
    assert_eq!(config.max_sessions, 64);
    let k = &config.kubernetes;
    assert_eq!(
        (
            k.namespace.as_str(),
            k.storage_class.as_deref(),
            k.runtime_class.as_deref()
        ),
        ("agents", Some("fast-ssd"), Some("gvisor"))
    );
    assert_eq!(
        config.tls.api, None,
        "plain HTTP unless a TLS Secret is named"
    );
    assert!(
        config.tls.runnerd,
        "runnerd traffic is always TLS on kubernetes"
    );
}

/// `tls.existingSecret`: the spawner reads its certificate and key from that Secret, mounted
/// read-only and readable by its group only, and is probed over HTTPS.
#[test]
fn chart_tls() {
    let chart = render(json!({"tls": {"existingSecret": "tale-api-tls"}}));
    assert_eq!(chart.lint["errors"], json!([]), "{}", chart.lint);
    let deployment = chart.named("Deployment", "tale-spawner");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/tale/tls");
    assert_eq!(container["volumeMounts"][0]["readOnly"], true);
    let volume = &pod["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], "tale-api-tls");
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 65534);
    let env = env_of(deployment);
    let lookup: HashMap<String, String> = env.into_iter().collect();
    let config = SpawnerConfig::from_env(|name| lookup.get(name).cloned(), false).unwrap();
    let files = config.tls.api.expect("the API serves TLS");
    assert_eq!(
        files.cert_file,
        std::path::PathBuf::from("/etc/tale/tls/tls.crt")
    );
    assert_eq!(
        files.key_file,
        std::path::PathBuf::from("/etc/tale/tls/tls.key")
    );
}

/// The schema check is strict and real: a rendered Deployment with a misspelt field, a Service
/// port given as a string and an unknown kind are each rejected, in every checked version.
#[test]
fn schema_check_rejects_invalid_objects() {
    let chart = render(json!({}));
    let mut deployment = chart.named("Deployment", "tale-spawner").clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    let mut service = chart.named("Service", "tale-spawner").clone();
    service["spec"]["ports"][0]["port"] = json!("8003");
    let unknown =
        json!({"apiVersion": "tale.dev/v1", "kind": "Sandbox", "metadata": {"name": "x"}});
    for object in [deployment, service, unknown] {
        let report = support::k8s_schema::validate(std::slice::from_ref(&object));
        let errors = report["errors"].as_array().unwrap();
        assert_eq!(
            errors.len(),
            support::k8s_schema::KUBERNETES_VERSIONS.len(),
            "rejected in every version: {report}"
        );
    }
}

/// The spawner's configuration as it reads the chart's env (Secret refs stand in as text).
fn spawner_config(chart: &Rendered) -> SpawnerConfig {
    let lookup: HashMap<String, String> = env_of(chart.named("Deployment", "tale-spawner"))
        .into_iter()
        .collect();
    SpawnerConfig::from_env(|name| lookup.get(name).cloned(), false)
        .expect("the chart's env is a valid configuration")
}

/// Rendering is deterministic: two renders of the same values give the same manifests (no
/// generated token, nothing random), with and without a token value.
#[test]
fn renders_are_stable() {
    for values in [
        json!({}),
        json!({"token": {"value": "0123456789abcdef0123456789abcdef-kept"}, "spawner": {"replicas": 3}}),
    ] {
        let (first, second) = (render(values.clone()), render(values.clone()));
        assert_eq!(first.documents, second.documents, "values {values}");
        assert_eq!(first.notes, second.notes);
    }
    let chart = render(json!({"token": {"value": "0123456789abcdef0123456789abcdef-kept"}}));
    let secret = chart.named("Secret", "tale-token");
    assert_eq!(
        secret["data"]["token"],
        base64_simd::STANDARD.encode_to_string("0123456789abcdef0123456789abcdef-kept")
    );
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        env_of(chart.named("Deployment", "tale-spawner"))["SANDBOX_TOKEN"],
        "secret:tale-token/token"
    );
}

/// values.schema.json refuses bad values before anything renders, naming the value.
#[test]
fn schema_rejects_bad_values() {
    for (values, path) in [
        (json!({"image": {"tag": "latest"}}), "/image/tag"),
        (
            json!({"egressProxy": {"image": {"tag": "latest"}}}),
            "/egressProxy/image/tag",
        ),
        (
            json!({"runtimeImage": "tale-sandbox-runtime:latest"}),
            "/runtimeImage",
        ),
        (
            json!({"runtimeImage": "tale-sandbox-runtime"}),
            "/runtimeImage",
        ),
        (json!({"spawner": {"replicas": "two"}}), "/spawner/replicas"),
        (json!({"spawner": {"replicas": 0}}), "/spawner/replicas"),
        (
            json!({"spawner": {"limits": {"maxSessions": 0}}}),
            "/spawner/limits/maxSessions",
        ),
        (
            json!({"spawner": {"limits": {"createTimeoutMs": "3m"}}}),
            "/spawner/limits/createTimeoutMs",
        ),
        (
            json!({"sessions": {"namespace": "Tale_Sandbox"}}),
            "/sessions/namespace",
        ),
        (
            json!({"sessions": {"imagePullPolicy": "always"}}),
            "/sessions/imagePullPolicy",
        ),
        (
            json!({"sessions": {"tolerations": [{"key": "a", "operator": "In"}]}}),
            "/sessions/tolerations/0/operator",
        ),
        (
            json!({"sessions": {"agent": {"runtimeClass": "g visor"}}}),
            "/sessions/agent/runtimeClass",
        ),
        (json!({"token": {"value": "short"}}), "/token/value"),
        (
            json!({"sessions": {"networkPolicy": {"managed": "no"}}}),
            "/sessions/networkPolicy/managed",
        ),
        (json!({"spawner": {"replica": 2}}), "/spawner"),
        (json!({"tokn": {}}), "tokn"),
    ] {
        let err = match try_render(values.clone()) {
            Ok(_) => panic!("values {values} were accepted"),
            Err(err) => err,
        };
        assert!(
            err.contains("schema") && err.contains(path),
            "values {values}: {err}"
        );
    }
}

/// Images are pinned to the chart's appVersion unless a tag is given; never `latest`.
#[test]
fn images_are_pinned() {
    let app_version = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helm/tale/Chart.yaml"),
    )
    .unwrap()
    .lines()
    .find_map(|l| l.strip_prefix("appVersion: "))
    .unwrap()
    .trim_matches('"')
    .to_owned();
    let chart = render(json!({}));
    let image_of = |name: &str| {
        chart.named("Deployment", name)["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        image_of("tale-spawner"),
        format!("tale-sandbox:{app_version}")
    );
    assert_eq!(
        image_of("tale-egress"),
        format!("tale-sandbox-egress:{app_version}")
    );
    assert_eq!(
        spawner_config(&chart).runtime_image,
        format!("tale-sandbox-runtime:{app_version}")
    );
    let chart = render(
        json!({"image": {"tag": "1.2.3"}, "runtimeImage": "registry.example/rt@sha256:0000000000000000000000000000000000000000000000000000000000000000"}),
    );
    assert_eq!(
        chart.named("Deployment", "tale-spawner")["spec"]["template"]["spec"]["containers"][0]
            ["image"],
        "tale-sandbox:1.2.3"
    );
    assert!(spawner_config(&chart).runtime_image.contains("@sha256:"));
    for document in &chart.documents {
        assert!(!document.to_string().contains(":latest"), "{document}");
    }
}

/// A PodDisruptionBudget and topology spread exist exactly when there is more than one replica;
/// every object carries an `app.kubernetes.io/component` label.
#[test]
fn replicas_bring_a_disruption_budget() {
    let single = render(json!({}));
    assert!(single.of_kind("PodDisruptionBudget").is_empty());
    let pod_spec = |chart: &Rendered| {
        chart.named("Deployment", "tale-spawner")["spec"]["template"]["spec"].clone()
    };
    assert!(pod_spec(&single).get("topologySpreadConstraints").is_none());

    let chart = render(json!({"spawner": {"replicas": 3}}));
    let pdb = chart.named("PodDisruptionBudget", "tale-spawner");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let deployment = chart.named("Deployment", "tale-spawner");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[key], value,
            "the budget selects the spawner Pods"
        );
    }
    let spread = pod_spec(&chart)["topologySpreadConstraints"].clone();
    let keys: Vec<&str> = spread
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    for constraint in spread.as_array().unwrap() {
        assert_eq!(constraint["whenUnsatisfiable"], "ScheduleAnyway");
        assert_eq!(
            constraint["labelSelector"]["matchLabels"],
            pdb["spec"]["selector"]["matchLabels"]
        );
    }
    assert!(
        chart.notes.contains("PodDisruptionBudget"),
        "{}",
        chart.notes
    );

    let chart = render(
        json!({"spawner": {"replicas": 2}, "token": {"value": "0123456789abcdef0123456789abcdef"}}),
    );
    for document in &chart.documents {
        let component = &document["metadata"]["labels"]["app.kubernetes.io/component"];
        assert!(component.is_string(), "a component label: {document}");
        if let Some(template) = document["spec"]["template"]["metadata"].as_object() {
            assert_eq!(
                &template["labels"]["app.kubernetes.io/component"],
                component
            );
        }
    }
}

/// Caps, timeouts, per-profile session placement and the NetworkPolicy settings are values that
/// reach the spawner's own configuration; NOTES.txt says how to reach the API and check its health.
#[test]
fn limits_and_placement_are_values() {
    let chart = render(json!({
        "spawner": {"limits": {
            "maxSessions": 40, "maxSessionsPerOrg": 7, "sessionMaxLifetimeMs": 7200000,
            "sessionMaxIdleMs": 900000, "execDefaultTimeoutMs": 120000,
            "execMaxTimeoutMs": 3600000, "createTimeoutMs": 240000, "sweepIntervalMs": 30000
        }},
        "sessions": {
            "imagePullSecrets": ["regcred", "mirror"],
            "nodeSelector": {"pool": "sandbox"},
            "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "tale-sessions",
            "runtimeClass": "gvisor",
            "imagePullPolicy": "Always",
            "networkPolicy": {"managed": false, "dnsNamespace": "dns", "dnsSelector": {"app": "coredns"}, "nodeLocalDNS": "169.254.20.10"},
            "heal": {"nodeLostTimeoutMs": 90000, "attachTimeoutMs": 30000, "imagePullTimeoutMs": 0},
            "agent": {"runtimeClass": "kata", "nodeSelector": {"pool": "agents"}, "priorityClassName": "none"}
        },
        "tls": {"existingSecret": "tale-api-tls"}
    }));
    let config = spawner_config(&chart);
    assert_eq!((config.max_sessions, config.max_sessions_per_org), (40, 7));
    assert_eq!(
        (config.limits.max_lifetime_ms, config.limits.max_idle_ms),
        (7_200_000, 900_000)
    );
    assert_eq!(
        (
            config.limits.exec_default_timeout_ms,
            config.limits.exec_max_timeout_ms
        ),
        (120_000, 3_600_000)
    );
    assert_eq!(
        (config.create_timeout_ms, config.sweep_interval_ms),
        (240_000, 30_000)
    );
    let placement = &config.kubernetes.placement;
    let d = &placement.default;
    assert_eq!(d.image_pull_secrets, ["regcred", "mirror"]);
    assert_eq!(d.node_selector["pool"], "sandbox");
    assert_eq!(d.tolerations[0].key.as_deref(), Some("sandbox"));
    assert_eq!(d.priority_class.as_deref(), Some("tale-sessions"));
    assert_eq!(d.runtime_class.as_deref(), Some("gvisor"));
    assert_eq!(d.image_pull_policy, "Always");
    let a = &placement.agent;
    assert_eq!(a.runtime_class.as_deref(), Some("kata"));
    assert_eq!(a.node_selector["pool"], "agents");
    assert_eq!(a.priority_class, None);
    assert_eq!(a.image_pull_secrets, d.image_pull_secrets, "inherited");
    let heal = &config.kubernetes.heal;
    assert_eq!(
        (heal.node_lost, heal.attach, heal.image_pull),
        (
            Duration::from_secs(90),
            Duration::from_secs(30),
            Duration::ZERO
        )
    );
    let network = &config.kubernetes.network;
    assert!(!network.managed);
    assert_eq!(network.dns_namespace, "dns");
    assert_eq!(network.dns_selector["app"], "coredns");
    assert_eq!(
        network.node_local_dns,
        Some("169.254.20.10".parse().unwrap())
    );

    // The defaults match the spawner's own defaults.
    let defaults = spawner_config(&render(json!({})));
    let unset = SpawnerConfig::from_env(
        |name| (name == "SANDBOX_TOKEN").then(|| "t".to_owned()),
        false,
    )
    .unwrap();
    assert_eq!(
        (
            defaults.max_sessions,
            defaults.max_sessions_per_org,
            defaults.create_timeout_ms,
            defaults.sweep_interval_ms
        ),
        (
            unset.max_sessions,
            unset.max_sessions_per_org,
            unset.create_timeout_ms,
            unset.sweep_interval_ms
        )
    );
    let limits = |c: &SpawnerConfig| {
        let l = c.limits;
        (
            l.max_lifetime_ms,
            l.max_idle_ms,
            l.exec_default_timeout_ms,
            l.exec_max_timeout_ms,
        )
    };
    assert_eq!(limits(&defaults), limits(&unset));
    assert_eq!(defaults.kubernetes.placement, unset.kubernetes.placement);
    // The same network settings but the proxy's own namespace, which only the chart creates.
    let mut network = defaults.kubernetes.network.clone();
    assert_eq!(
        network.egress_proxy_namespace.take().as_deref(),
        Some("tale-egress")
    );
    assert_eq!(network, unset.kubernetes.network);

    for needle in [
        "https://tale-spawner.tale-system.svc:8003",
        "port-forward service/tale-spawner 8003:8003",
        "/health",
        "rollout status deployment/tale-spawner",
    ] {
        assert!(
            chart.notes.contains(needle),
            "NOTES.txt has {needle}: {}",
            chart.notes
        );
    }
}

/// The egress proxy runs in its own namespace behind a NetworkPolicy that admits only session
/// Pods (the labels the backend gives them), the sessions namespace enforces the `restricted` Pod
/// Security level, and the spawner's session policy allows only the proxy's and gateway's ports
/// there; with the proxy back in the sessions namespace, neither the policy nor the label.
#[test]
fn egress_proxy_in_its_own_namespace() {
    use tale::modes::spawner::backend::kubernetes::manifests::{ROLE_LABEL, ROLE_SESSION};
    let chart = render(json!({}));
    let policy = chart.named("NetworkPolicy", "tale-egress");
    assert_eq!(policy["metadata"]["namespace"], "tale-egress");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let egress_pod =
        &chart.named("Deployment", "tale-egress")["spec"]["template"]["metadata"]["labels"];
    for (key, value) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&egress_pod[key], value, "the policy selects the proxy Pods");
    }
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tale-sandbox"}},
                "podSelector": {"matchLabels": {ROLE_LABEL: ROLE_SESSION}}
            }],
            "ports": [{"protocol": "TCP", "port": 3128}]
        }])
    );
    assert_eq!(
        chart.named("Namespace", "tale-sandbox")["metadata"]["labels"]
            ["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert!(
        chart.named("Namespace", "tale-egress")["metadata"]["labels"]
            .get("pod-security.kubernetes.io/enforce")
            .is_none()
    );
    let network = spawner_config(&chart).kubernetes.network;
    assert_eq!(
        network.egress_proxy_namespace.as_deref(),
        Some("tale-egress")
    );
    assert_eq!(network.egress_ports, [3128, 8080]);

    let shared = render(json!({"egressProxy": {"namespace": "tale-sandbox"}}));
    assert!(shared.of_kind("NetworkPolicy").is_empty());
    assert_eq!(shared.of_kind("Namespace").len(), 1);
    assert!(
        shared.named("Namespace", "tale-sandbox")["metadata"]["labels"]
            .get("pod-security.kubernetes.io/enforce")
            .is_none(),
        "the root proxy would be refused by restricted"
    );
    let config = spawner_config(&shared);
    assert_eq!(config.kubernetes.network.egress_proxy_namespace, None);
    assert_eq!(
        config.egress_proxy.as_deref(),
        Some("http://tale-egress.tale-sandbox.svc:3128")
    );

    let external = render(json!({
        "egressProxy": {"enabled": false, "url": "http://proxy.corp.example:3129"},
        "sessions": {"networkPolicy": {"egressPorts": [3129, 8080]}}
    }));
    assert_eq!(
        external.named("Namespace", "tale-sandbox")["metadata"]["labels"]
            ["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let config = spawner_config(&external);
    assert_eq!(
        config.egress_proxy.as_deref(),
        Some("http://proxy.corp.example:3129")
    );
    assert_eq!(config.kubernetes.network.egress_ports, [3129, 8080]);
}

/// `sessions.nodeAccess: true` adds exactly the optional ClusterRole (nodes get, for telling a lost
/// node) bound to the spawner's service account; the namespaced Role is unchanged.
#[test]
fn node_access_is_an_optional_cluster_role() {
    let chart = render(json!({"sessions": {"nodeAccess": true}}));
    assert_eq!(chart.lint["errors"], json!([]), "{}", chart.lint);
    let role = chart.named("ClusterRole", "tale-spawner-nodes");
    let expected: Vec<(String, String, Vec<String>)> = support::rbac::NODE_RULES
        .iter()
        .map(|(g, r, v)| {
            (
                g.to_string(),
                r.to_string(),
                v.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(role_rules(role), expected);
    let binding = chart.named("ClusterRoleBinding", "tale-spawner-nodes");
    assert_eq!(binding["roleRef"]["name"], "tale-spawner-nodes");
    assert_eq!(binding["subjects"][0]["name"], "tale-spawner");
    assert_eq!(
        role_rules(chart.named("Role", "tale-spawner")),
        support::rbac::rules()
    );
}

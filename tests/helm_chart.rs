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
use tale::modes::spawner::backend::BackendKind;
use tale::modes::spawner::config::SpawnerConfig;

const RELEASE: &str = "tale";
const RELEASE_NAMESPACE: &str = "tale-system";

struct Rendered {
    lint: Value,
    documents: Vec<Value>,
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
    assert!(
        output.status.success(),
        "helm render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let documents: Vec<Value> = parsed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["object"].clone())
        .collect();
    // Every rendered object, whatever the values, fits the official Kubernetes schemas.
    support::k8s_schema::assert_valid(&documents);
    Rendered {
        lint: parsed["lint"].clone(),
        documents,
    }
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
            "Role",
            "RoleBinding",
            "Secret",
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
    let secret = chart.named("Secret", "tale-token");
    assert!(
        secret["data"]["token"]
            .as_str()
            .is_some_and(|t| t.len() >= 40),
        "a generated token: {secret}"
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

    // Sessions reach the egress proxy Service in their own namespace.
    let egress_service = chart.named("Service", "tale-egress");
    assert_eq!(egress_service["metadata"]["namespace"], "tale-sandbox");
    assert_eq!(
        config.egress_proxy.as_deref(),
        Some("http://tale-egress.tale-sandbox.svc:3128")
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

/// An existing token Secret, no egress proxy, no namespace, a storage and runtime class.
#[test]
fn chart_options() {
    let chart = render(json!({
        "token": {"existingSecret": "platform-tale", "existingSecretKey": "sandbox-token"},
        "egressProxy": {"enabled": false},
        "sessions": {"createNamespace": false, "namespace": "agents", "storageClass": "fast-ssd", "runtimeClass": "gvisor"},
        "spawner": {"extraEnv": [{"name": "SANDBOX_MAX_SESSIONS", "value": "64"}]},
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

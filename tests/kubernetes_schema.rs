//! Every object the kubernetes backend sends validates against the official Kubernetes OpenAPI
//! schemas (strict: unknown fields are errors) of the oldest and newest supported versions
//! (`support::k8s_schema`: the `kubernetes-validate` wheel that scripts/setup.sh installs into
//! /opt/tale-helm-sdk; FAILS, never skips, without it). The real `tale spawner` runs against the
//! fake API server of `support::fake_kube` with every optional Pod and NetworkPolicy field set
//! (per-profile placement, a node-local DNS address), creates a session of each profile, stops one
//! and restarts (so the NetworkPolicy is replaced too); every POST and PUT body is checked, and so
//! is each object a merge patch (PATCH) changed, as the API server stores it: the Secret with its
//! Pod as owner, the PVC with its compute record.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::fake_kube::FakeKube;
use support::runnerd::free_port;
use support::spawner::SpawnerProcess;

async fn kube_spawner(fake: &FakeKube, runnerd_port: u16) -> SpawnerProcess {
    let env: Vec<(String, String)> = [
        ("SANDBOX_BACKEND", "kubernetes".to_owned()),
        ("KUBECONFIG", fake.write_kubeconfig().display().to_string()),
        ("SANDBOX_RUNTIME_IMAGE", "tale-sandbox-runtime:test".to_owned()),
        ("SANDBOX_K8S_RUNNERD_PORT", runnerd_port.to_string()),
        ("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000".to_owned()),
        ("SANDBOX_K8S_STORAGE_CLASS", "fast-ssd".to_owned()),
        ("SANDBOX_K8S_NODE_LOCAL_DNS", "169.254.20.10".to_owned()),
        ("SANDBOX_K8S_IMAGE_PULL_SECRETS", "regcred,mirror".to_owned()),
        ("SANDBOX_K8S_NODE_SELECTOR", "pool=sandbox".to_owned()),
        (
            "SANDBOX_K8S_TOLERATIONS",
            r#"[{"key":"sandbox","operator":"Equal","value":"yes","effect":"NoSchedule"},{"operator":"Exists","effect":"NoExecute","tolerationSeconds":30}]"#.to_owned(),
        ),
        ("SANDBOX_K8S_PRIORITY_CLASS", "tale-sessions".to_owned()),
        ("SANDBOX_RUNTIME_CLASS", "gvisor".to_owned()),
        ("SANDBOX_K8S_IMAGE_PULL_POLICY", "Always".to_owned()),
        ("SANDBOX_AGENT_RUNTIME_CLASS", "kata".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let root = std::env::temp_dir().join(format!(
        "tale-k8s-schema-{}-{}",
        std::process::id(),
        free_port()
    ));
    SpawnerProcess::start(root, env).await
}

/// Pods (both profiles, every placement field), Secrets, PVCs, claim Leases and the NetworkPolicy
/// (created, then replaced on restart) as sent fit the Kubernetes 1.25 and 1.37 schemas.
#[tokio::test(flavor = "multi_thread")]
async fn objects_sent_fit_the_kubernetes_schema() {
    let fake = FakeKube::start().await;
    let port = free_port();
    let spawner = kube_spawner(&fake, port).await;
    for (id, profile) in [("schema-default", "default"), ("schema-agent", "agent")] {
        let (status, body) = spawner
            .client
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": id, "organizationId": "korg", "profile": profile})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    }
    let (status, body) = spawner
        .client
        .json(Method::DELETE, "/v1/sessions/schema-agent", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(spawner);
    let spawner = kube_spawner(&fake, port).await;
    drop(spawner);

    let requests = fake.requests();
    let objects: Vec<Value> = requests
        .iter()
        .filter(|r| r.method == "POST" || r.method == "PUT")
        .filter_map(|r| r.body.clone())
        .filter(|body| body.get("kind").is_some())
        .collect();
    // Leases: the cap claims of each create.
    for kind in [
        "Pod",
        "Secret",
        "PersistentVolumeClaim",
        "NetworkPolicy",
        "Lease",
    ] {
        assert!(
            objects.iter().any(|o| o["kind"] == kind),
            "a {kind} was sent: {objects:?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PUT" && r.path.contains("/networkpolicies/")),
        "the restart replaced the NetworkPolicy"
    );
    let pods: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Pod").collect();
    assert_eq!(pods.len(), 2);
    for pod in pods {
        for field in [
            "imagePullSecrets",
            "nodeSelector",
            "tolerations",
            "priorityClassName",
            "runtimeClassName",
        ] {
            assert!(
                pod["spec"].get(field).is_some(),
                "the checked Pod has {field}"
            );
        }
    }
    // Merge patches touch metadata only; the objects they made must fit the schema too.
    let patches: Vec<&support::fake_kube::Recorded> =
        requests.iter().filter(|r| r.method == "PATCH").collect();
    assert!(
        !patches.is_empty(),
        "the Secret's owner and the PVC's record are patched"
    );
    for patch in &patches {
        let body = patch.body.as_ref().unwrap().as_object().unwrap();
        assert_eq!(
            body.keys().collect::<Vec<_>>(),
            ["metadata"],
            "{}",
            patch.path
        );
    }
    let mut objects = objects;
    let secret = fake
        .object(
            "secrets",
            &tale::modes::spawner::backend::kubernetes::manifests::secret_name("schema-default"),
        )
        .expect("the live session's Secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Pod");
    objects.push(secret);
    let pvc = fake
        .object(
            "persistentvolumeclaims",
            &tale::modes::spawner::backend::kubernetes::manifests::pvc_name("schema-default"),
        )
        .expect("the live session's PVC");
    objects.push(pvc);
    let checked = support::k8s_schema::assert_valid(&objects);
    assert_eq!(checked, objects.len() * 2);
}

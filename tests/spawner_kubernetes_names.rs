//! Distinct sessions never share a Pod or a workspace on the kubernetes backend (the real spawner
//! against the fake API server of `support::fake_kube`): the colliding pair of the old naming
//! scheme — a long id and the 16-hex id equal to its SHA-1 prefix, which was the long id's Pod,
//! PVC and Secret name — with the long id's objects made as the previous release made them. The
//! short id is refused with 409 `owner_mismatch` and never touches them; the long id resumes on
//! its old PVC; once it is destroyed the short id gets fresh objects of its own.
mod support;

use hyper::StatusCode;
use serde_json::json;
use support::fake_kube::FakeKube;
use support::runnerd::free_port;
use support::spawner::SpawnerProcess;
use tale::modes::spawner::backend::kubernetes::manifests::pod_name;
use tale::modes::spawner::backend::names::{legacy_base_name, NameRules, PLAIN_PREFIX};

const NAMESPACE: &str = "tale-sandbox";

/// An object as the previous release made it for session `id` of `org`.
fn legacy_object(
    kind: &str,
    name: &str,
    id: &str,
    org: &str,
    status: serde_json::Value,
) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": kind,
           "metadata": {"name": name, "labels": {"tale.sandbox-session": "1"},
                        "annotations": {"tale.dev/session-id": id, "tale.dev/organization-id": org}},
           "spec": {}, "status": status})
}

/// The colliding pair on Kubernetes: refused, never shared, the old session resumed.
#[tokio::test(flavor = "multi_thread")]
async fn colliding_ids_never_share_a_pod_or_pvc() {
    let long = format!("{:k<64}", format!("kcollide{}", std::process::id()));
    let legacy = legacy_base_name(&long, NameRules::Kubernetes);
    let short = legacy.strip_prefix(PLAIN_PREFIX).unwrap().to_owned();
    assert_eq!(
        pod_name(&short),
        legacy,
        "the short id's name is the long id's old name"
    );
    assert_ne!(pod_name(&long), legacy);
    let legacy_pvc = format!("{legacy}-ws");

    let fake = FakeKube::start().await;
    // Before the upgrade: org A's long-id session under the old names, its Pod ended.
    fake.insert(
        "persistentvolumeclaims",
        NAMESPACE,
        legacy_object(
            "PersistentVolumeClaim",
            &legacy_pvc,
            &long,
            "orga",
            json!({"phase": "Bound"}),
        ),
    );
    let volume = fake.volume_dir(&legacy_pvc);
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("secret.txt"), "A-secret\n").unwrap();
    fake.insert(
        "pods",
        NAMESPACE,
        legacy_object("Pod", &legacy, &long, "orga", json!({"phase": "Pending"})),
    );

    let root = std::env::temp_dir().join(format!(
        "tale-k8s-names-{}-{}",
        std::process::id(),
        free_port()
    ));
    let env = vec![
        ("SANDBOX_BACKEND".to_string(), "kubernetes".to_string()),
        (
            "KUBECONFIG".into(),
            fake.write_kubeconfig().display().to_string(),
        ),
        (
            "SANDBOX_RUNTIME_IMAGE".into(),
            "tale-sandbox-runtime:test".into(),
        ),
        ("SANDBOX_K8S_RUNNERD_PORT".into(), free_port().to_string()),
        ("SANDBOX_SESSION_CREATE_TIMEOUT_MS".into(), "20000".into()),
    ];
    let spawner = SpawnerProcess::start(root, env).await;
    let c = &spawner.client;
    let create_short = json!({"sessionId": short, "organizationId": "orgb"});
    let mismatch = (StatusCode::CONFLICT, "owner_mismatch".to_string());

    // The short id meets A's Pod under its name: refused, nothing touched or added.
    assert_eq!(c.create_with(&create_short).await, mismatch);
    assert_eq!(c.destroy(&short).await, (StatusCode::OK, false));
    assert!(fake.object("pods", &legacy).is_some());
    assert!(fake.object("persistentvolumeclaims", &legacy_pvc).is_some());
    assert!(fake.object("secrets", &format!("{legacy}-spec")).is_none());

    // A's Pod ended (a node went away): A resumes on its old PVC, under its new Pod name.
    fake.insert(
        "pods",
        NAMESPACE,
        legacy_object("Pod", &legacy, &long, "orga", json!({"phase": "Failed"})),
    );
    let create_long = json!({"sessionId": long, "organizationId": "orga"});
    assert_eq!(
        c.create_with(&create_long).await,
        (StatusCode::CREATED, String::new()),
        "{}",
        spawner.log()
    );
    assert_eq!(
        c.exec_stdout(&long, "a1", "cat secret.txt").await,
        "A-secret\n"
    );
    let pod = fake.object("pods", &pod_name(&long)).expect("A's new Pod");
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        json!(legacy_pvc)
    );
    assert!(
        fake.object("pods", &legacy).is_none(),
        "the ended old Pod was reaped"
    );

    // The short id still meets A's PVC: refused.
    assert_eq!(c.create_with(&create_short).await, mismatch);
    assert!(fake.object("persistentvolumeclaims", &legacy_pvc).is_some());

    // A destroys: its objects go; the short id then gets fresh ones of its own.
    assert_eq!(c.destroy(&long).await, (StatusCode::OK, true));
    assert!(fake.object("persistentvolumeclaims", &legacy_pvc).is_none());
    assert_eq!(
        c.create_with(&create_short).await,
        (StatusCode::CREATED, String::new()),
        "{}",
        spawner.log()
    );
    assert_eq!(c.exec_stdout(&short, "b1", "ls").await, "");
    let pvc = fake
        .object("persistentvolumeclaims", &legacy_pvc)
        .expect("B's own PVC");
    assert_eq!(
        pvc["metadata"]["annotations"]["tale.dev/session-id"],
        json!(short)
    );
    assert_eq!(c.destroy(&short).await, (StatusCode::OK, true));
}

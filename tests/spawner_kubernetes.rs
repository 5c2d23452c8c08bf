//! End-to-end for the kubernetes backend: the real `tale spawner` (SANDBOX_BACKEND=kubernetes, a
//! kubeconfig pointing at the fake API server of `support::fake_kube`) drives Pods whose runnerd
//! the fake really runs, as the profile's non-root user. Covered: NetworkPolicy at boot (create,
//! then replace on restart), create with the exact objects sent (golden JSON under
//! `tests/golden/kubernetes`; `TALE_UPDATE_GOLDEN=1` rewrites them), exec streams, kill -9 and
//! re-adoption from the Pod list, idle stop keeping the PVC, resume, destroy, a failing image that
//! fails fast and leaves nothing, 409 on a live Pod, and a boot refused without NetworkPolicy
//! rights. No request ever touches `pods/exec`. (tests/kubernetes_schema.rs validates the objects
//! sent against the official Kubernetes schemas; it needs a PyPI package, so it is a host suite.)
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::fake_kube::{FakeKube, Recorded, CONTEXT_NAMESPACE};
use support::runnerd::{free_port, poll};
use support::spawner::{result, stdout_text, SpawnerProcess};
use tale::modes::spawner::backend::kubernetes::manifests::{pod_name, pvc_name, secret_name};

const NAMESPACE: &str = "tale-sandbox";
const IMAGE: &str = "tale-sandbox-runtime:test";

async fn kube_spawner(
    fake: &FakeKube,
    runnerd_port: u16,
    extra: &[(&str, &str)],
) -> SpawnerProcess {
    SpawnerProcess::kubernetes(fake.write_kubeconfig(), IMAGE, runnerd_port, extra).await
}

/// The POST bodies sent for one resource.
fn created(requests: &[Recorded], resource: &str) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/{resource}")))
        .filter_map(|r| r.body.clone())
        .collect()
}

/// Replaces what differs between runs (the creation time, the free runnerd port) with markers.
fn normalize(value: &Value, created_at: &str, port: u16) -> Value {
    match value {
        Value::String(s) => Value::String(
            s.replace(created_at, "<created-at-ms>")
                .replace(&format!(":{port}"), ":<runnerd-port>"),
        ),
        Value::Number(n) if n.as_u64() == Some(u64::from(port)) => json!("<runnerd-port>"),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| normalize(v, created_at, port))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalize(v, created_at, port)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Compares `actual` with `tests/golden/kubernetes/<name>.json` (rewrites it with
/// TALE_UPDATE_GOLDEN=1).
fn golden(name: &str, actual: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/golden/kubernetes/{name}.json"));
    let rendered = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var("TALE_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TALE_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        rendered,
        expected,
        "{name} differs from {} (TALE_UPDATE_GOLDEN=1 rewrites it after a deliberate change)",
        path.display()
    );
}

fn no_exec_requests(fake: &FakeKube) {
    let requests = fake.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(
            !r.path.contains("/exec")
                && !r.path.contains("/attach")
                && !r.path.contains("/portforward"),
            "the backend never uses pods/exec or similar: {} {}",
            r.method,
            r.path
        );
    }
}

async fn exec(
    spawner: &SpawnerProcess,
    id: &str,
    exec_id: &str,
    shell: &str,
) -> Vec<tale::shared::sse::SseEvent> {
    spawner
        .client
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"execId": exec_id, "shell": shell})),
            &[],
        )
        .await
        .1
        .collect_all()
        .await
}

/// Whether the Pod, Secret and PVC of `id` exist in the fake.
fn objects_of(fake: &FakeKube, id: &str) -> (bool, bool, bool) {
    (
        fake.object("pods", &pod_name(id)).is_some(),
        fake.object("secrets", &secret_name(id)).is_some(),
        fake.object("persistentvolumeclaims", &pvc_name(id))
            .is_some(),
    )
}

/// The whole life of Kubernetes sessions, with the exact objects sent.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_session_lifecycle() {
    let fake = FakeKube::start().await;
    let port = free_port();
    let mut spawner = kube_spawner(
        &fake,
        port,
        &[
            ("SANDBOX_SWEEP_INTERVAL_MS", "300"),
            ("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000"),
        ],
    )
    .await;
    let c = spawner.client.clone();

    let (status, health) = c.raw(Method::GET, "/health", None, false).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["kubernetes"], "v1.37.0-fake");
    assert_eq!(health["namespace"], NAMESPACE);
    let policy = fake
        .object("networkpolicies", "tale-sandbox-session-egress")
        .expect("policy applied at boot");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        CONTEXT_NAMESPACE,
        "the spawner's own namespace comes from the kubeconfig context"
    );

    let id = "k8s-life";
    let (status, created_session) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "korg", "env": {"SEED": "planted"}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{created_session}\n{}",
        spawner.log()
    );
    assert_eq!(created_session["session"]["backend"], "kubernetes");
    assert_eq!(objects_of(&fake, id), (true, true, true));
    let pod = fake.object("pods", &pod_name(id)).unwrap();
    let token =
        tale::shared::hmac::derive_runnerd_token(support::spawner::SANDBOX_TOKEN.as_bytes(), id);
    let secret = fake.object("secrets", &secret_name(id)).unwrap();
    for (what, object) in [("Pod", &pod), ("Secret", &secret)] {
        let text = object.to_string();
        assert!(
            !text.contains(&token) && !text.contains("planted"),
            "{what} holds neither the token nor the seed env: {text}"
        );
    }
    assert_eq!(
        secret["data"].as_object().unwrap().len(),
        3,
        "only the digest and runnerd's TLS certificate and key: {secret}"
    );
    // The key material is this session's (derived from SANDBOX_TOKEN and the id, so a restarted
    // spawner pins the same certificate) and is a working pair for runnerd.
    let secret_text = |key: &str| {
        let b64 = secret["data"][key].as_str().unwrap();
        String::from_utf8(base64_simd::STANDARD.decode_to_vec(b64).unwrap()).unwrap()
    };
    let derived =
        tale::shared::tls::SessionTls::derive(support::spawner::SANDBOX_TOKEN.as_bytes(), id);
    let (cert_pem, key_pem) = (
        secret_text("TALE_RUNNERD_TLS_CERT"),
        secret_text("TALE_RUNNERD_TLS_KEY"),
    );
    assert_eq!(cert_pem, derived.cert_pem());
    assert_eq!(key_pem, derived.key_pem());
    assert!(
        tale::modes::runnerd::tls::acceptor(Some(cert_pem), Some(key_pem))
            .unwrap()
            .is_some()
    );

    // Disk: the PVC is the default profile's quota, the container has an ephemeral-storage limit.
    let pvc = fake
        .object("persistentvolumeclaims", &pvc_name(id))
        .unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"]["ephemeral-storage"], "512Mi");
    assert_eq!(resources["requests"]["ephemeral-storage"], "256Mi");

    // The exact objects sent.
    let requests = fake.requests();
    let created_at = pod["metadata"]["annotations"]["tale.dev/created-at"]
        .as_str()
        .unwrap()
        .to_owned();
    for (resource, name) in [
        ("pods", "pod"),
        ("secrets", "secret"),
        ("persistentvolumeclaims", "pvc"),
        ("networkpolicies", "networkpolicy"),
    ] {
        let mut bodies = created(&requests, resource);
        assert_eq!(bodies.len(), 1, "one {resource} POST: {bodies:?}");
        // The key material was checked above; the golden file keeps no private key.
        if let Some(data) = bodies[0].get_mut("stringData") {
            for key in ["TALE_RUNNERD_TLS_CERT", "TALE_RUNNERD_TLS_KEY"] {
                if let Some(value) = data.get_mut(key) {
                    *value = json!(format!("<{key}>"));
                }
            }
        }
        golden(name, &normalize(&bodies[0], &created_at, port));
    }

    let events = exec(
        &spawner,
        id,
        "hello",
        "echo hello-k8s; echo $SEED; id -u; pwd; echo data > kept.txt",
    )
    .await;
    // As root the fake kubelet runs runnerd as the Pod's runAsUser (the default profile's 65534).
    let uid = match nix::unistd::geteuid() {
        root if root.is_root() => "65534".to_string(),
        other => other.to_string(),
    };
    let workspace = fake.volume_dir(&pvc_name(id));
    assert_eq!(
        stdout_text(&events),
        format!("hello-k8s\nplanted\n{uid}\n{}\n", workspace.display()),
        "runnerd and its execs run as the Pod's user in the workspace: {events:?}\n{}",
        fake.pod_log(&pod_name(id))
    );
    assert_eq!(result(&events)["exitCode"], 0);

    // runnerd runs as the exec user's uid here, yet an exec can neither find the TLS key in its
    // environment nor read runnerd's (runnerd is non-dumpable).
    let events = exec(
        &spawner,
        id,
        "guarded",
        "env | grep -c TALE_RUNNERD_TLS; cat /proc/$PPID/environ >/dev/null 2>&1 && echo readable || echo unreadable",
    )
    .await;
    assert_eq!(stdout_text(&events), "0\nunreadable\n", "{events:?}");

    // kill -9 and restart: re-adopted from the Pod list; the NetworkPolicy is replaced.
    spawner.restart().await;
    let (status, got) = c
        .json(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}\n{}", spawner.log());
    assert_eq!(got["session"]["organizationId"], "korg");
    assert_eq!(
        stdout_text(&exec(&spawner, id, "again", "cat kept.txt").await),
        "data\n"
    );
    let puts: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "PUT"
                && r.path
                    .ends_with("/networkpolicies/tale-sandbox-session-egress")
        })
        .collect();
    assert_eq!(puts.len(), 1, "the second boot replaced the policy");
    assert!(puts[0].body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string());

    // Idle stop: Pod and Secret go, the PVC stays; a create resumes on it.
    let idle = "k8s-idle";
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": idle, "organizationId": "korg", "idleTimeoutMs": 1500})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        result(&exec(&spawner, idle, "w", "echo idle-data > kept.txt").await)["exitCode"],
        0
    );
    let stopped = poll(Duration::from_secs(20), async || {
        (objects_of(&fake, idle) == (false, false, true)).then_some(())
    })
    .await;
    assert!(
        stopped.is_some(),
        "sweep stopped the Pod and kept the PVC: {:?}\n{}",
        objects_of(&fake, idle),
        spawner.log()
    );
    assert_eq!(
        c.json(Method::GET, &format!("/v1/sessions/{idle}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": idle, "organizationId": "korg"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "resume: {body}\n{}",
        spawner.log()
    );
    assert_eq!(
        stdout_text(&exec(&spawner, idle, "r", "cat kept.txt").await),
        "idle-data\n"
    );
    assert_eq!(
        created(&fake.requests(), "persistentvolumeclaims").len(),
        2,
        "the resume did not create a PVC"
    );

    // An ended Pod of the id is reaped (with its Secret) and waited out; a Secret left without a
    // Pod, holding an earlier SANDBOX_TOKEN's digest, is replaced — else runnerd would refuse the
    // token.
    let (orphan, stale) = ("k8s-orphan", "k8s-stale");
    fake.insert(
        "pods",
        NAMESPACE,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name(orphan), "labels": {"tale.sandbox-session": "1"},
                            "annotations": {"tale.dev/session-id": orphan}},
               "status": {"phase": "Failed", "reason": "Evicted"}}),
    );
    let stale_digest =
        "MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA==";
    for session in [orphan, stale] {
        fake.insert(
            "secrets",
            NAMESPACE,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name(session)},
                   "data": {"TALE_RUNNERD_TOKEN_SHA256": stale_digest}}),
        );
    }
    for session in [orphan, stale] {
        let (status, body) = c
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": session, "organizationId": "korg"})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{session}: {body}\n{}",
            spawner.log()
        );
        assert_eq!(
            stdout_text(&exec(&spawner, session, "o", "echo fresh").await),
            "fresh\n"
        );
    }

    // Destroy removes everything.
    for session in [id, idle, orphan, stale] {
        assert_eq!(
            c.json(Method::DELETE, &format!("/v1/sessions/{session}"), None)
                .await,
            (StatusCode::OK, json!({"destroyed": true, "busy": false}))
        );
        let gone = poll(Duration::from_secs(10), async || {
            (objects_of(&fake, session) == (false, false, false)).then_some(())
        })
        .await;
        assert!(
            gone.is_some(),
            "{session}: {:?}",
            objects_of(&fake, session)
        );
        assert!(!fake.volume_dir(&pvc_name(session)).exists());
    }
    let deletes: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.ends_with(&format!("/pods/{}", pod_name(id))))
        .collect();
    assert_eq!(deletes[0].body.as_ref().unwrap()["gracePeriodSeconds"], 5);
    assert_eq!(
        c.json(Method::GET, "/v1/sessions", None).await.1,
        json!({"sessions": []})
    );
    no_exec_requests(&fake);
}

/// Failed creates: an unpullable image fails at its own pull deadline (SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS,
/// 1 s here), long before the create deadline, with the reason, and leaves nothing (a resumed
/// workspace is kept); a live Pod of the same id is answered 409 and left alone.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_failed_creates() {
    let fake = FakeKube::start().await;
    let missing = "tale-sandbox-runtime:missing";
    fake.set_unpullable(missing);
    let spawner = kube_spawner(
        &fake,
        free_port(),
        &[
            ("SANDBOX_RUNTIME_IMAGE", missing),
            ("SANDBOX_K8S_IMAGE_PULL_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let c = &spawner.client;

    let started = Instant::now();
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "k8s-pull", "organizationId": "korg"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_GATEWAY, &json!("create_failed")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("ImagePullBackOff") && message.contains(missing),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails fast, not at the 180 s deadline"
    );
    let gone = poll(Duration::from_secs(10), async || {
        (objects_of(&fake, "k8s-pull") == (false, false, false)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "nothing left: {:?}",
        objects_of(&fake, "k8s-pull")
    );

    // A failed resume keeps the workspace it found.
    fake.insert(
        "persistentvolumeclaims",
        NAMESPACE,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc_name("k8s-resume"),
                            "annotations": {"tale.dev/session-id": "k8s-resume", "tale.dev/organization-id": "korg"}},
               "spec": {"accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Bound"}}),
    );
    std::fs::create_dir_all(fake.volume_dir(&pvc_name("k8s-resume"))).unwrap();
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "k8s-resume", "organizationId": "korg"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let stopped = poll(Duration::from_secs(10), async || {
        (objects_of(&fake, "k8s-resume") == (false, false, true)).then_some(())
    })
    .await;
    assert!(
        stopped.is_some(),
        "PVC kept, compute removed: {:?}",
        objects_of(&fake, "k8s-resume")
    );
    let pvc = fake
        .object("persistentvolumeclaims", &pvc_name("k8s-resume"))
        .unwrap();
    assert_eq!(
        pvc["metadata"]["annotations"]["tale.dev/compute"], "stopped",
        "a failed resume leaves the session stopped, never healed by itself: {pvc}"
    );

    // A live Pod of the id (another replica's) is never replaced.
    let taken = "k8s-taken";
    fake.insert(
        "pods",
        NAMESPACE,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name(taken), "labels": {"tale.sandbox-session": "1"},
                            "annotations": {"tale.dev/session-id": taken, "tale.dev/organization-id": "korg"}},
               "status": {"phase": "Pending"}}),
    );
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": taken, "organizationId": "korg"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("duplicate")),
        "{body}"
    );
    assert_eq!(
        objects_of(&fake, taken),
        (true, false, false),
        "the peer's Pod is untouched, nothing added"
    );
    // The same id from another organization: its objects are refused, not a duplicate to adopt.
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": taken, "organizationId": "korg2"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("owner_mismatch")),
        "{body}"
    );
    assert_eq!(objects_of(&fake, taken), (true, false, false));
    no_exec_requests(&fake);
}

/// Without rights on NetworkPolicies the spawner refuses to start, naming what is missing.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_boot_needs_the_network_policy() {
    let fake = FakeKube::start().await;
    fake.forbid("networkpolicies");
    let output = tokio::task::spawn_blocking({
        let kubeconfig = fake.write_kubeconfig();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tale"))
                .args(["spawner", "--listen", &format!("127.0.0.1:{}", free_port())])
                .env("SANDBOX_TOKEN", support::spawner::SANDBOX_TOKEN)
                .env("SANDBOX_BACKEND", "kubernetes")
                .env("KUBECONFIG", kubeconfig)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("NetworkPolicy") && log.contains("403"),
        "{log}"
    );
}

/// Per-profile placement reaches the Pods: the agent profile's own settings replace the common
/// ones for agent sessions only, both Pods start; the NetworkPolicy's DNS peers include the
/// node-local cache.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_pod_placement_per_profile() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(
        &fake,
        free_port(),
        &[
            ("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000"),
            ("SANDBOX_K8S_NODE_LOCAL_DNS", "169.254.20.10"),
            ("SANDBOX_K8S_IMAGE_PULL_SECRETS", "regcred"),
            ("SANDBOX_K8S_NODE_SELECTOR", "pool=sandbox"),
            (
                "SANDBOX_K8S_TOLERATIONS",
                r#"[{"key":"sandbox","operator":"Equal","value":"yes","effect":"NoSchedule"}]"#,
            ),
            ("SANDBOX_K8S_PRIORITY_CLASS", "tale-sessions"),
            ("SANDBOX_RUNTIME_CLASS", "gvisor"),
            ("SANDBOX_K8S_IMAGE_PULL_POLICY", "Always"),
            ("SANDBOX_AGENT_K8S_NODE_SELECTOR", "pool=agents"),
            ("SANDBOX_AGENT_RUNTIME_CLASS", "kata"),
            ("SANDBOX_AGENT_K8S_IMAGE_PULL_POLICY", "IfNotPresent"),
        ],
    )
    .await;
    let c = spawner.client.clone();
    for (id, profile) in [("place-default", "default"), ("place-agent", "agent")] {
        let (status, body) = c
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": id, "organizationId": "korg", "profile": profile})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    }
    let spec_of = |id: &str| fake.object("pods", &pod_name(id)).unwrap()["spec"].clone();
    let (default, agent) = (spec_of("place-default"), spec_of("place-agent"));
    for spec in [&default, &agent] {
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(spec["priorityClassName"], "tale-sessions");
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "sandbox", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}])
        );
    }
    assert_eq!(
        (
            &default["nodeSelector"],
            &default["runtimeClassName"],
            &default["containers"][0]["imagePullPolicy"]
        ),
        (
            &json!({"pool": "sandbox"}),
            &json!("gvisor"),
            &json!("Always")
        )
    );
    assert_eq!(
        (
            &agent["nodeSelector"],
            &agent["runtimeClassName"],
            &agent["containers"][0]["imagePullPolicy"]
        ),
        (
            &json!({"pool": "agents"}),
            &json!("kata"),
            &json!("IfNotPresent")
        )
    );
    // DNS only to the cluster resolver and the node-local cache.
    let policy = fake
        .object("networkpolicies", "tale-sandbox-session-egress")
        .unwrap();
    assert_eq!(
        policy["spec"]["egress"][0]["to"],
        json!([
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
            },
            {"ipBlock": {"cidr": "169.254.20.10/32"}}
        ])
    );
    drop(spawner);
}

/// `SANDBOX_K8S_NETWORK_POLICY=unmanaged`: the spawner boots without any NetworkPolicy rights,
/// never touches the policy, and sessions still run.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_unmanaged_network_policy() {
    let fake = FakeKube::start().await;
    fake.forbid("networkpolicies");
    let spawner = kube_spawner(
        &fake,
        free_port(),
        &[
            ("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000"),
            ("SANDBOX_K8S_NETWORK_POLICY", "unmanaged"),
        ],
    )
    .await;
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "unmanaged", "organizationId": "korg"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path.contains("networkpolicies")),
        "no NetworkPolicy request"
    );
    assert!(spawner.log().contains("unmanaged"), "{}", spawner.log());
    drop(spawner);
}

//! Sessions heal on the kubernetes backend: the real `tale spawner` against the fake API server
//! (`support::fake_kube`), whose kubelet really runs runnerd and whose nodes, evictions, graceful
//! deletion, PVC protection, volume attachment and owner references behave as the API server's.
//! Covered: an evicted Pod (kubelet or Eviction API) comes back on its kept PVC at the next exec,
//! `degraded` (its seed env is gone); a pinned session is healed by the sweep; a Pod on a lost node
//! is replaced only once the node is out of service or its volume detached (force-deleted, data
//! kept; without the nodes
//! ClusterRole, once Kubernetes removed it); a Multi-Attach is
//! waited out, and fails by its own deadline; a Terminating PVC is never resumed; the Secret goes
//! with its Pod.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::fake_kube::FakeKube;
use support::runnerd::{free_port, poll};
use support::spawner::SpawnerProcess;
use tale::modes::spawner::backend::kubernetes::manifests::{pod_name, pvc_name, secret_name};

const NAMESPACE: &str = "tale-sandbox";
const IMAGE: &str = "tale-sandbox-runtime:test";

async fn kube_spawner(fake: &FakeKube, extra: &[(&str, &str)]) -> SpawnerProcess {
    let env = [&[("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000")], extra].concat();
    SpawnerProcess::kubernetes(fake.write_kubeconfig(), IMAGE, free_port(), &env).await
}

async fn create(spawner: &SpawnerProcess, id: &str, env: Value) -> Value {
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "horg", "env": env})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    body
}

/// An exec's status and reply body when it is refused (JSON), or its stdout when it runs.
async fn try_exec(
    spawner: &SpawnerProcess,
    id: &str,
    exec_id: &str,
    shell: &str,
) -> Result<String, (StatusCode, Value)> {
    let (status, stream) = spawner
        .client
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"execId": exec_id, "shell": shell})),
            &[],
        )
        .await;
    if status != StatusCode::OK {
        let (status, body) = spawner
            .client
            .json(
                Method::POST,
                &format!("/v1/sessions/{id}/exec"),
                Some(json!({"execId": format!("{exec_id}-again"), "shell": shell})),
            )
            .await;
        return Err((status, body));
    }
    Ok(support::spawner::stdout_text(&stream.collect_all().await))
}

fn uid(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap().to_owned()
}

async fn state_of(spawner: &SpawnerProcess, id: &str) -> Value {
    let (status, body) = spawner
        .client
        .json(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["session"]["state"].clone()
}

/// The Secret is owned by the Pod (ownerReference with the Pod's uid).
fn assert_secret_owned_by(fake: &FakeKube, id: &str, pod: &Value) {
    let secret = fake
        .object("secrets", &secret_name(id))
        .expect("the session Secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Pod", "name": pod_name(id), "uid": uid(pod)}]),
        "{secret}"
    );
}

/// Every API verb the backend used is granted by the chart's Role or its optional nodes
/// ClusterRole (tests/support/rbac.rs, which tests/helm_chart.rs checks against the chart).
fn assert_verbs_granted(fake: &FakeKube) {
    let granted: Vec<(&str, &str, &[&str])> = support::rbac::SPAWNER_RULES
        .iter()
        .chain(support::rbac::NODE_RULES)
        .copied()
        .collect();
    for (group, resource, verbs) in fake.verbs_used() {
        let rule = granted
            .iter()
            .find(|(g, r, _)| *g == group && *r == resource)
            .unwrap_or_else(|| panic!("{group}/{resource} is granted nothing"));
        for verb in verbs {
            assert!(
                rule.2.contains(&verb.as_str()),
                "{resource} {verb} is not granted"
            );
        }
    }
}

/// A Pod the kubelet evicted (Failed/Evicted, never restarted: a bare Pod) comes back on its kept
/// PVC at the next exec: a file written before survives, the seed env does not, and the session is
/// `degraded`. A Pod removed by the Eviction API (a drain) comes back the same way, and its Secret
/// went with it. Fails on the code before healing: the exec answered 404.
#[tokio::test(flavor = "multi_thread")]
async fn evicted_pod_heals_on_next_exec() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[]).await;
    let id = "heal-evict";
    create(&spawner, id, json!({"SEEDED": "planted"})).await;
    let first = fake.object("pods", &pod_name(id)).unwrap();
    assert_eq!(
        first["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
    assert_secret_owned_by(&fake, id, &first);
    let out = try_exec(
        &spawner,
        id,
        "w",
        "echo kept > kept.txt; echo ${SEEDED:-none}",
    )
    .await;
    assert_eq!(out.unwrap().trim(), "planted");
    assert_eq!(state_of(&spawner, id).await, "ready");

    fake.evict_for_node_pressure(NAMESPACE, &pod_name(id));
    let out = try_exec(&spawner, id, "r", "cat kept.txt; echo ${SEEDED:-none}").await;
    assert_eq!(
        out.unwrap_or_else(|e| panic!("{e:?}\n{}", spawner.log()))
            .trim(),
        "kept\nnone",
        "the workspace is kept, the seed env is not"
    );
    let second = fake.object("pods", &pod_name(id)).unwrap();
    assert_ne!(uid(&first), uid(&second), "a new Pod");
    assert_eq!(second["status"]["phase"], "Running");
    assert_eq!(state_of(&spawner, id).await, "degraded");
    assert_secret_owned_by(&fake, id, &second);
    // The platform seeds it again with a create of the same body: ready, the env back.
    let again = create(&spawner, id, json!({"SEEDED": "planted"})).await;
    assert_eq!(again["session"]["state"], "ready", "{again}");
    let out = try_exec(&spawner, id, "s", "echo ${SEEDED:-none}").await;
    assert_eq!(out.unwrap().trim(), "planted");
    let deletes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.ends_with(&format!("/pods/{}", pod_name(id))))
        .collect();
    assert_eq!(
        deletes.len(),
        1,
        "the evicted Pod was reaped once: {deletes:?}"
    );

    // A drain: the Eviction API deletes the Pod gracefully; the garbage collector takes its Secret.
    assert_eq!(fake.evict_via_api(NAMESPACE, &pod_name(id)), 201);
    let gone = poll(Duration::from_secs(10), async || {
        (fake.object("pods", &pod_name(id)).is_none()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the evicted Pod is deleted");
    assert!(
        fake.object("secrets", &secret_name(id)).is_none(),
        "the Secret went with its Pod"
    );
    assert!(fake
        .object("persistentvolumeclaims", &pvc_name(id))
        .is_some());
    let out = try_exec(&spawner, id, "r2", "cat kept.txt").await;
    assert_eq!(
        out.unwrap_or_else(|e| panic!("{e:?}\n{}", spawner.log()))
            .trim(),
        "kept"
    );
    let third = fake.object("pods", &pod_name(id)).unwrap();
    assert_secret_owned_by(&fake, id, &third);

    // A file route meets the lost Pod too: 503 `session_restarted` (never a silent 404), and the
    // retry reads the kept file.
    fake.evict_for_node_pressure(NAMESPACE, &pod_name(id));
    let read = format!("/v1/sessions/{id}/files/content?path=kept.txt");
    let (status, body) = spawner.client.json(Method::GET, &read, None).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("session_restarted")),
        "{body}"
    );
    let listing = format!("/v1/sessions/{id}/files?path=.");
    let (status, body) = spawner.client.json(Method::GET, &listing, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("kept.txt"), "{body}");

    // Destroyed: nothing to heal, a plain 404.
    assert_eq!(spawner.client.destroy(id).await, (StatusCode::OK, true));
    let refused = try_exec(&spawner, id, "after", "true").await.unwrap_err();
    assert_eq!(refused.0, StatusCode::NOT_FOUND, "{refused:?}");
    assert_verbs_granted(&fake);
}

/// A pinned session is healed by the sweep, with no access at all.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_session_is_healed_by_the_sweep() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[("SANDBOX_SWEEP_INTERVAL_MS", "200")]).await;
    let id = "heal-pinned";
    create(&spawner, id, json!({})).await;
    let (status, body) = spawner
        .client
        .json(
            Method::PATCH,
            &format!("/v1/sessions/{id}/pin"),
            Some(json!({"pinned": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = uid(&fake.object("pods", &pod_name(id)).unwrap());
    fake.evict_for_node_pressure(NAMESPACE, &pod_name(id));
    let healed = poll(Duration::from_secs(20), async || {
        fake.object("pods", &pod_name(id))
            .filter(|p| uid(p) != first && p["status"]["phase"] == "Running")
    })
    .await;
    assert!(healed.is_some(), "the sweep healed it:\n{}", spawner.log());
}

/// A Pod on a node that stopped reporting is not replaced while the node may still write its
/// volume: 503 `session_unreachable` (never 404) before the node-lost timeout and until the node
/// is tainted out-of-service; then the old Pod is force-deleted (grace 0) and the session comes
/// back on another node with its data.
#[tokio::test(flavor = "multi_thread")]
async fn lost_node_is_replaced_only_when_out_of_service() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS", "3000")]).await;
    let id = "heal-node";
    create(&spawner, id, json!({})).await;
    let out = try_exec(&spawner, id, "w", "echo kept > kept.txt").await;
    assert!(out.is_ok(), "{out:?}");
    let first = fake.object("pods", &pod_name(id)).unwrap();
    let node = fake.node_of(NAMESPACE, &pod_name(id)).unwrap();
    fake.lose_node(&node);
    let lost_at = Instant::now();

    let (status, body) = try_exec(&spawner, id, "x1", "true").await.unwrap_err();
    assert_eq!(
        (status, &body["error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("session_unreachable")
        ),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS"),
        "{body}"
    );
    // Past the timeout, still refused: only the out-of-service taint frees the volume.
    let past_timeout = poll(Duration::from_secs(15), async || {
        let (status, body) = try_exec(&spawner, id, "x2", "true").await.unwrap_err();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let message = body["message"].as_str().unwrap().to_owned();
        // Before the timeout the refusal names the timeout; after it, what frees the volume.
        (!message.contains("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS")).then_some(message)
    })
    .await
    .expect("the refusal names the out-of-service taint once the node is lost long enough");
    assert!(
        lost_at.elapsed() >= Duration::from_secs(2),
        "not before the timeout"
    );
    assert!(
        past_timeout.contains("node.kubernetes.io/out-of-service")
            && past_timeout.contains("may still write the workspace volume")
            && past_timeout.contains(&node),
        "{past_timeout}"
    );
    let still = fake.object("pods", &pod_name(id)).unwrap();
    assert_eq!(uid(&still), uid(&first), "not replaced");
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.contains("/pods/")),
        "nothing deleted"
    );

    fake.taint_out_of_service(&node);
    let out = try_exec(&spawner, id, "r", "cat kept.txt").await;
    assert_eq!(
        out.unwrap_or_else(|e| panic!("{e:?}\n{}", spawner.log()))
            .trim(),
        "kept"
    );
    let second = fake.object("pods", &pod_name(id)).unwrap();
    assert_ne!(uid(&second), uid(&first));
    let new_node = fake.node_of(NAMESPACE, &pod_name(id)).unwrap();
    assert_ne!(new_node, node, "rescheduled on a live node");
    let force: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.contains("/pods/"))
        .filter_map(|r| r.body)
        .collect();
    assert_eq!(force.len(), 1, "{force:?}");
    assert_eq!(force[0]["gracePeriodSeconds"], 0, "a force delete");
    assert_eq!(state_of(&spawner, id).await, "degraded");
    assert_eq!(fake.attachment(NAMESPACE, &pvc_name(id)), Some(new_node));
    assert_verbs_granted(&fake);
}

/// A lost node without the out-of-service taint whose hold on the workspace volume is gone (its
/// VolumeAttachment removed: a storage fencing agent, or Kubernetes' force detach) is safe too: the
/// old Pod is force-deleted and the session comes back with its data.
#[tokio::test(flavor = "multi_thread")]
async fn lost_node_is_replaced_once_its_volume_is_detached() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS", "0")]).await;
    let id = "heal-detach";
    create(&spawner, id, json!({})).await;
    assert!(try_exec(&spawner, id, "w", "echo kept > kept.txt")
        .await
        .is_ok());
    let node = fake.node_of(NAMESPACE, &pod_name(id)).unwrap();
    fake.lose_node(&node);
    let (status, body) = try_exec(&spawner, id, "x", "true").await.unwrap_err();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/apis/storage.k8s.io/v1/volumeattachments"),
        "the attachments were read"
    );
    fake.detach(NAMESPACE, &pvc_name(id));
    let out = try_exec(&spawner, id, "r", "cat kept.txt").await;
    assert_eq!(
        out.unwrap_or_else(|e| panic!("{e:?}\n{}", spawner.log()))
            .trim(),
        "kept"
    );
    assert_ne!(fake.node_of(NAMESPACE, &pod_name(id)).unwrap(), node);
    assert_verbs_granted(&fake);
}

/// Without the optional nodes ClusterRole the spawner cannot tell a lost node: it answers 503
/// naming the missing right, never replaces the Pod itself, and heals the session once
/// Kubernetes' own controllers removed the Pods of the out-of-service node.
#[tokio::test(flavor = "multi_thread")]
async fn lost_node_without_node_access_waits_for_kubernetes() {
    let fake = FakeKube::start().await;
    fake.forbid("nodes");
    fake.forbid("volumeattachments");
    let spawner = kube_spawner(&fake, &[("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS", "0")]).await;
    let id = "heal-norbac";
    create(&spawner, id, json!({})).await;
    assert!(try_exec(&spawner, id, "w", "echo kept > kept.txt")
        .await
        .is_ok());
    let first = uid(&fake.object("pods", &pod_name(id)).unwrap());
    let node = fake.node_of(NAMESPACE, &pod_name(id)).unwrap();
    fake.lose_node(&node);
    let (status, body) = try_exec(&spawner, id, "x", "true").await.unwrap_err();
    assert_eq!(
        (status, &body["error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("session_unreachable")
        ),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("nodeAccess"),
        "{body}"
    );

    fake.taint_out_of_service(&node);
    fake.run_out_of_service_gc();
    assert!(
        fake.object("secrets", &secret_name(id)).is_none(),
        "owned by the removed Pod"
    );
    let out = try_exec(&spawner, id, "r", "cat kept.txt").await;
    assert_eq!(
        out.unwrap_or_else(|e| panic!("{e:?}\n{}", spawner.log()))
            .trim(),
        "kept"
    );
    assert_ne!(uid(&fake.object("pods", &pod_name(id)).unwrap()), first);
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.contains("/pods/")),
        "the spawner deleted no Pod itself"
    );
    assert_verbs_granted(&fake);
}

/// A workspace volume still attached to another node (Multi-Attach) is waited out, not fatal; it
/// fails only at its own deadline (`SANDBOX_K8S_ATTACH_TIMEOUT_MS`), saying so, long before the
/// create deadline.
#[tokio::test(flavor = "multi_thread")]
async fn multi_attach_is_retried_then_succeeds() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[("SANDBOX_K8S_ATTACH_TIMEOUT_MS", "4000")]).await;
    let id = "heal-attach";
    fake.hold_attachment(NAMESPACE, &pvc_name(id), Duration::from_millis(1500));
    let started = Instant::now();
    create(&spawner, id, json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let events = fake.objects("events");
    let event = events
        .values()
        .find(|e| e["reason"] == "FailedAttachVolume")
        .expect("a Multi-Attach event");
    assert!(event["message"].as_str().unwrap().contains("Multi-Attach"));
    assert!(
        fake.requests().iter().any(|r| r.path.ends_with("/events")
            && r.query.contains("reason%3DFailedAttachVolume")),
        "the backend read the Pod's events"
    );

    let stuck = "heal-attach-stuck";
    fake.hold_attachment(NAMESPACE, &pvc_name(stuck), Duration::from_secs(60));
    let started = Instant::now();
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": stuck, "organizationId": "horg"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("Multi-Attach") && message.contains("SANDBOX_K8S_ATTACH_TIMEOUT_MS"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "its own deadline, not the create's"
    );
    assert_verbs_granted(&fake);
}

/// A PVC being deleted (Terminating: a destroy whose volume another Pod still uses) is never
/// resumed: a create waits it out and starts on a new, empty workspace, or fails saying so when it
/// outlasts the create deadline.
#[tokio::test(flavor = "multi_thread")]
async fn terminating_pvc_is_not_resumed() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "5000")]).await;
    let id = "heal-pvc";
    create(&spawner, id, json!({})).await;
    assert!(try_exec(&spawner, id, "w", "echo old > old.txt")
        .await
        .is_ok());
    // Another Pod (a backup job, say) mounts the workspace: the PVC protection keeps it.
    fake.insert(
        "pods",
        NAMESPACE,
        json!({"metadata": {"name": "backup", "uid": "backup-uid"},
               "spec": {"nodeName": "node-a", "containers": [{"name": "b", "image": "busybox"}],
                        "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": pvc_name(id)}}]},
               "status": {"phase": "Running"}}),
    );
    assert_eq!(spawner.client.destroy(id).await, (StatusCode::OK, true));
    let pvc = fake
        .object("persistentvolumeclaims", &pvc_name(id))
        .unwrap();
    assert!(
        !pvc["metadata"]["deletionTimestamp"].is_null(),
        "Terminating: {pvc}"
    );
    assert_eq!(
        pvc["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );

    let started = Instant::now();
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "horg"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Terminating"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(12));
    assert!(
        fake.object("pods", &pod_name(id)).is_none(),
        "no Pod on a dying PVC"
    );

    // Waited out: the backup goes a second into the create; the session starts afresh.
    let remover = {
        let fake_state = &fake;
        async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            fake_state.remove("pods", NAMESPACE, "backup");
        }
    };
    let create_again = spawner.client.json(
        Method::POST,
        "/v1/sessions",
        Some(json!({"sessionId": id, "organizationId": "horg"})),
    );
    let ((status, body), ()) = tokio::join!(create_again, remover);
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    let out = try_exec(&spawner, id, "r", "ls old.txt 2>/dev/null || echo fresh").await;
    assert_eq!(
        out.unwrap().trim(),
        "fresh",
        "a new workspace, not the destroyed one"
    );
}

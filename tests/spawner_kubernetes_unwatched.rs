//! Lost compute that no request has met yet, on the kubernetes backend: the real `tale spawner`
//! against the fake API server (`support::fake_kube`, whose kubelet really runs runnerd).
//! Covered: a pinned session whose Pod was evicted while no spawner ran comes back at boot with no
//! request to it (file kept, `degraded`), and by the sweep when the boot could not heal it; a
//! session on a lost node is listed `"reachable": false` (`null` without the nodes right) until it
//! is replaced, then `degraded` and reachable.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::fake_kube::FakeKube;
use support::runnerd::{free_port, poll};
use support::spawner::SpawnerProcess;
use tale::modes::spawner::backend::kubernetes::manifests::pod_name;

const NAMESPACE: &str = "tale-sandbox";
const IMAGE: &str = "tale-sandbox-runtime:test";
/// A sweep interval no test waits for: only boot can act.
const NO_SWEEP: &str = "3600000";

async fn kube_spawner(fake: &FakeKube, extra: &[(&str, &str)]) -> SpawnerProcess {
    let env = [&[("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000")], extra].concat();
    SpawnerProcess::kubernetes(fake.write_kubeconfig(), IMAGE, free_port(), &env).await
}

/// Creates the session (with a seed env), writes `kept.txt` in its workspace and pins it.
async fn pinned_session_with_a_file(spawner: &SpawnerProcess, id: &str) {
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "uorg", "env": {"SEEDED": "1"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    let out = spawner
        .client
        .exec_stdout(id, "w", "echo kept > kept.txt && echo $SEEDED")
        .await;
    assert_eq!(out.trim(), "1");
    let (status, body) = spawner
        .client
        .json(
            Method::PATCH,
            &format!("/v1/sessions/{id}/pin"),
            Some(json!({"pinned": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn uid(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap().to_owned()
}

/// Waits for a running Pod of the session other than the one of uid `old`.
async fn replaced(fake: &FakeKube, id: &str, old: &str, within: Duration) -> bool {
    poll(within, async || {
        fake.object("pods", &pod_name(id))
            .filter(|p| uid(p) != old && p["status"]["phase"] == "Running")
    })
    .await
    .is_some()
}

/// The session as `GET /v1/sessions/:id` reports it.
async fn get(spawner: &SpawnerProcess, id: &str) -> Value {
    let (status, body) = spawner
        .client
        .json(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", spawner.log());
    body["session"].clone()
}

/// The session as `GET /v1/sessions` lists it.
async fn listed(spawner: &SpawnerProcess, id: &str) -> Value {
    let (status, body) = spawner.client.json(Method::GET, "/v1/sessions", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sessionId"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is listed: {body}"))
}

/// Its workspace kept, its seed gone: `degraded`, `kept.txt` there, `SEEDED` not.
async fn assert_back_degraded(spawner: &SpawnerProcess, id: &str) {
    assert_eq!(get(spawner, id).await["state"], "degraded");
    let out = spawner
        .client
        .exec_stdout(id, "r", "cat kept.txt; echo \"seed=${SEEDED:-}\"")
        .await;
    assert_eq!(out, "kept\nseed=\n");
}

/// A pinned session whose Pod was evicted while no spawner ran is not among the Pods boot
/// adoption lists (it ended); the booting spawner finds it by its workspace PVC and brings it
/// back with no request to it, its sweep never running. Fails on the code before: nothing
/// healed it until an access.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_session_lost_while_no_spawner_ran_heals_at_boot() {
    let fake = FakeKube::start().await;
    let mut spawner = kube_spawner(&fake, &[("SANDBOX_SWEEP_INTERVAL_MS", NO_SWEEP)]).await;
    let id = "unwatched-boot";
    pinned_session_with_a_file(&spawner, id).await;
    let first = uid(&fake.object("pods", &pod_name(id)).unwrap());
    spawner.kill9();
    fake.evict_for_node_pressure(NAMESPACE, &pod_name(id));
    spawner.restart().await;
    // No request to the session until it is back (healed and registered).
    let healed = poll(Duration::from_secs(30), async || {
        spawner
            .log()
            .contains("healed a pinned session whose compute was lost while unwatched")
            .then_some(())
    })
    .await;
    assert!(healed.is_some(), "healed at boot:\n{}", spawner.log());
    assert!(replaced(&fake, id, &first, Duration::from_secs(1)).await);
    assert_back_degraded(&spawner, id).await;
    assert_eq!(get(&spawner, id).await["pinned"], true);
}

/// When the boot cannot heal such a session (the API refuses to read Pods), it is left for the
/// sweep, which brings it back once the API answers again. Fails on the code before: the sweep
/// only healed sessions its registry held.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_session_the_boot_could_not_heal_heals_by_the_sweep() {
    let fake = FakeKube::start().await;
    let mut spawner = kube_spawner(&fake, &[("SANDBOX_SWEEP_INTERVAL_MS", "300")]).await;
    let id = "unwatched-sweep";
    pinned_session_with_a_file(&spawner, id).await;
    let first = uid(&fake.object("pods", &pod_name(id)).unwrap());
    spawner.kill9();
    fake.evict_for_node_pressure(NAMESPACE, &pod_name(id));
    fake.forbid("pods");
    spawner.restart().await;
    let refused = poll(Duration::from_secs(20), async || {
        spawner
            .log()
            .contains("cannot read the Pod of a pinned session")
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "the heal failed:\n{}", spawner.log());
    assert_eq!(
        uid(&fake.object("pods", &pod_name(id)).unwrap()),
        first,
        "not replaced while Pods cannot be read"
    );
    fake.allow("pods");
    let healed = poll(Duration::from_secs(30), async || {
        spawner
            .log()
            .contains("healed a pinned session whose compute was lost while unwatched")
            .then_some(())
    })
    .await;
    assert!(
        healed.is_some(),
        "healed by a later sweep:\n{}",
        spawner.log()
    );
    assert!(replaced(&fake, id, &first, Duration::from_secs(1)).await);
    assert_back_degraded(&spawner, id).await;
}

/// A session whose node stopped reporting is listed and read as `"reachable": false` (its routes
/// answer 503 `session_unreachable`) — not like a live one; once it is replaced it is `degraded`
/// and reachable (the field is absent). Fails on the code before: it was listed like a live one.
#[tokio::test(flavor = "multi_thread")]
async fn session_on_a_lost_node_is_listed_unreachable() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, &[("SANDBOX_K8S_NODE_LOST_TIMEOUT_MS", "3000")]).await;
    let id = "unwatched-node";
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "uorg"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let live = listed(&spawner, id).await;
    assert_eq!(live["state"], "ready");
    assert!(live.get("reachable").is_none(), "{live}");

    let first = uid(&fake.object("pods", &pod_name(id)).unwrap());
    let node = fake.node_of(NAMESPACE, &pod_name(id)).unwrap();
    fake.lose_node(&node);
    let lost = poll(Duration::from_secs(10), async || {
        let session = listed(&spawner, id).await;
        (session.get("reachable") == Some(&json!(false))).then_some(session)
    })
    .await;
    assert!(lost.is_some(), "listed unreachable:\n{}", spawner.log());
    assert_eq!(get(&spawner, id).await["reachable"], false);
    let (status, body) = spawner
        .client
        .json(
            Method::GET,
            &format!("/v1/sessions/{id}/files?path=."),
            None,
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("session_unreachable")
        ),
        "{body}\n{}",
        spawner.log()
    );

    // Replaced once the node is out of service and lost for the timeout (at an access).
    fake.taint_out_of_service(&node);
    let served = poll(Duration::from_secs(30), async || {
        let (status, _) = spawner
            .client
            .json(
                Method::GET,
                &format!("/v1/sessions/{id}/files?path=."),
                None,
            )
            .await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(served.is_some(), "replaced:\n{}", spawner.log());
    assert!(replaced(&fake, id, &first, Duration::from_secs(1)).await);
    let back = poll(Duration::from_secs(10), async || {
        let session = listed(&spawner, id).await;
        session.get("reachable").is_none().then_some(session)
    })
    .await
    .expect("reachable again once replaced");
    assert_eq!(back["state"], "degraded");
    let read = get(&spawner, id).await;
    assert_eq!(read["state"], "degraded");
    assert!(read.get("reachable").is_none(), "{read}");
}

/// Without the right to read Nodes the spawner cannot tell a lost node from a slow Pod: the
/// session is listed `"reachable": null` (unknown), as its 503 says.
#[tokio::test(flavor = "multi_thread")]
async fn lost_node_without_node_access_is_listed_unknown() {
    let fake = FakeKube::start().await;
    fake.forbid("nodes");
    let spawner = kube_spawner(&fake, &[]).await;
    let id = "unwatched-unknown";
    let (status, body) = spawner
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "uorg"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(listed(&spawner, id).await.get("reachable").is_none());
    let node = fake.node_of(NAMESPACE, &pod_name(id)).unwrap();
    fake.lose_node(&node);
    let unknown = poll(Duration::from_secs(10), async || {
        let session = listed(&spawner, id).await;
        (session.get("reachable") == Some(&Value::Null)).then_some(session)
    })
    .await;
    assert!(unknown.is_some(), "listed unknown:\n{}", spawner.log());
}

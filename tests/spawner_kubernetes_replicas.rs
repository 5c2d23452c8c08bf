//! Several real spawner processes against one (fake) Kubernetes API server act as one service:
//! the caps hold across them under concurrent creates (one claim Lease per cap slot, which the API
//! server arbitrates), leaked claims are reclaimed under preconditions, any replica serves a
//! session another one created, a pin (an annotation on the workspace PVC) outlives its replica,
//! a same-id race keeps every object of the winner, and sessions of a release without claims get
//! theirs on adoption. The Docker version of these scenarios is tests/spawner_replicas.rs.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::fake_kube::FakeKube;
use support::runnerd::{free_port, poll};
use support::spawner::{stdout_text, SpawnerClient, SpawnerProcess};
use tale::modes::spawner::backend::kubernetes::claims::{global_slot, org_slot};
use tale::modes::spawner::backend::kubernetes::manifests::{pod_name, pvc_name, secret_name};

const NAMESPACE: &str = "tale-sandbox";
const IMAGE: &str = "tale-sandbox-runtime:test";

/// N spawner replicas (one deployment) against one fake API server.
struct Deployment {
    fake: FakeKube,
    replicas: Vec<SpawnerProcess>,
    env: Vec<(String, String)>,
}

impl Deployment {
    async fn start(n: usize, extra: &[(&str, &str)]) -> Deployment {
        let fake = FakeKube::start().await;
        let mut env: Vec<(String, String)> = vec![
            ("SANDBOX_BACKEND".into(), "kubernetes".into()),
            (
                "KUBECONFIG".into(),
                fake.write_kubeconfig().display().to_string(),
            ),
            ("SANDBOX_RUNTIME_IMAGE".into(), IMAGE.into()),
            ("SANDBOX_K8S_RUNNERD_PORT".into(), free_port().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut deployment = Deployment {
            fake,
            replicas: Vec::new(),
            env,
        };
        deployment.boot_together(n).await;
        deployment
    }

    /// Starts `n` more replicas at once (booting together, as a scaled Deployment does).
    async fn boot_together(&mut self, n: usize) {
        let starts: Vec<_> = (0..n).map(|_| self.replica()).collect();
        for start in starts {
            self.replicas.push(start.await.unwrap());
        }
    }

    /// A new replica of the deployment, starting (not yet added).
    fn replica(&self) -> tokio::task::JoinHandle<SpawnerProcess> {
        self.replica_with(&[])
    }

    /// A new replica with extra env (a test hook, say), starting (not yet added).
    fn replica_with(&self, extra: &[(&str, &str)]) -> tokio::task::JoinHandle<SpawnerProcess> {
        let root = std::env::temp_dir().join(format!(
            "tale-k8s-replicas-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        tokio::spawn(SpawnerProcess::start(root, env))
    }

    fn client(&self, i: usize) -> SpawnerClient {
        self.replicas[i % self.replicas.len()].client.clone()
    }

    /// `n` concurrent creates for the given orgs, spread round-robin over the replicas.
    async fn create_many(&self, tag: &str, orgs: &[&str], n: usize) -> Vec<StatusCode> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let client = self.client(i);
                let body = json!({"sessionId": format!("{tag}{i}"), "organizationId": orgs[i % orgs.len()]});
                tokio::spawn(async move {
                    client
                        .json(Method::POST, "/v1/sessions", Some(body))
                        .await
                        .0
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        statuses
    }

    /// Session Pods of `org` that are not being deleted.
    fn pods_of(&self, org: &str) -> usize {
        self.fake
            .objects("pods")
            .values()
            .filter(|p| p["metadata"]["annotations"]["tale.dev/organization-id"] == org)
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count()
    }

    async fn create(&self, i: usize, id: &str, org: &str, extra: Value) -> (StatusCode, Value) {
        let mut body = json!({"sessionId": id, "organizationId": org});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.client(i)
            .json(Method::POST, "/v1/sessions", Some(body))
            .await
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(SpawnerProcess::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// Every API verb the replicas used is one the chart's Role grants (tests/support/rbac.rs).
fn assert_granted(fake: &FakeKube) {
    let granted = support::rbac::rules();
    for (group, resource, verbs) in fake.verbs_used() {
        let rule = granted
            .iter()
            .find(|(g, r, _)| *g == group && *r == resource)
            .unwrap_or_else(|| panic!("no Role rule for {group}/{resource} ({verbs:?})"));
        for verb in verbs {
            assert!(
                rule.2.contains(&verb),
                "{group}/{resource} {verb} is not granted"
            );
        }
    }
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// DELETE requests the replicas sent for objects named `name`.
fn deletes_of(fake: &FakeKube, resource: &str, name: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.path.ends_with(&format!("/{resource}/{name}")))
        .count()
}

/// 24 concurrent creates for one org with a cap of 3, spread over 3 replicas booted together:
/// exactly 3 sessions run, the rest get 429, and the 3 sessions hold 6 claim Leases (an org slot
/// and a global slot each). On the code before claims this admitted 24.
#[tokio::test(flavor = "multi_thread")]
async fn org_cap_holds_across_replicas() {
    let deployment = Deployment::start(
        3,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "3"),
            ("SANDBOX_MAX_SESSIONS", "100"),
        ],
    )
    .await;
    let statuses = deployment.create_many("korg", &["capped"], 24).await;
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        3,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 21);
    assert_eq!(deployment.pods_of("capped"), 3);
    let leases: Vec<String> = deployment.fake.leases().into_keys().collect();
    let mut expected: Vec<String> = (0..3)
        .map(|n| org_slot("capped", n))
        .chain((0..3).map(global_slot))
        .collect();
    expected.sort();
    assert_eq!(leases, expected, "one org and one global slot per session");
}

/// The global cap likewise: 16 concurrent creates over 8 orgs with a global cap of 4 → 4 sessions.
#[tokio::test(flavor = "multi_thread")]
async fn global_cap_holds_across_replicas() {
    let deployment = Deployment::start(
        3,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "50"),
            ("SANDBOX_MAX_SESSIONS", "4"),
        ],
    )
    .await;
    let orgs = ["g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"];
    let statuses = deployment.create_many("kglob", &orgs, 16).await;
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        4,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    let running: usize = orgs.iter().map(|o| deployment.pods_of(o)).sum();
    assert_eq!(running, 4);
    // Refused creates handed their org slot back: only the admitted sessions hold Leases.
    assert_eq!(deployment.fake.leases().len(), 8);
}

/// A session created on one replica is listed on another, exec'd on a third and destroyed on the
/// second (its Pod, Secret, PVC and claims go); the first then no longer lists it.
#[tokio::test(flavor = "multi_thread")]
async fn any_replica_serves_any_session() {
    let deployment = Deployment::start(3, &[]).await;
    let id = "kany";
    let (status, body) = deployment.create(0, id, "any", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    assert_eq!(deployment.fake.leases_of(id).len(), 2);
    let listed_on = |i: usize| {
        let client = deployment.client(i);
        async move {
            let (_, list) = client
                .json(Method::GET, "/v1/sessions?organizationId=any", None)
                .await;
            list["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sessionId"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed_on(1).await,
        vec![id.to_owned()],
        "listed on replica 1"
    );
    let (_, stream) = deployment
        .client(2)
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"execId": "hello", "shell": "echo from-replica-2"})),
            &[],
        )
        .await;
    assert_eq!(stdout_text(&stream.collect_all().await), "from-replica-2\n");
    let (status, destroyed) = deployment
        .client(1)
        .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(
        (status, destroyed),
        (StatusCode::OK, json!({"destroyed": true, "busy": false}))
    );
    let fake = &deployment.fake;
    let gone = poll(Duration::from_secs(20), async || {
        fake.object("pods", &pod_name(id)).is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the Pod goes");
    assert!(fake.object("secrets", &secret_name(id)).is_none());
    assert!(fake
        .object("persistentvolumeclaims", &pvc_name(id))
        .is_none());
    assert!(fake.leases_of(id).is_empty(), "its claims are released");
    assert!(
        listed_on(0).await.is_empty(),
        "the creator lists it no more"
    );
}

/// A pin set on one replica survives `kill -9` of that replica: the other replicas, sweeping with
/// a short idle timeout, stop an unpinned control session of the same age but never the pinned one,
/// and report it pinned (read from the PVC annotation).
#[tokio::test(flavor = "multi_thread")]
async fn pin_survives_its_replica() {
    let mut deployment = Deployment::start(3, &[("SANDBOX_SWEEP_INTERVAL_MS", "200")]).await;
    let (pinned, control) = ("kpin", "kctl");
    for id in [pinned, control] {
        let (status, body) = deployment
            .create(0, id, "pin", json!({"idleTimeoutMs": 3000}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
        if id == pinned {
            let (status, body) = deployment
                .client(0)
                .json(
                    Method::PATCH,
                    &format!("/v1/sessions/{pinned}/pin"),
                    Some(json!({"pinned": true})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let pvc = deployment
        .fake
        .object("persistentvolumeclaims", &pvc_name(pinned))
        .unwrap();
    assert_eq!(pvc["metadata"]["annotations"]["tale.dev/pinned"], "true");
    let patches: Vec<_> = deployment
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/persistentvolumeclaims/"))
        .collect();
    assert_eq!(patches.len(), 1, "one merge patch of a PVC: {patches:?}");
    deployment.replicas[0].kill9();
    let fake = &deployment.fake;
    // Stopped: the Pod gone and, right after it in the same stop, its claims released.
    let control_stopped = poll(Duration::from_secs(60), async || {
        (fake.object("pods", &pod_name(control)).is_none() && fake.leases_of(control).is_empty())
            .then_some(())
    })
    .await;
    assert!(
        control_stopped.is_some(),
        "the other replicas sweep idle sessions and release their claims:\n{}",
        deployment.logs()
    );
    // A surviving replica has swept past the idle deadline of both (the pinned one is older).
    let pod = fake.object("pods", &pod_name(pinned)).expect("pinned Pod");
    assert!(
        pod["metadata"]["deletionTimestamp"].is_null(),
        "the pinned session runs on:\n{}",
        deployment.logs()
    );
    let (status, got) = deployment
        .client(1)
        .json(Method::GET, &format!("/v1/sessions/{pinned}"), None)
        .await;
    assert_eq!(
        (status, &got["session"]["pinned"]),
        (StatusCode::OK, &json!(true))
    );
    // Unpinned on a surviving replica: the annotation goes (a merge patch with null).
    let (status, _) = deployment
        .client(2)
        .json(
            Method::PATCH,
            &format!("/v1/sessions/{pinned}/pin"),
            Some(json!({"pinned": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let pvc = fake
        .object("persistentvolumeclaims", &pvc_name(pinned))
        .unwrap();
    assert!(pvc["metadata"]["annotations"]["tale.dev/pinned"].is_null());
    assert_granted(fake);
}

/// Six concurrent creates of one id over three replicas, five times over: each time one session
/// results, every answer is 201 or 409, and nothing of the winner is deleted — no DELETE ever reaches its Pod,
/// Secret or PVC, its Pod runs and serves on every replica, and it holds exactly its two claims
/// (the losers handed theirs back).
#[tokio::test(flavor = "multi_thread")]
async fn same_id_race_keeps_the_winner() {
    let deployment = Deployment::start(3, &[]).await;
    for round in 0..5 {
        let id = format!("ksame{round}");
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let client = deployment.client(i);
                let body = json!({"sessionId": id, "organizationId": "same"});
                tokio::spawn(async move {
                    client
                        .json(Method::POST, "/v1/sessions", Some(body))
                        .await
                        .0
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        // The winner answers 201, a loser 409 (`duplicate`: it exists) or 503
        // (`create_in_progress`: the winner's create is in flight); a loser that arrives once the
        // winner's runnerd answers but before its seed is delivered finishes that seed as a retry
        // would, and answers 201 for the same one session.
        let created = count(&statuses, StatusCode::CREATED);
        let refused = count(&statuses, StatusCode::CONFLICT)
            + count(&statuses, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            created >= 1 && created + refused == 6,
            "{id}: {statuses:?}\n{}",
            deployment.logs()
        );
        let pods = deployment
            .fake
            .objects("pods")
            .into_keys()
            .filter(|name| name.contains(&id))
            .count();
        assert_eq!(pods, 1, "one session");
        let fake = &deployment.fake;
        for (resource, name) in [
            ("pods", pod_name(&id)),
            ("secrets", secret_name(&id)),
            ("persistentvolumeclaims", pvc_name(&id)),
        ] {
            assert_eq!(deletes_of(fake, resource, &name), 0, "{resource} {name}");
            assert!(fake.object(resource, &name).is_some(), "{resource} {name}");
        }
        assert_eq!(fake.leases_of(&id).len(), 2, "one org and one global claim");
        for i in 0..3 {
            let (_, stream) = deployment
                .client(i)
                .sse(
                    Method::POST,
                    &format!("/v1/sessions/{id}/exec"),
                    Some(json!({"execId": format!("e{i}"), "shell": "echo ok"})),
                    &[],
                )
                .await;
            assert_eq!(
                stdout_text(&stream.collect_all().await),
                "ok\n",
                "{id} on {i}"
            );
        }
    }
}

/// The race made certain: a create paused between its Secret and its Pod (test hook) while a
/// second replica creates the same id. The second answers 503 `create_in_progress` (with the wait
/// until the first counts as dead) and deletes nothing; the first then finishes with every object it made. (Before the Secret was a
/// lock, the second deleted the first's Secret as an orphan and made the session its own.)
#[tokio::test(flavor = "multi_thread")]
async fn a_create_in_flight_elsewhere_is_left_alone() {
    let mut deployment = Deployment::start(1, &[]).await;
    let paused = deployment
        .replica_with(&[
            ("TALE_TEST_CREATE_PAUSE_AT", "before_start"),
            ("TALE_TEST_CREATE_PAUSE_MS", "1500"),
        ])
        .await
        .unwrap();
    deployment.replicas.push(paused);
    let id = "kflight";
    let first = {
        let client = deployment.client(1);
        tokio::spawn(async move {
            client
                .json(
                    Method::POST,
                    "/v1/sessions",
                    Some(json!({"sessionId": id, "organizationId": "flight"})),
                )
                .await
        })
    };
    let paused_at = deployment.replicas[1]
        .paused_at("before_start", Duration::from_secs(20))
        .await;
    assert!(paused_at, "{}", deployment.logs());
    let secret = deployment
        .fake
        .object("secrets", &secret_name(id))
        .expect("the paused create's Secret");
    let (status, body) = deployment.create(0, id, "flight", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("create_in_progress")),
        "{body}\n{}",
        deployment.logs()
    );
    assert!(body.to_string().contains("retry in"), "{body}");
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    let fake = &deployment.fake;
    for (resource, name) in [
        ("pods", pod_name(id)),
        ("secrets", secret_name(id)),
        ("persistentvolumeclaims", pvc_name(id)),
    ] {
        assert_eq!(deletes_of(fake, resource, &name), 0, "{resource} {name}");
    }
    assert_eq!(
        fake.object("secrets", &secret_name(id)).unwrap()["metadata"]["uid"],
        secret["metadata"]["uid"],
        "the first create's own Secret"
    );
    assert_eq!(
        fake.leases_of(id).len(),
        2,
        "the loser handed its claims back"
    );
    let (_, stream) = deployment
        .client(0)
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"execId": "f", "shell": "echo flight"})),
            &[],
        )
        .await;
    assert_eq!(stdout_text(&stream.collect_all().await), "flight\n");
}

/// A claim leaked by a crash (its session has no Pod, older than the create budget plus grace) is
/// reclaimed with a uid precondition; a fresh claim of a session still being created is not.
#[tokio::test(flavor = "multi_thread")]
async fn leaked_claims_are_reclaimed() {
    let deployment = Deployment::start(
        2,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "1"),
            ("SANDBOX_MAX_SESSIONS", "100"),
            ("SANDBOX_CREATE_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let lease = |name: &str, session: &str, created: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created,
                            "labels": {"tale.dev/claim": "1"},
                            "annotations": {"tale.dev/session-id": session}},
               "spec": {"holderIdentity": session}})
    };
    // A fresh claim of a create in flight elsewhere: the org is full.
    let now = support::fake_kube::now_rfc3339();
    deployment.fake.insert(
        "leases",
        NAMESPACE,
        lease(&org_slot("fresh", 0), "kinflight", &now),
    );
    let (status, body) = deployment.create(0, "kfresh", "fresh", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(deployment
        .fake
        .object("leases", &org_slot("fresh", 0))
        .is_some());
    // A claim from 2020 whose session has no Pod: reclaimed, and the create admitted.
    deployment.fake.insert(
        "leases",
        NAMESPACE,
        lease(&org_slot("leak", 0), "kcrashed", "2020-01-01T00:00:00Z"),
    );
    let (status, body) = deployment.create(1, "kleak", "leak", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    let delete = deployment
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE" && r.path.ends_with(&org_slot("leak", 0)))
        .expect("the leaked claim was deleted");
    assert_eq!(
        delete.body.unwrap()["preconditions"]["uid"],
        format!("uid-{}", org_slot("leak", 0))
    );
    assert_eq!(deployment.fake.leases_of("kcrashed").len(), 0);
    assert_eq!(deployment.fake.leases_of("kleak").len(), 2);
    assert_granted(&deployment.fake);
}

/// Upgrade: a session made by a release without claims (simulated: its Leases deleted) is adopted
/// by three replicas booting together — exactly one org and one global claim remain — and counts
/// against the org cap (cap 2: of six concurrent creates exactly one is admitted).
#[tokio::test(flavor = "multi_thread")]
async fn sessions_of_the_previous_release_get_claims() {
    let mut deployment = Deployment::start(
        1,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "2"),
            ("SANDBOX_MAX_SESSIONS", "100"),
        ],
    )
    .await;
    let old = "kold";
    let (status, body) = deployment.create(0, old, "upg", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    deployment.replicas.clear();
    deployment.fake.remove_leases();
    assert!(deployment.fake.leases().is_empty());
    deployment.boot_together(3).await;
    let mut claims = deployment.fake.leases_of(old);
    claims.sort();
    assert_eq!(
        claims,
        vec![global_slot(0), org_slot("upg", 0)],
        "{}",
        deployment.logs()
    );
    let statuses = deployment.create_many("kupg", &["upg"], 6).await;
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        1,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    let (_, stream) = deployment
        .client(1)
        .sse(
            Method::POST,
            &format!("/v1/sessions/{old}/exec"),
            Some(json!({"execId": "up", "shell": "echo upgraded"})),
            &[],
        )
        .await;
    assert_eq!(stdout_text(&stream.collect_all().await), "upgraded\n");
}

/// The fake answers like the API server: a taken Lease name is 409 AlreadyExists, a PUT or merge
/// patch with a stale resourceVersion and a DELETE with an unmet uid precondition are 409
/// Conflict, each with a `Status` body; a merge patch merges (`null` removes); a matching
/// precondition deletes.
#[tokio::test]
async fn fake_leases_conflict_like_the_api_server() {
    let fake = FakeKube::start().await;
    let url = |suffix: &str| {
        format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases{suffix}")
    };
    let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": "l1"}, "spec": {"holderIdentity": "a"}});
    let (status, created) = fake.call("POST", &url(""), Some(&body)).await;
    assert_eq!(status, 201);
    let (status, taken) = fake.call("POST", &url(""), Some(&body)).await;
    assert_eq!(
        (status, &taken["reason"], &taken["kind"], &taken["message"]),
        (
            409,
            &json!("AlreadyExists"),
            &json!("Status"),
            &json!("leases.coordination.k8s.io \"l1\" already exists")
        )
    );
    assert_eq!(
        taken["details"],
        json!({"name": "l1", "group": "coordination.k8s.io", "kind": "leases"})
    );
    let mut stale = created.clone();
    let (status, _) = fake.call("PUT", &url("/l1"), Some(&created)).await;
    assert_eq!(status, 200, "an update at the current resourceVersion");
    stale["spec"]["holderIdentity"] = json!("b");
    let (status, conflict) = fake.call("PUT", &url("/l1"), Some(&stale)).await;
    assert_eq!((status, &conflict["reason"]), (409, &json!("Conflict")));
    // A merge patch carrying the stale resourceVersion is refused too; without one it applies.
    let stale_rv = json!({"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}});
    let (status, _) = fake
        .call_as(
            "PATCH",
            &url("/l1"),
            "application/merge-patch+json",
            Some(&stale_rv),
        )
        .await;
    assert_eq!(status, 409);
    let (status, patched) = fake
        .call_as(
            "PATCH",
            &url("/l1"),
            "application/merge-patch+json",
            Some(&json!({"metadata": {"labels": {"a": "b"}}, "spec": {"holderIdentity": null}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["metadata"]["labels"], json!({"a": "b"}));
    assert!(
        patched["spec"].get("holderIdentity").is_none(),
        "null removes"
    );
    let (status, _) = fake
        .call_as(
            "PATCH",
            &url("/l1"),
            "application/json-patch+json",
            Some(&json!([])),
        )
        .await;
    assert_eq!(status, 415, "only merge patches are served");
    let (status, unmet) = fake
        .call(
            "DELETE",
            &url("/l1"),
            Some(&json!({"preconditions": {"uid": "someone-else"}})),
        )
        .await;
    assert_eq!((status, &unmet["reason"]), (409, &json!("Conflict")));
    assert!(
        unmet["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: UID in precondition: someone-else"),
        "{unmet}"
    );
    let uid = created["metadata"]["uid"].clone();
    let (status, _) = fake
        .call(
            "DELETE",
            &url("/l1"),
            Some(&json!({"preconditions": {"uid": uid}})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(fake.leases().is_empty());
}

/// Upgrade: a session whose objects a previous release made (no `tale.dev/seed-record` on the Pod,
/// no org label, no compute record; simulated by re-posting a session's objects without them, so
/// the kubelet starts a runnerd that never had its seed recorded) is adopted `ready`, as that
/// release reported it — not `degraded` — while a Pod of this release without a record is
/// `degraded`.
#[tokio::test(flavor = "multi_thread")]
async fn a_previous_release_pod_is_adopted_ready() {
    let mut deployment = Deployment::start(1, &[]).await;
    let id = "kprev";
    let (status, body) = deployment.create(0, id, "prev", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    let fake = &deployment.fake;
    let saved: Vec<(&str, Value)> = [
        ("secrets", secret_name(id)),
        ("persistentvolumeclaims", pvc_name(id)),
        ("pods", pod_name(id)),
    ]
    .into_iter()
    .map(|(resource, name)| (resource, fake.object(resource, &name).unwrap()))
    .collect();
    deployment.replicas.clear();
    let fake = &deployment.fake;
    for (resource, name) in [
        ("pods", pod_name(id)),
        ("secrets", secret_name(id)),
        ("persistentvolumeclaims", pvc_name(id)),
    ] {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/{resource}/{name}");
        let (status, _) = fake
            .call("DELETE", &path, Some(&json!({"gracePeriodSeconds": 0})))
            .await;
        // The Secret may already be gone with its owner Pod (garbage collection).
        assert!(status == 200 || status == 404, "{resource}: {status}");
        let gone = poll(Duration::from_secs(20), async || {
            fake.object(resource, &name).is_none().then_some(())
        })
        .await;
        assert!(gone.is_some(), "{resource} {name} deleted");
    }
    for (resource, mut object) in saved {
        let meta = object["metadata"].as_object_mut().unwrap();
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "ownerReferences",
            "finalizers",
        ] {
            meta.remove(field);
        }
        for key in ["tale.dev/seed-record", "tale.dev/compute"] {
            meta["annotations"].as_object_mut().unwrap().remove(key);
        }
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove("tale.dev/org-hash");
        }
        object.as_object_mut().unwrap().remove("status");
        let path = format!("/api/v1/namespaces/{NAMESPACE}/{resource}");
        let (status, body) = fake.call("POST", &path, Some(&object)).await;
        assert_eq!(status, 201, "{resource}: {body}");
    }
    deployment.boot_together(1).await;
    let state = poll(Duration::from_secs(30), async || {
        let (status, body) = deployment
            .client(0)
            .json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await;
        (status == StatusCode::OK).then(|| body["session"]["state"].clone())
    })
    .await;
    assert_eq!(
        state,
        Some(json!("ready")),
        "a previous release's session reads ready\n{}",
        deployment.logs()
    );
}

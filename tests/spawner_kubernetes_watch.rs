//! End-to-end for the kubernetes backend's watch (the real `tale spawner` against the fake API
//! server of `support::fake_kube`): readiness from watch events (no GET-poll of the Pod), lists
//! answered from the watch cache, paginated LISTs (`limit` + `continue`), a re-list after 410
//! Gone, 429 throttling survived, the organization selected by its label (server-side when the
//! watch is unavailable; unlabelled Pods of an older release still listed), and a listener that
//! binds before boot adoption ends (503 `adoption_in_progress` meanwhile). The fake's own list,
//! watch and throttle semantics are checked over raw HTTP first.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::fake_kube::{FakeKube, Recorded, FAKE_TOKEN};
use support::runnerd::{free_port, poll};

/// Polls `check` until it holds; panics naming `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let held = poll(timeout, async || check().await.then_some(())).await;
    assert!(held.is_some(), "timed out waiting for {what}");
}
use support::spawner::{now_ms, SpawnerProcess};
use tale::modes::spawner::backend::kubernetes::manifests::{org_hash, pod_name};

const NAMESPACE: &str = "tale-sandbox";
const IMAGE: &str = "tale-sandbox-runtime:test";
const PODS: &str = "/api/v1/namespaces/tale-sandbox/pods";

async fn kube_spawner(
    fake: &FakeKube,
    runnerd_port: u16,
    extra: &[(&str, &str)],
) -> SpawnerProcess {
    let env = [&[("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "20000")], extra].concat();
    SpawnerProcess::kubernetes(fake.write_kubeconfig(), IMAGE, runnerd_port, &env).await
}

/// A session Pod of a peer (no kubelet behind it), Running at `ip`; `labelled: false` is a Pod
/// of a release without the organization label.
fn peer_pod(id: &str, org: &str, labelled: bool, ip: &str) -> Value {
    let mut labels = json!({"tale.sandbox-session": "1", "tale.sandbox/role": "session"});
    if labelled {
        labels["tale.dev/org-hash"] = json!(org_hash(org));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(id), "uid": format!("peer-{id}"), "labels": labels,
            "annotations": {
                "tale.dev/session-id": id, "tale.dev/organization-id": org,
                "tale.dev/profile": "default", "tale.dev/created-at": now_ms().to_string(),
            },
        },
        "status": {"phase": "Running", "podIP": ip},
    })
}

fn is_watch(r: &Recorded) -> bool {
    r.method == "GET" && r.path == PODS && r.query.contains("watch=true")
}

fn is_pod_list(r: &Recorded) -> bool {
    r.method == "GET" && r.path == PODS && !r.query.contains("watch=true")
}

fn query_param(r: &Recorded, name: &str) -> Option<String> {
    form_urlencoded::parse(r.query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// One raw HTTP/1.1 request to the fake; the status and the body read until `until` holds or
/// the connection ends (bounded by a deadline).
async fn fake_http(
    fake: &FakeKube,
    path_and_query: &str,
    until: impl Fn(&str) -> bool,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", fake.port))
        .await
        .unwrap();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nhost: fake\r\nauthorization: Bearer {FAKE_TOKEN}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 8192];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => text.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Ok(Err(_)) => break,
        }
        if until(&text) {
            break;
        }
    }
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The JSON objects in a body (of a chunked stream: the lines that parse as objects).
fn json_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// The fake pages lists from one snapshot with real continue tokens, answers an expired token
/// 410, streams watch events from a resourceVersion with bookmarks and label-selector
/// transitions, answers a too-old watch with an ERROR 410 event, and throttles with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_lists_watches_and_throttles_like_the_api_server() {
    let fake = FakeKube::start().await;
    for i in 0..5 {
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod(&format!("p{i}"), "o", true, "127.0.0.9"),
        );
    }
    let (status, body) = fake_http(&fake, &format!("{PODS}?limit=2"), |_| false).await;
    assert_eq!(status, 200, "{body}");
    let page = json_lines(&body).pop().expect("a JSON list");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let list_rv = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    // Changes after the first page do not tear the listing: the rest comes from its snapshot.
    fake.insert("pods", NAMESPACE, peer_pod("p9", "o", true, "127.0.0.9"));
    let continued = format!("{PODS}?limit=10&continue={token}");
    let (_, body) = fake_http(&fake, &continued, |_| false).await;
    let rest = json_lines(&body).pop().unwrap();
    let names: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "the snapshot's 3 remaining, not the new Pod: {names:?}"
    );
    assert!(rest["metadata"].get("continue").is_none());

    // A watch from the list's version sees what happened since, then bookmarks.
    let watch = format!("{PODS}?watch=true&resourceVersion={list_rv}&allowWatchBookmarks=true&labelSelector=tale.sandbox-session%3D1");
    let (status, body) = fake_http(&fake, &watch, |t| t.contains("BOOKMARK")).await;
    assert_eq!(status, 200);
    let events = json_lines(&body);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], pod_name("p9"));
    assert_eq!(events.last().unwrap()["type"], "BOOKMARK");
    // Relabelled out of the selector: DELETED to this watcher.
    let mut relabelled = fake.object("pods", &pod_name("p1")).unwrap();
    relabelled["metadata"]["labels"] = json!({"other": "1"});
    fake.insert("pods", NAMESPACE, relabelled);
    let (_, body) = fake_http(&fake, &watch, |t| t.matches("\"type\"").count() >= 2).await;
    let types: Vec<String> = json_lines(&body)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types[..2], ["ADDED", "DELETED"], "{body}");

    // Compacted history: the old token and the old version are gone.
    fake.compact();
    let (status, body) = fake_http(&fake, &continued, |_| false).await;
    assert_eq!(status, 410, "{body}");
    let expired = json_lines(&body).pop().unwrap();
    assert_eq!(
        (expired["reason"].as_str(), expired["code"].as_u64()),
        (Some("Expired"), Some(410))
    );
    assert!(
        expired["metadata"]["continue"].is_string(),
        "a token to go on inconsistently"
    );
    let (status, body) = fake_http(&fake, &watch, |t| t.contains("ERROR")).await;
    assert_eq!(status, 200);
    let error = json_lines(&body).pop().unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
    assert!(error["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with("too old resource version"));

    fake.throttle(1, 2);
    let (status, body) = fake_http(&fake, PODS, |_| false).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        json_lines(&body).pop().unwrap()["reason"],
        "TooManyRequests"
    );
    let (status, _) = fake_http(&fake, PODS, |_| false).await;
    assert_eq!(status, 200, "only N requests are throttled");
}

/// A create waits for its Pod on watch events: after the Pod's POST no GET of the Pod is sent
/// (the old backend polled it every 50–500 ms), and list, get and exists are answered from the
/// watch cache without LIST requests. The Role's verbs cover what was used, `watch` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_readiness_and_reads_come_from_the_watch() {
    let fake = FakeKube::start().await;
    let spawner = kube_spawner(&fake, free_port(), &[]).await;
    let c = spawner.client.clone();
    wait_until("the watch", Duration::from_secs(10), async || {
        fake.requests().iter().any(is_watch)
    })
    .await;
    let id = "watch-ready";
    c.create(id, "worg").await;
    let requests = fake.requests();
    let pod_path = format!("{PODS}/{}", pod_name(id));
    let post = requests
        .iter()
        .position(|r| r.method == "POST" && r.path == PODS)
        .expect("the Pod was created");
    let gets_after: Vec<&Recorded> = requests[post..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == pod_path)
        .collect();
    assert!(
        gets_after.is_empty(),
        "readiness polled the Pod: {gets_after:?}"
    );
    let watch = requests.iter().find(|r| is_watch(r)).unwrap();
    assert_eq!(
        query_param(watch, "labelSelector").as_deref(),
        Some("tale.sandbox-session=1")
    );
    assert_eq!(
        query_param(watch, "allowWatchBookmarks").as_deref(),
        Some("true")
    );

    let lists_before = fake.requests().iter().filter(|r| is_pod_list(r)).count();
    let (status, listed) = c.json(Method::GET, "/v1/sessions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["sessions"][0]["sessionId"], id, "{listed}");
    let (status, _) = c
        .json(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let lists_after = fake.requests().iter().filter(|r| is_pod_list(r)).count();
    assert_eq!(lists_before, lists_after, "lists came from the watch cache");

    for (group, resource, verbs) in fake.verbs_used() {
        let granted = support::rbac::rules()
            .into_iter()
            .find(|(g, r, _)| *g == group && *r == resource)
            .map(|(_, _, v)| v)
            .unwrap_or_default();
        for verb in verbs {
            assert!(
                granted.contains(&verb),
                "the Role lacks {verb} on {resource}"
            );
        }
    }
    assert_eq!(c.destroy(id).await, (StatusCode::OK, true));
}

/// With a small page size the watch's list and the fallback lists go page by page (`limit` and
/// `continue`); after the watch ends and history is compacted, the resumed watch gets 410 and the
/// backend re-lists, seeing a Pod made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_lists_are_paginated_and_relisted_after_410() {
    let fake = FakeKube::start().await;
    for i in 0..5 {
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod(&format!("pg{i}"), "porg", true, "127.0.0.1"),
        );
    }
    let spawner = kube_spawner(&fake, free_port(), &[("SANDBOX_K8S_LIST_PAGE_SIZE", "2")]).await;
    let c = spawner.client.clone();
    wait_until("the watch", Duration::from_secs(10), async || {
        fake.requests().iter().any(is_watch)
    })
    .await;
    let lists: Vec<Recorded> = fake.requests().into_iter().filter(is_pod_list).collect();
    assert!(
        lists
            .iter()
            .all(|r| query_param(r, "limit").as_deref() == Some("2")),
        "{lists:?}"
    );
    let continued = lists
        .iter()
        .filter(|r| query_param(r, "continue").is_some())
        .count();
    assert!(continued >= 2, "5 Pods in pages of 2: {lists:?}");
    let (_, listed) = c.json(Method::GET, "/v1/sessions", None).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 5, "{listed}");

    let lists_before = fake.requests().iter().filter(|r| is_pod_list(r)).count();
    fake.end_watches();
    fake.insert(
        "pods",
        NAMESPACE,
        peer_pod("pg-late", "porg", true, "127.0.0.1"),
    );
    fake.compact();
    wait_until("a re-list", Duration::from_secs(15), async || {
        fake.requests().iter().filter(|r| is_pod_list(r)).count() > lists_before
    })
    .await;
    wait_until("the late Pod listed", Duration::from_secs(10), async || {
        let (_, listed) = c.json(Method::GET, "/v1/sessions", None).await;
        listed["sessions"].as_array().is_some_and(|s| s.len() == 6)
    })
    .await;
}

/// 429s with `Retry-After` at boot, around the watch's start and during a create are waited out:
/// the boot, the watch and the create all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_survives_throttling() {
    let fake = FakeKube::start().await;
    fake.throttle(3, 1);
    let spawner = kube_spawner(&fake, free_port(), &[]).await;
    let c = spawner.client.clone();
    let throttled_boot = fake.requests().len();
    assert!(throttled_boot >= 4, "the boot retried past the 429s");
    // The watch's own LIST and watch requests get through the throttling as well.
    fake.throttle(2, 1);
    wait_until(
        "the watch after 429s",
        Duration::from_secs(15),
        async || fake.requests().iter().any(is_watch),
    )
    .await;
    fake.throttle(4, 1);
    let started = Instant::now();
    c.create("throttled", "torg").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let (status, listed) = c.json(Method::GET, "/v1/sessions/throttled", None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(c.destroy("throttled").await, (StatusCode::OK, true));
}

/// The organization filter: from the watch cache, and — with the watch forbidden — from LISTs
/// that select the organization's label on the server plus unlabelled Pods (an older release),
/// which are still listed under their annotated organization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_selects_the_organization_by_label() {
    for watch_allowed in [true, false] {
        let fake = FakeKube::start().await;
        if !watch_allowed {
            fake.forbid_watch("pods");
        }
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod("a-new", "org-a", true, "127.0.0.1"),
        );
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod("a-old", "org-a", false, "127.0.0.1"),
        );
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod("b-new", "org-b", true, "127.0.0.1"),
        );
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod("b-old", "org-b", false, "127.0.0.1"),
        );
        let spawner = kube_spawner(&fake, free_port(), &[]).await;
        let c = spawner.client.clone();
        let ids = |listed: &Value| -> Vec<String> {
            listed["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sessionId"].as_str().unwrap().to_owned())
                .collect()
        };
        let (status, listed) = c
            .json(Method::GET, "/v1/sessions?organizationId=org-a", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            ids(&listed),
            ["a-new", "a-old"],
            "watch allowed: {watch_allowed}"
        );
        if !watch_allowed {
            let selectors: Vec<String> = fake
                .requests()
                .iter()
                .filter(|r| is_pod_list(r))
                .filter_map(|r| query_param(r, "labelSelector"))
                .collect();
            let by_label = format!(
                "tale.sandbox-session=1,tale.dev/org-hash={}",
                org_hash("org-a")
            );
            assert!(selectors.contains(&by_label), "{selectors:?}");
            assert!(
                selectors.contains(&"tale.sandbox-session=1,!tale.dev/org-hash".to_owned()),
                "{selectors:?}"
            );
        }
    }
}

/// The listener binds before boot adoption ends: with a session whose runnerd hangs (adoption
/// waits on its probes), `/health` answers at once, a request for that session waits the
/// adoption window and gets 503 `adoption_in_progress` with `retry-after`, and once the probes
/// end the session is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_listener_binds_before_adoption() {
    let fake = FakeKube::start().await;
    let runnerd_port = free_port();
    // A runnerd that accepts and never answers.
    let hanging = tokio::net::TcpListener::bind(("127.0.0.1", runnerd_port))
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hanging.accept().await {
            held.push(stream);
        }
    });
    fake.insert(
        "pods",
        NAMESPACE,
        peer_pod("slow-adopt", "sorg", true, "127.0.0.1"),
    );
    let started = Instant::now();
    let spawner = kube_spawner(&fake, runnerd_port, &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/health answered before the adoption's 5 s probe ended"
    );
    let c = spawner.client.clone();
    let request = c.request(
        Method::GET,
        "/v1/sessions/slow-adopt",
        Default::default(),
        true,
    );
    let response = c.send(request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = response.headers().get("retry-after").cloned();
    let reply = tale::shared::spawner_client::read_reply(response)
        .await
        .unwrap();
    assert_eq!(
        reply.json()["error"],
        "adoption_in_progress",
        "{:?}",
        reply.json()
    );
    assert_eq!(retry_after.unwrap().to_str().unwrap(), "2");
    holder.abort();
    wait_until("the session adopted", Duration::from_secs(60), async || {
        let (status, _) = c.json(Method::GET, "/v1/sessions/slow-adopt", None).await;
        status == StatusCode::OK
    })
    .await;
}

/// The sweep probes sessions concurrently (up to `SWEEP_CONCURRENCY`), not one after another:
/// with 20 adopted sessions whose runnerd accepts and never answers, one sweep has well over one
/// probe connection open at once (a sequential sweep holds one for the probe's 5 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_sweep_probes_sessions_concurrently() {
    let fake = FakeKube::start().await;
    let runnerd_port = free_port();
    for i in 0..20 {
        fake.insert(
            "pods",
            NAMESPACE,
            peer_pod(&format!("sw{i:02}"), "sworg", true, "127.0.0.1"),
        );
    }
    // Nothing listens yet: boot adoption's probes are refused at once.
    let spawner = kube_spawner(&fake, runnerd_port, &[("SANDBOX_SWEEP_INTERVAL_MS", "300")]).await;
    wait_until("boot adoption", Duration::from_secs(30), async || {
        spawner.log().contains("spawner ready")
    })
    .await;
    let hanging = tokio::net::TcpListener::bind(("127.0.0.1", runnerd_port))
        .await
        .unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let holder = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = hanging.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        })
    };
    // Within one probe timeout (5 s) a sequential sweep could open one connection.
    wait_until("concurrent probes", Duration::from_secs(4), async || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 10
    })
    .await;
    holder.abort();
}

/// Boot adoption reads pins and cap claims with one listing each per pass, not one read per
/// session: 30 sessions of this release (each holding its claim Leases, one pinned) are adopted
/// with no per-session PVC or Lease request, and the pinned one is reported pinned.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_adoption_lists_pins_and_claims_once() {
    use tale::modes::spawner::backend::kubernetes::claims::{global_slot, org_slot};
    use tale::modes::spawner::backend::kubernetes::manifests::pvc_name;
    let fake = FakeKube::start().await;
    let runnerd_port = free_port();
    for i in 0..30u64 {
        let id = format!("ad{i:02}");
        fake.insert("pods", NAMESPACE, peer_pod(&id, "adorg", true, "127.0.0.1"));
        for name in [global_slot(i), org_slot("adorg", i)] {
            fake.insert(
                "leases",
                NAMESPACE,
                json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "uid": format!("{name}-uid"),
                                 "labels": {"tale.dev/claim": "1"},
                                 "annotations": {"tale.dev/session-id": id}},
                    "spec": {"holderIdentity": id},
                }),
            );
        }
        let mut annotations =
            json!({"tale.dev/session-id": id, "tale.dev/organization-id": "adorg"});
        if i == 7 {
            annotations["tale.dev/pinned"] = json!("true");
        }
        fake.insert(
            "persistentvolumeclaims",
            NAMESPACE,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc_name(&id), "uid": format!("pvc-{id}"),
                             "labels": {"tale.sandbox-session-ws": "1"},
                             "annotations": annotations},
            }),
        );
    }
    let spawner = kube_spawner(&fake, runnerd_port, &[]).await;
    wait_until("boot adoption", Duration::from_secs(30), async || {
        spawner.log().contains("spawner ready")
    })
    .await;
    let (status, body) = spawner
        .client
        .json(Method::GET, "/v1/sessions/ad07", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["session"]["pinned"], json!(true), "{body}");
    let requests = fake.requests();
    let reads = |resource: &str| {
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains(&format!("/{resource}")))
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect::<Vec<_>>()
    };
    let pvc_reads = reads("persistentvolumeclaims");
    assert!(pvc_reads.len() <= 2, "one PVC listing: {pvc_reads:#?}");
    let lease_reads = reads("leases");
    assert!(
        lease_reads.len() <= 2,
        "one Lease listing: {lease_reads:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("/leases")),
        "sessions holding claims claim nothing more"
    );
}

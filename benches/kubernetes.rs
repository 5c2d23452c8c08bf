//! kubernetes backend figures (see the README): against the fake API server of the tests with
//! 1,000 session Pods, the API requests the spawner sends at boot, per create and per sweep, and
//! how long it takes from start to listening and to having adopted every session.
//!
//! Run: `scripts/bench.sh kubernetes` (no Docker needed). `TALE_BIN=<path>` measures another
//! spawner binary (e.g. an older release) against the same fake; the Pods' runnerd is always this
//! build's.
#[path = "../tests/support/fake_kube/mod.rs"]
mod fake_kube;

use fake_kube::FakeKube;
use hyper::Method;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tale::modes::spawner::backend::kubernetes::claims::{global_slot, org_slot};
use tale::modes::spawner::backend::kubernetes::manifests::{org_hash, pod_name};
use tale::shared::spawner_client::SpawnerClient;

const TOKEN: &str = "bench-token";
/// Session Pods the fake holds before the spawner starts.
const SESSIONS: usize = 1000;
const CREATES: usize = 5;
const SWEEP_INTERVAL_MS: u64 = 2000;
/// Sweeps the per-sweep figure averages over.
const SWEEPS: u64 = 3;
const NAMESPACE: &str = "tale-sandbox";

fn binary() -> String {
    std::env::var("TALE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tale").into())
}

/// Requests counted by method and resource, most first (`GET persistentvolumeclaims × 1000, …`).
fn kinds(requests: &[fake_kube::Recorded]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in requests {
        let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        let resource = segments
            .iter()
            .position(|s| *s == "namespaces")
            .and_then(|i| segments.get(i + 2))
            .or(segments.last())
            .copied()
            .unwrap_or("");
        let watch = if r.query.contains("watch=true") {
            " (watch)"
        } else {
            ""
        };
        *counts
            .entry(format!("{} {resource}{watch}", r.method))
            .or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
        .iter()
        .map(|(kind, n)| format!("{kind} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running session Pod of a peer whose runnerd is not reachable (its probes fail at once).
fn session_pod(i: usize) -> serde_json::Value {
    let id = format!("bench-{i:04}");
    let org = format!("org-{}", i % 10);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(&id), "uid": format!("bench-{i}"),
            "labels": {"tale.sandbox-session": "1", "tale.sandbox/role": "session",
                       "tale.dev/org-hash": org_hash(&org)},
            "annotations": {"tale.dev/session-id": id, "tale.dev/organization-id": org,
                            "tale.dev/profile": "default",
                            "tale.dev/created-at": tale::shared::clock::now_ms().to_string()},
        },
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    })
}

/// The two claim Leases a session of this release holds (one global slot, one of its org's).
fn session_claims(i: usize) -> [serde_json::Value; 2] {
    let id = format!("bench-{i:04}");
    let org = format!("org-{}", i % 10);
    let lease = |name: String| {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {
                "name": name, "uid": format!("{name}-uid"),
                "creationTimestamp": "2026-12-01T00:00:00Z",
                "labels": {"tale.dev/claim": "1"},
                "annotations": {"tale.dev/session-id": id},
            },
            "spec": {"holderIdentity": id},
        })
    };
    [
        lease(global_slot(i as u64)),
        lease(org_slot(&org, (i / 10) as u64)),
    ]
}

struct Spawner {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls `check` every 5 ms up to `limit`.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("kubernetes bench: run with `scripts/bench.sh kubernetes`");
        return;
    }
    let fake = FakeKube::start().await;
    for i in 0..SESSIONS {
        fake.insert("pods", NAMESPACE, session_pod(i));
        // Made by this release: each session holds its org and global claim.
        for lease in session_claims(i) {
            fake.insert("leases", NAMESPACE, lease);
        }
    }
    let (port, runnerd_port) = (free_port(), free_port());
    let log = fake.root.join("spawner.log");
    let started = Instant::now();
    let child = Command::new(binary())
        .args(["spawner", "--listen", &format!("127.0.0.1:{port}")])
        .env("SANDBOX_TOKEN", TOKEN)
        .env("SANDBOX_BACKEND", "kubernetes")
        .env("KUBECONFIG", fake.write_kubeconfig())
        .env("SANDBOX_RUNTIME_IMAGE", "tale-sandbox-runtime:bench")
        .env("SANDBOX_K8S_RUNNERD_PORT", runnerd_port.to_string())
        .env("SANDBOX_MAX_SESSIONS", "5000")
        .env("SANDBOX_MAX_SESSIONS_PER_ORG", "5000")
        .env("SANDBOX_SWEEP_INTERVAL_MS", SWEEP_INTERVAL_MS.to_string())
        .env("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "30000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let spawner = Spawner { child, log };
    until("the listener", Duration::from_secs(120), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let listening = started.elapsed();
    let requests_listening = fake.requests().len();
    until("adoption", Duration::from_secs(300), || {
        std::fs::read_to_string(&spawner.log).is_ok_and(|l| l.contains("spawner ready"))
    })
    .await;
    let adopted = started.elapsed();
    let requests_boot = fake.requests().len();
    let boot_kinds = kinds(&fake.requests()[..requests_boot]);

    let client = SpawnerClient::new(format!("http://127.0.0.1:{port}"), Some(TOKEN.as_bytes()));
    let mut per_create = Vec::new();
    let mut create_times = Vec::new();
    let mut create_kinds = String::new();
    for i in 0..CREATES {
        let before = fake.requests().len();
        let start = Instant::now();
        let reply = client
            .call(
                Method::POST,
                "/v1/sessions",
                Some(&json!({"sessionId": format!("bench-new-{i}"), "organizationId": "bench"})),
            )
            .await
            .unwrap();
        assert_eq!(reply.status.as_u16(), 201, "{:?}", reply.body);
        create_times.push(start.elapsed());
        per_create.push(fake.requests().len() - before);
        if i + 1 == CREATES {
            create_kinds = kinds(&fake.requests()[before..]);
        }
    }
    // Sweeps: every interval, each of the 1,000 sessions is probed (refused) and checked.
    let before = fake.requests().len();
    tokio::time::sleep(Duration::from_millis(SWEEP_INTERVAL_MS * SWEEPS)).await;
    let per_sweep = (fake.requests().len() - before) as f64 / SWEEPS as f64;
    for i in 0..CREATES {
        let _ = client
            .call(Method::DELETE, &format!("/v1/sessions/bench-new-{i}"), None)
            .await;
    }

    let report = [
        format!("| kubernetes, {SESSIONS} sessions | value |"),
        "|---|---|".into(),
        format!("| start → listening | {:.0} ms |", ms(listening)),
        format!("| start → every session adopted | {:.0} ms |", ms(adopted)),
        format!("| API requests before listening | {requests_listening} |"),
        format!("| API requests at boot (to adopted) | {requests_boot}: {boot_kinds} |"),
        format!("| API requests of the last create | {create_kinds} |"),
        format!(
            "| API requests per create (mean of {CREATES}) | {:.1} |",
            per_create.iter().sum::<usize>() as f64 / CREATES as f64
        ),
        format!(
            "| create → ready (mean of {CREATES}) | {:.0} ms |",
            create_times.iter().map(|d| ms(*d)).sum::<f64>() / CREATES as f64
        ),
        format!("| API requests per sweep (mean of {SWEEPS}) | {per_sweep:.1} |"),
    ];
    let text = report.join("\n");
    println!("{text}");
    let _ = std::fs::create_dir_all("bench-out");
    let _ = std::fs::write("bench-out/kubernetes.md", text + "\n");
}

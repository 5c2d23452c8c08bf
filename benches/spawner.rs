//! spawner figures (see the README): Docker session create-to-ready vs a bare `docker run --rm` of
//! the same image, exec round trip through the spawner vs direct to runnerd, and 50 concurrent
//! sessions each streaming an exec.
//!
//! Run: `scripts/bench.sh spawner` (needs Docker and the test image: `scripts/build-test-image.sh`).
use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tale::shared::hmac::derive_runnerd_token;
use tale::shared::protocol::runnerd::ExecRequest;
use tale::shared::spawner_client::SpawnerClient;

const TOKEN: &str = "bench-token";
const CREATE_RUNS: usize = 20;
const ROUND_TRIPS: usize = 300;
const CONCURRENT_SESSIONS: usize = 50;
const IMAGE: &str = "tale-test-runtime:latest";

fn binary() -> String {
    std::env::var("TALE_BIN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/x86_64-unknown-linux-musl/release/tale"
        )
        .into()
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Spawner {
    child: Child,
    client: SpawnerClient,
    root: std::path::PathBuf,
}

impl Spawner {
    fn start(env: &[(&str, &str)]) -> Spawner {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = std::env::temp_dir().join(format!("tale-bench-spawner-{port}"));
        let child = Command::new(binary())
            .args(["spawner", "--listen", &format!("127.0.0.1:{port}")])
            .env("SANDBOX_TOKEN", TOKEN)
            .env("SANDBOX_HOST_SESSION_ROOT", &root)
            .env("SANDBOX_MAX_SESSIONS", "100")
            .env("SANDBOX_MAX_SESSIONS_PER_ORG", "100")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "spawner did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Spawner {
            child,
            client: SpawnerClient::new(format!("http://127.0.0.1:{port}"), Some(TOKEN.as_bytes())),
            root,
        }
    }

    async fn call(&self, method: Method, path: &str, body: serde_json::Value) -> (u16, Bytes) {
        let body = (!body.is_null()).then_some(&body);
        let reply = self.client.call(method, path, body).await.unwrap();
        (reply.status.as_u16(), reply.body)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("spawner bench: run with `scripts/bench.sh spawner`");
        return;
    }
    let mut report = Vec::new();

    // 1. Docker: create-to-ready vs bare docker run --rm of the same image.
    let mut bare = Vec::new();
    for _ in 0..CREATE_RUNS {
        let start = Instant::now();
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "/bin/true",
                IMAGE,
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "docker run failed (build the image with scripts/build-test-image.sh)"
        );
        bare.push(start.elapsed());
    }
    let docker = Spawner::start(&[
        ("SANDBOX_BACKEND", "docker"),
        ("SANDBOX_RUNTIME_IMAGE", IMAGE),
        ("SANDBOX_EGRESS_NETWORK", "tale-bench-net"),
        ("SANDBOX_EGRESS_PROXY", "none"),
        ("SANDBOX_CACHE_VOLUMES", "0"),
    ]);
    let mut creates = Vec::new();
    for i in 0..CREATE_RUNS {
        let start = Instant::now();
        let (status, body) = docker
            .call(
                Method::POST,
                "/v1/sessions",
                json!({"sessionId": format!("bench{i}"), "organizationId": "bench"}),
            )
            .await;
        creates.push(start.elapsed());
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        docker
            .call(
                Method::DELETE,
                &format!("/v1/sessions/bench{i}"),
                serde_json::Value::Null,
            )
            .await;
    }
    let (bare_median, create_median) = (median(bare), median(creates));
    report.push(format!(
        "| Docker session create → runnerd ready (median of {CREATE_RUNS}) | {:.0} ms vs bare `docker run --rm` {:.0} ms = {:.2}× | ≤ 1.2× |",
        ms(create_median),
        ms(bare_median),
        create_median.as_secs_f64() / bare_median.as_secs_f64()
    ));

    // 2. Exec round trip through the spawner vs direct to runnerd (same Docker session).
    docker
        .call(
            Method::POST,
            "/v1/sessions",
            json!({"sessionId": "rt", "organizationId": "bench"}),
        )
        .await;
    let endpoint = String::from_utf8(
        Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "tale-sbx-ses-rt",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let runnerd = tale::modes::spawner::runnerd_client::RunnerdClient::new(
        &format!("http://{}:8200", endpoint.trim()),
        &derive_runnerd_token(TOKEN.as_bytes(), "rt"),
    );
    let mut direct = Vec::new();
    let mut via = Vec::new();
    for i in 0..ROUND_TRIPS + 20 {
        let start = Instant::now();
        let mut stream = runnerd
            .exec(&ExecRequest {
                exec_id: format!("d{i}"),
                command: Some(vec!["true".into()]),
                timeout_ms: 10_000,
                ..ExecRequest::default()
            })
            .await
            .unwrap();
        while stream.next().await.unwrap().is_some() {}
        if i >= 20 {
            direct.push(start.elapsed());
        }
        let start = Instant::now();
        let (status, body) = docker
            .call(
                Method::POST,
                "/v1/sessions/rt/exec",
                json!({"execId": format!("s{i}"), "command": ["true"]}),
            )
            .await;
        assert!(status == 200 && String::from_utf8_lossy(&body).contains("event: result"));
        if i >= 20 {
            via.push(start.elapsed());
        }
    }
    let (direct_p50, via_p50) = (median(direct), median(via));
    report.push(format!(
        "| exec round trip of `true`, p50 of {ROUND_TRIPS} | spawner {:.2} ms vs direct runnerd {:.2} ms = +{:.2} ms | ≤ +1 ms |",
        ms(via_p50),
        ms(direct_p50),
        ms(via_p50.saturating_sub(direct_p50))
    ));
    docker
        .call(Method::DELETE, "/v1/sessions/rt", serde_json::Value::Null)
        .await;

    // 3. 50 concurrent sessions, each streaming an exec.
    let spawner_pid = docker.child.id();
    let docker = std::sync::Arc::new(docker);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..CONCURRENT_SESSIONS {
        let docker = docker.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("conc{i}");
            let (status, _) = docker.call(Method::POST, "/v1/sessions", json!({"sessionId": id, "organizationId": "bench"})).await;
            if status != 201 {
                return false;
            }
            let (status, body) = docker
                .call(Method::POST, &format!("/v1/sessions/{id}/exec"), json!({"execId": "s", "shell": "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done", "collectOutput": false}))
                .await;
            let text = String::from_utf8_lossy(&body).to_string();
            status == 200 && text.contains("\"exitCode\":0") && text.contains("line 199")
        }));
    }
    let mut peak = 0;
    let mut ok = 0;
    for task in tasks {
        peak = peak.max(rss_kib(spawner_pid));
        if task.await.unwrap() {
            ok += 1;
        }
    }
    let elapsed = started.elapsed();
    for i in 0..CONCURRENT_SESSIONS {
        docker
            .call(
                Method::DELETE,
                &format!("/v1/sessions/conc{i}"),
                serde_json::Value::Null,
            )
            .await;
    }
    report.push(format!(
        "| {CONCURRENT_SESSIONS} concurrent Docker sessions, each streaming an exec | {} errors, {:.1} s in all, spawner RSS peak {} KiB | 0 errors |",
        CONCURRENT_SESSIONS - ok,
        elapsed.as_secs_f64(),
        peak
    ));
    let _ = Command::new("docker")
        .args(["network", "rm", "tale-bench-net"])
        .output();

    let table = format!(
        "| measure | result | target |\n|---|---|---|\n{}\n",
        report.join("\n")
    );
    println!("{table}");
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-out");
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(format!("{out}/spawner.md"), table).unwrap();
}

//! Helpers of the agent end-to-end tests: running an agent to the end of its stream, reading its
//! normalized events, and a loopback trap that proves a CLI contacted nothing but the gateway.
#![allow(dead_code)]

use super::spawner::{SpawnerClient, SseStream};
use hyper::{Method, StatusCode};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tale::shared::sse::SseEvent;

/// Upper bound for one whole scripted run (each answers within seconds here).
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The version a Dockerfile `ARG <name>=<version>` line pins.
pub fn pinned(dockerfile: &str, name: &str) -> String {
    dockerfile
        .lines()
        .find_map(|line| line.strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("the Dockerfile pins {name}"))
        .trim()
        .to_owned()
}

/// `<cli> --version`, failing (never skipping) with how to install it when the CLI is missing.
pub fn cli_version(cli: &str, install: &str) -> String {
    let output = std::process::Command::new(cli)
        .arg("--version")
        .output()
        .unwrap_or_else(|err| {
            panic!("the `{cli}` CLI is required ({err}); install it with `{install}` (scripts/setup.sh does)")
        });
    assert!(output.status.success(), "{cli} --version: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Reads the stream to its end, within the deadline.
pub async fn drain(mut stream: SseStream, context: &dyn Fn() -> String) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(RUN_DEADLINE, async {
        while let Some(event) = stream.next().await {
            seen.push(event);
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the run did not end: {seen:#?}\n{}",
        context()
    );
    seen
}

/// Reads until `stop` holds (inclusive), within the deadline.
pub async fn read_until(
    stream: &mut SseStream,
    seen: &mut Vec<SseEvent>,
    stop: impl Fn(&SseEvent) -> bool,
    context: &dyn Fn() -> String,
) {
    let found = tokio::time::timeout(RUN_DEADLINE, async {
        while let Some(event) = stream.next().await {
            seen.push(event.clone());
            if stop(&event) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen:#?}\n{}", context());
}

/// Starts an agent run and drains it.
pub async fn run(
    client: &SpawnerClient,
    session: &str,
    body: Value,
    context: &dyn Fn() -> String,
) -> Vec<SseEvent> {
    let (status, stream) = client
        .sse(
            Method::POST,
            &format!("/v1/sessions/{session}/agent-runs"),
            Some(body),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    drain(stream, context).await
}

/// The data of the `agent` events.
pub fn agent_events(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event == "agent")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect()
}

pub fn is_agent(event: &SseEvent, kind: &str) -> bool {
    event.event == "agent" && serde_json::from_str::<Value>(&event.data).unwrap()["type"] == kind
}

/// The one `agent` event of `kind`.
pub fn only<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["type"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}: {events:#?}");
    found[0]
}

/// The last `agent` event must be the one `result`, right before the exec's `result`.
pub fn assert_ends_with_one_result(events: &[SseEvent]) -> Value {
    let n = events.len();
    assert!(n >= 2, "{events:#?}");
    assert_eq!(events[n - 1].event, "result", "{events:#?}");
    assert!(is_agent(&events[n - 2], "result"), "{events:#?}");
    serde_json::from_str(&events[n - 2].data).unwrap()
}

/// A loopback listener handed to the session as its HTTP(S) proxy (with loopback exempt): a CLI
/// that tries to reach anything but the gateway on loopback connects here, and is counted.
pub struct ProxyTrap {
    /// The address it listens on, which is also the one address exempt from it.
    pub host: std::net::IpAddr,
    pub port: u16,
    hits: Arc<AtomicUsize>,
}

impl ProxyTrap {
    pub async fn start() -> ProxyTrap {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// A trap on `host`, where the session reaches the test's servers (see `agent_stack`).
    pub async fn start_on(host: std::net::IpAddr) -> ProxyTrap {
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        ProxyTrap { host, port, hits }
    }

    /// The session env that routes every request to the trap, but those to loopback and to the
    /// trap's own host (where the gateway listens).
    pub fn env(&self) -> Value {
        let url = format!("http://{}:{}", self.host, self.port);
        let exempt = format!("127.0.0.1,localhost,{}", self.host);
        serde_json::json!({"HTTP_PROXY": url, "HTTPS_PROXY": url, "ALL_PROXY": url,
            "http_proxy": url, "https_proxy": url, "all_proxy": url,
            "NO_PROXY": exempt, "no_proxy": exempt})
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

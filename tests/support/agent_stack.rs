//! Where the agent end-to-end tests run their sessions: the spawner's local backend, or its Docker
//! backend with the agent session image (`scripts/build-agent-image.sh`: the real CLIs, bash, git).
//! The same test body runs on both; this module hides what differs — the address a session reaches
//! the test's fake model at, reading the workspace, the session's log, stopping a session through
//! the spawner's idle sweep and resuming it, and cleaning up what Docker holds.
//!
//! On Docker each stack gets its own internal network (created here, found by the spawner): the
//! fake model listens on that network's gateway address, the only host address a session reaches.
#![allow(dead_code)]

use super::netns_capture::{violations, Allowed, NetnsCapture};
use super::spawner::{stdout_text, SpawnerProcess};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The spawner backend a test's sessions run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    Docker,
}

/// How often the stack's spawner sweeps (short: [`AgentStack::stop_and_resume`] waits for it).
const SWEEP_INTERVAL_MS: &str = "200";
/// Idle timeout of the stack's sessions. They stay pinned (the sweep skips them) until a test
/// stops one, so this only bounds how long a stop waits.
const SESSION_IDLE_MS: u64 = 1000;
/// Upper bound for a sweep stop, a resume, or an engine call.
const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(60);

/// A spawner on one backend and the sessions a test made on it.
pub struct AgentStack {
    pub backend: Backend,
    pub spawner: SpawnerProcess,
    /// Where a session reaches the test's servers.
    pub host: IpAddr,
    /// The Docker test network (Docker only).
    network: Option<String>,
    sessions: Mutex<Vec<String>>,
}

/// The agent session image: `TALE_AGENT_IMAGE` (scripts/test.sh builds it first), else built
/// once per test binary with scripts/build-agent-image.sh.
pub fn agent_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        super::docker::local_image(
            "TALE_AGENT_IMAGE",
            "tale-agent-runtime:latest",
            "build-agent-image.sh",
            "agent",
        )
    })
}

/// Runs `docker ARGS`: whether it succeeded, and its trimmed stdout (or stderr when it failed).
pub fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("docker").args(args).output() {
        Ok(out) if out.status.success() => {
            (true, String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => (
            false,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ),
        Err(err) => (false, err.to_string()),
    }
}

impl AgentStack {
    /// A spawner on `backend`; on Docker with a fresh internal network and the agent image.
    pub async fn start(backend: Backend) -> AgentStack {
        let sweep = [("SANDBOX_SWEEP_INTERVAL_MS", SWEEP_INTERVAL_MS)];
        match backend {
            Backend::Local => AgentStack {
                backend,
                spawner: SpawnerProcess::local(&sweep).await,
                host: Ipv4Addr::LOCALHOST.into(),
                network: None,
                sessions: Mutex::new(Vec::new()),
            },
            Backend::Docker => {
                let image = agent_image();
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let network = format!(
                    "tale-agent-net-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let (created, out) = docker(&[
                    "network",
                    "create",
                    "--internal",
                    "--label",
                    "tale.sandbox-network=1",
                    &network,
                ]);
                assert!(created, "docker network create {network}: {out}");
                let (_, gateway) = docker(&[
                    "network",
                    "inspect",
                    "-f",
                    "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                    &network,
                ]);
                let host: IpAddr = gateway
                    .parse()
                    .unwrap_or_else(|_| panic!("{network} has no gateway address: {gateway:?}"));
                let root = std::env::temp_dir().join(format!(
                    "tale-agent-docker-{}-{}",
                    std::process::id(),
                    super::runnerd::free_port()
                ));
                let env = [
                    ("SANDBOX_BACKEND", "docker"),
                    ("SANDBOX_RUNTIME_IMAGE", image),
                    ("SANDBOX_EGRESS_NETWORK", network.as_str()),
                    ("SANDBOX_EGRESS_PROXY", "none"),
                    ("SANDBOX_CACHE_VOLUMES", "0"),
                    sweep[0],
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .to_vec();
                AgentStack {
                    backend,
                    spawner: SpawnerProcess::start(root, env).await,
                    host,
                    network: Some(network),
                    sessions: Mutex::new(Vec::new()),
                }
            }
        }
    }

    /// A session id for `name`, unique on the Docker engine (other test runs share it).
    pub fn session_id(&self, name: &str) -> String {
        let backend = match self.backend {
            Backend::Local => "l",
            Backend::Docker => "d",
        };
        format!("{name}-{backend}{}", std::process::id())
    }

    /// Creates an `agent`-profile session with `env`, pinned so the sweep leaves it alone until
    /// [`AgentStack::stop_and_resume`].
    pub async fn create_session(&self, id: &str, env: &Value) {
        self.sessions.lock().unwrap().push(id.to_owned());
        self.forget_leftovers(id);
        self.create_or_resume(id, env).await;
    }

    async fn create_or_resume(&self, id: &str, env: &Value) {
        let c = &self.spawner.client;
        let (status, created) = c
            .json(
                Method::POST,
                "/v1/sessions",
                Some(
                    json!({"sessionId": id, "organizationId": "org", "profile": "agent",
                    "idleTimeoutMs": SESSION_IDLE_MS, "env": env}),
                ),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{created}\n{}",
            self.spawner.log()
        );
        self.pin(id, true).await;
    }

    async fn pin(&self, id: &str, pinned: bool) {
        let (status, body) = self
            .spawner
            .client
            .json(
                Method::PATCH,
                &format!("/v1/sessions/{id}/pin"),
                Some(json!({ "pinned": pinned })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "pin {id}: {body}");
    }

    /// Unpins the session, waits until the spawner's idle sweep has stopped it (its compute gone:
    /// the runnerd process, or the container; the workspace kept), then resumes it with `env`.
    pub async fn stop_and_resume(&self, id: &str, env: &Value) {
        self.pin(id, false).await;
        let c = &self.spawner.client;
        // The sweep logs the stop once the backend is done with it (a GET in between may already
        // answer 404: the half-stopped runnerd does not answer).
        let swept = format!("session_id={id} cause=Idle");
        let stopped = super::runnerd::poll(LIFECYCLE_DEADLINE, async || {
            if !self
                .spawner
                .log()
                .lines()
                .any(|line| line.contains("sweep stopped session") && line.contains(&swept))
            {
                return None;
            }
            let (status, _) = c
                .json(Method::GET, &format!("/v1/sessions/{id}"), None)
                .await;
            (status == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
        assert!(
            stopped.is_some(),
            "the sweep did not stop {id}:\n{}",
            self.spawner.log()
        );
        if self.backend == Backend::Docker {
            assert!(
                !docker(&["inspect", &container(id)]).0,
                "the container of {id} is gone"
            );
            assert!(
                docker(&["volume", "inspect", &format!("{}-ws", container(id))]).0,
                "the workspace volume of {id} is kept"
            );
        }
        self.create_or_resume(id, env).await;
    }

    /// Runs `shell` in the session and returns its stdout.
    pub async fn shell(&self, id: &str, exec_id: &str, shell: &str) -> String {
        let (status, stream) = self
            .spawner
            .client
            .sse(
                Method::POST,
                &format!("/v1/sessions/{id}/exec"),
                Some(json!({"execId": exec_id, "shell": shell})),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        stdout_text(&stream.collect_all().await)
    }

    /// The session's runnerd log (local: its log file; Docker: the container's log).
    pub fn session_log(&self, id: &str) -> String {
        match self.backend {
            Backend::Local => {
                std::fs::read_to_string(self.spawner.root.join(format!("sessions/.state/{id}.log")))
                    .unwrap_or_default()
            }
            Backend::Docker => {
                let out = Command::new("docker")
                    .args(["logs", "--tail", "40", &container(id)])
                    .output();
                out.map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_default()
            }
        }
    }

    /// Docker: starts a complete packet record of session `id`'s network namespace (the
    /// container's, so a stop and resume needs a new one). Local: `None` (the session shares the
    /// host's network).
    pub async fn capture(&self, id: &str) -> Option<NetnsCapture> {
        let network = self.network.as_deref()?;
        Some(NetnsCapture::start(&container(id), network).await)
    }

    /// Stops `capture` and asserts the session's netns exchanged packets with nothing but the
    /// model at the gateway address and `model_port`, and the spawner's connections to runnerd:
    /// no DNS query, no other destination (see `netns_capture`).
    pub async fn assert_only_gateway(
        &self,
        capture: Option<NetnsCapture>,
        model_port: u16,
        context: &dyn Fn() -> String,
    ) {
        let Some(capture) = capture else { return };
        let IpAddr::V4(gateway) = self.host else {
            panic!("the Docker test network has an IPv4 gateway")
        };
        let allowed = Allowed {
            session: capture.session,
            gateway,
            model_port,
            runnerd_port: tale::shared::protocol::runnerd::DEFAULT_PORT,
        };
        let packets = capture.stop(gateway).await;
        let model = format!("{gateway}.{model_port}");
        assert!(
            packets.iter().any(|p| p.contains(&format!("> {model}:"))),
            "the record holds the session's requests to the model ({allowed:?}):\n{}",
            packets.join("\n")
        );
        let bad = violations(&packets, &allowed);
        assert!(
            bad.is_empty(),
            "the session sent or received packets other than the gateway's ({allowed:?}):\n{}\n\n{}",
            bad.join("\n"),
            context()
        );
    }

    /// Removes a container and workspace volume an earlier, failed run left under this id.
    fn forget_leftovers(&self, id: &str) {
        if self.backend == Backend::Docker {
            docker(&["rm", "-f", &container(id)]);
            super::docker::remove_volumes(&[format!("{}-ws", container(id))]);
        }
    }
}

/// The Docker backend's container name for a session id (short ids only).
fn container(id: &str) -> String {
    format!("tale-sbx-ses-{id}")
}

impl Drop for AgentStack {
    fn drop(&mut self) {
        self.spawner.kill9();
        for id in self.sessions.lock().unwrap().iter() {
            self.forget_leftovers(id);
        }
        if let Some(network) = &self.network {
            super::docker::remove_network(network);
        }
    }
}

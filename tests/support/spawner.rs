//! Starts the real `tale spawner` (local or docker backend) for end-to-end tests, with a signing client.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tale::shared::spawner_client::{read_reply, SpawnerClientError};
use tale::shared::sse::{SseEvent, SseParser};

pub const SANDBOX_TOKEN: &str = "spawner-test-token";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A running spawner; killed on drop (its sessions are destroyed by the test or by `cleanup`).
pub struct SpawnerProcess {
    child: Option<Child>,
    /// The `tale` binary run: this build's, unless a test runs another release's.
    program: PathBuf,
    pub port: u16,
    pub root: PathBuf,
    pub env: Vec<(String, String)>,
    pub client: SpawnerClient,
    log: PathBuf,
    /// Address the spawner listens on (its port is `port`); the client always uses loopback.
    pub listen_host: &'static str,
}

impl SpawnerProcess {
    /// Starts a spawner with the local backend under a fresh root.
    pub async fn local(extra_env: &[(&str, &str)]) -> SpawnerProcess {
        let root = std::env::temp_dir().join(format!(
            "tale-spawner-{}-{}",
            std::process::id(),
            super::runnerd::free_port()
        ));
        let mut env = vec![
            ("SANDBOX_BACKEND".to_string(), "local".to_string()),
            (
                "SANDBOX_HOST_SESSION_ROOT".to_string(),
                root.join("sessions").display().to_string(),
            ),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Self::start(root, env).await
    }

    /// Starts a spawner with the kubernetes backend against the API server `kubeconfig` names
    /// (the tests' fake), sessions from `image`, runnerd reached on `runnerd_port`; `extra_env`
    /// goes on top (a later value of a name wins).
    pub async fn kubernetes(
        kubeconfig: PathBuf,
        image: &str,
        runnerd_port: u16,
        extra_env: &[(&str, &str)],
    ) -> SpawnerProcess {
        let root = std::env::temp_dir().join(format!(
            "tale-k8s-{}-{}",
            std::process::id(),
            super::runnerd::free_port()
        ));
        let mut env = vec![
            ("SANDBOX_BACKEND".to_string(), "kubernetes".to_string()),
            ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
            ("SANDBOX_RUNTIME_IMAGE".to_string(), image.to_string()),
            (
                "SANDBOX_K8S_RUNNERD_PORT".to_string(),
                runnerd_port.to_string(),
            ),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Self::start(root, env).await
    }

    pub async fn start(root: PathBuf, env: Vec<(String, String)>) -> SpawnerProcess {
        Self::start_on("127.0.0.1", root, env).await
    }

    /// Like [`start`](Self::start), running `program` (e.g. a previous release's `tale`).
    pub async fn start_program(
        program: PathBuf,
        root: PathBuf,
        env: Vec<(String, String)>,
    ) -> SpawnerProcess {
        Self::launch_new(program, "127.0.0.1", root, env).await
    }

    /// Like [`start`](Self::start), listening on `listen_host` (e.g. `0.0.0.0`).
    pub async fn start_on(
        listen_host: &'static str,
        root: PathBuf,
        env: Vec<(String, String)>,
    ) -> SpawnerProcess {
        Self::launch_new(env!("CARGO_BIN_EXE_tale").into(), listen_host, root, env).await
    }

    async fn launch_new(
        program: PathBuf,
        listen_host: &'static str,
        root: PathBuf,
        env: Vec<(String, String)>,
    ) -> SpawnerProcess {
        std::fs::create_dir_all(&root).unwrap();
        let port = super::runnerd::free_port();
        let log = root.join(format!("spawner-{port}.log"));
        let mut process = SpawnerProcess {
            child: None,
            program,
            port,
            client: SpawnerClient::new(port),
            root,
            env,
            log,
            listen_host,
        };
        process.launch().await;
        process
    }

    async fn launch(&mut self) {
        let mut command = Command::new(&self.program);
        command
            .arg("spawner")
            .arg("--listen")
            .arg(format!("{}:{}", self.listen_host, self.port))
            .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            );
        self.child = Some(command.spawn().expect("start tale spawner"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.client.raw(Method::GET, "/health", None, false).await {
                if response.0 != StatusCode::NOT_FOUND {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("spawner exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "spawner did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The spawner's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (polling, up to `limit`) for the process to exit; its status.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` for the spawner's log to say the test hook paused it at `point`
    /// (`TALE_TEST_CREATE_PAUSE_AT`); whether it did.
    pub async fn paused_at(&self, point: &str, within: Duration) -> bool {
        super::runnerd::poll(within, async || {
            self.log()
                .lines()
                .any(|l| l.contains("test hook: create paused") && l.contains(point))
                .then_some(())
        })
        .await
        .is_some()
    }

    /// `kill -9` the spawner (its sessions keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port and root.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }
}

impl Drop for SpawnerProcess {
    fn drop(&mut self) {
        self.kill9();
        // Local sessions are runnerd processes: stop any left behind by a failed test.
        let sessions = self.root.join("sessions").join(".state");
        if let Ok(entries) = std::fs::read_dir(&sessions) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    if let Some(pid) = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["pid"].as_i64())
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The crate's signed spawner client bound to a test spawner (key [`SANDBOX_TOKEN`]), with the
/// shapes the tests use.
#[derive(Clone)]
pub struct SpawnerClient {
    pub port: u16,
    signed: tale::shared::spawner_client::SpawnerClient,
}

impl SpawnerClient {
    pub fn new(port: u16) -> SpawnerClient {
        SpawnerClient {
            port,
            signed: tale::shared::spawner_client::SpawnerClient::new(
                format!("http://127.0.0.1:{port}"),
                Some(SANDBOX_TOKEN.as_bytes()),
            ),
        }
    }

    /// Builds a signed request; `sign` false sends it unsigned. Always JSON-typed, body or not.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        sign: bool,
    ) -> Request<Full<Bytes>> {
        let client = if sign {
            self.signed.clone()
        } else {
            self.signed.unsigned()
        };
        client.request(method, path, Some(body)).unwrap()
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        self.signed.send(request).await.unwrap()
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        sign: bool,
    ) -> Result<(StatusCode, Value), String> {
        let request = self.request(method, path, body.unwrap_or_default(), sign);
        let response = self.signed.send(request).await.map_err(error_chain)?;
        let reply = read_reply(response).await.map_err(error_chain)?;
        Ok((reply.status, reply.json()))
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(method, path, body.map(|b| Bytes::from(b.to_string())), true)
            .await
            .unwrap()
    }

    /// Opens an SSE stream (signed POST or GET).
    pub async fn sse(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, SseStream) {
        let mut request = self.request(
            method,
            path,
            body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
            true,
        );
        for (name, value) in headers {
            request.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let response = self.send(request).await;
        (
            response.status(),
            SseStream {
                body: response.into_body(),
                parser: SseParser::default(),
                pending: Vec::new(),
            },
        )
    }

    /// `POST /v1/sessions` with `body`: the status and the reply's `error` code ("" for none).
    pub async fn create_with(&self, body: &Value) -> (StatusCode, String) {
        let (status, reply) = self
            .json(Method::POST, "/v1/sessions", Some(body.clone()))
            .await;
        let code = reply["error"].as_str().unwrap_or_default().to_owned();
        (status, code)
    }

    /// Runs `shell` as exec `exec_id` in session `id`; its stdout.
    pub async fn exec_stdout(&self, id: &str, exec_id: &str, shell: &str) -> String {
        let (status, stream) = self
            .sse(
                Method::POST,
                &format!("/v1/sessions/{id}/exec"),
                Some(serde_json::json!({"execId": exec_id, "shell": shell})),
                &[],
            )
            .await;
        if status != StatusCode::OK {
            panic!(
                "exec {exec_id} in session {id}: {status} {}",
                stream.into_text().await
            );
        }
        stdout_text(&stream.collect_all().await)
    }

    /// `DELETE /v1/sessions/:id`: the status and `destroyed`.
    pub async fn destroy(&self, id: &str) -> (StatusCode, bool) {
        let (status, reply) = self
            .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await;
        (status, reply["destroyed"] == true)
    }

    pub async fn create(&self, id: &str, org: &str) -> Value {
        let (status, body) = self
            .json(
                Method::POST,
                "/v1/sessions",
                Some(serde_json::json!({"sessionId": id, "organizationId": org})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

/// The error and its causes on one line.
fn error_chain(error: SpawnerClientError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Parsed SSE events of a response.
pub struct SseStream {
    body: Incoming,
    parser: SseParser,
    pending: Vec<SseEvent>,
}

impl SseStream {
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if !self.pending.is_empty() {
                return Some(self.pending.remove(0));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = self.parser.feed(&data);
                    }
                }
                _ => return None,
            }
        }
    }

    /// The body as text (an error reply instead of a stream).
    pub async fn into_text(self) -> String {
        match self.body.collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(err) => format!("(body unreadable: {err})"),
        }
    }

    pub async fn collect_all(mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }
}

/// Concatenated `text` of `stdout` events.
pub fn stdout_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "stdout")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The `result` event's data.
pub fn result(events: &[SseEvent]) -> Value {
    let results: Vec<&SseEvent> = events.iter().filter(|e| e.event == "result").collect();
    assert_eq!(results.len(), 1, "exactly one result: {events:?}");
    serde_json::from_str(&results[0].data).unwrap()
}

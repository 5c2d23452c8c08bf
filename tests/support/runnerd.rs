//! Starts the real `tale runnerd` binary for end-to-end tests and talks to it over HTTP.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789";

/// How to run the daemon.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Run as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`).
    pub pid1: bool,
    /// Extra flags.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Pass the token as a file (`TALE_RUNNERD_TOKEN_FILE`) rather than an env var.
    pub token_file: bool,
    /// Run the daemon as this uid (and gid), not root (`setpriv`), owning its workspace.
    pub run_as: Option<u32>,
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) and its workspace removed on drop.
pub struct Runnerd {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
    base: PathBuf,
    pub client: Client,
}

fn unique_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tale-e2e-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Raises this test process's descriptor limit to its hard limit (it holds thousands of sockets);
/// returns the hard limit.
pub fn raise_own_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse().ok())
        .unwrap_or(1024);
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    hard
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory for a TLS suite under the temp dir, created: `tale-tls-<tag>-<pid>-<n>` (a free port keeps
/// parallel tests of one binary apart).
pub fn tls_scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tale-tls-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Runnerd {
    pub async fn start(options: Options) -> Runnerd {
        let base = unique_dir("runnerd");
        let root = base.join("ws");
        std::fs::create_dir_all(&root).unwrap();
        // The exec user must be able to reach the workspace.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let bin = env!("CARGO_BIN_EXE_tale");
        let mut command = if options.pid1 {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", bin]);
            c
        } else if let Some(id) = options.run_as {
            std::os::unix::fs::chown(&root, Some(id), Some(id)).unwrap();
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={id}"))
                .arg(format!("--regid={id}"))
                .args(["--clear-groups", bin]);
            c
        } else {
            Command::new(bin)
        };
        command
            .arg("runnerd")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workspace-root")
            .arg(&root)
            .args(&options.args)
            .env_remove("TALE_RUNNERD_TOKEN")
            .env_remove("TALE_RUNNERD_TOKEN_FILE")
            .envs(options.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(base.join("runnerd.log")).unwrap());
        if options.token_file {
            let file = base.join("token");
            std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            command.env("TALE_RUNNERD_TOKEN_FILE", &file);
        } else {
            command.env("TALE_RUNNERD_TOKEN", TOKEN);
        }
        let child = command.spawn().expect("start tale runnerd");
        let client = Client::new(port);
        let daemon = Runnerd {
            child,
            port,
            root: std::fs::canonicalize(&root).unwrap(),
            base,
            client,
        };
        daemon.wait_ready().await;
        daemon
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = self
                .client
                .request(Method::GET, "/readyz", None, false)
                .await
            {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "runnerd did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("runnerd.log")).unwrap_or_default()
    }

    /// pid of the runnerd process as seen from here (inside unshare, the child of `unshare`).
    pub fn daemon_pid(&self) -> i32 {
        let pid = self.child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            let tale_child = children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.contains("runnerd"))
                });
            let is_unshare = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "unshare");
            if !is_unshare {
                return pid;
            }
            if let Some(child) = tale_child {
                return child;
            }
            assert!(Instant::now() < deadline, "no runnerd under unshare");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the daemon itself.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.daemon_pid()), signal).unwrap();
    }

    /// Waits for the launched process to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn write_file(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Runnerd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = self.daemon_pid();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A minimal HTTP client bound to one daemon.
#[derive(Clone)]
pub struct Client {
    port: u16,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            port,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: bool,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port));
        if auth {
            builder = builder.header("x-tale-runnerd-token", TOKEN);
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        self.http
            .request(builder.body(Full::new(body.unwrap_or_default())).unwrap())
            .await
    }

    /// Sends a request (authenticated) and returns status + JSON body.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap()));
        self.raw(method, path, body, true).await
    }

    /// Sends raw bytes; returns status + body parsed as JSON (Null when not JSON).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: bool,
    ) -> (StatusCode, Value) {
        let response = self.request(method, path, body, auth).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A GET with an explicit token; returns status + JSON body.
    pub async fn http_with_token(
        &self,
        method: Method,
        path: &str,
        token: &str,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("x-tale-runnerd-token", token)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.http.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Starts an exec and returns its event stream.
    pub async fn exec_stream(&self, body: Value) -> EventStream {
        let response = self
            .request(
                Method::POST,
                "/execs",
                Some(Bytes::from(body.to_string())),
                true,
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        EventStream::new(response.into_body())
    }

    /// Runs an exec to its end and returns every event.
    pub async fn exec(&self, body: Value) -> Vec<Value> {
        self.exec_stream(body).await.collect_all().await
    }

    /// Attaches; `None` when the daemon answers 404.
    pub async fn attach(&self, exec_id: &str, since_seq: u64) -> Option<EventStream> {
        let response = self
            .request(
                Method::GET,
                &format!("/execs/{exec_id}/attach?sinceSeq={since_seq}"),
                None,
                true,
            )
            .await
            .unwrap();
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(response.status(), StatusCode::OK);
        Some(EventStream::new(response.into_body()))
    }

    pub async fn health(&self) -> Value {
        self.json(Method::GET, "/healthz", None).await.1
    }
}

/// NDJSON events read incrementally from a response body.
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
}

impl EventStream {
    fn new(body: Incoming) -> EventStream {
        EventStream {
            body,
            buffer: Vec::new(),
        }
    }

    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Some(
                    serde_json::from_slice(&line[..line.len() - 1]).expect("each line is JSON"),
                );
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => panic!("stream broke: {err}"),
                None => {
                    assert!(self.buffer.is_empty(), "stream ended inside a line");
                    return None;
                }
            }
        }
    }

    pub async fn collect_all(mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// Concatenated decoded payload of every event of type `t` (`stdout` / `stderr`).
pub fn output(events: &[Value], t: &str) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["t"] == t)
        .flat_map(|e| {
            base64_simd::STANDARD
                .decode_to_vec(e["b64"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// The stream's terminal event, asserting there is exactly one and it is last.
pub fn terminal(events: &[Value]) -> &Value {
    let terminals: Vec<&Value> = events
        .iter()
        .filter(|e| e["t"] == "exit" || e["t"] == "fail")
        .collect();
    assert_eq!(terminals.len(), 1, "exactly one terminal event: {events:?}");
    assert!(
        std::ptr::eq(terminals[0], events.last().unwrap()),
        "terminal event is last"
    );
    terminals[0]
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn poll<T>(timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .filter(|pid| *pid != std::process::id() as i32)
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised comm: state, ppid.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("");
            let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            state == "Z" && ppid == parent
        })
        .collect()
}

//! End-to-end: the real `tale runnerd` keeps every byte for readers that keep reading (it stops
//! reading the exec's pipes instead of evicting), lets a stalled reader go after the stall window,
//! and keeps its spool budget while doing so.
mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::runnerd::{poll, Options, Runnerd};

/// Bytes the issue's throughput case streams.
const MIB: u64 = 1024 * 1024;

/// A shell command printing the first `bytes` bytes of `1\n2\n3\n…`: every byte checkable, and
/// fast enough (`seq`'s integer path) to outrun any reader here.
fn counting_output(bytes: u64) -> String {
    format!("seq 1 100000000 | head -c {bytes}")
}

/// SHA-256 (hex) of what [`counting_output`] prints, computed outside runnerd.
fn reference_sha256(bytes: u64) -> String {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} | sha256sum", counting_output(bytes)))
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a reader saw of one exec's stream.
#[derive(Default)]
struct Seen {
    stdout_bytes: u64,
    /// SHA-256 (hex) of the stdout bytes received.
    stdout_sha256: String,
    gaps: Vec<Value>,
    terminal: Option<Value>,
    /// Seqs in order (to check there is no hole and no repeat).
    last_seq: u64,
}

/// Reads an NDJSON stream, hashing stdout, at most `bytes_per_sec` of decoded stdout (`None`: as
/// fast as it can).
struct Reader {
    body: Incoming,
    buffer: Vec<u8>,
    decoded: Vec<u8>,
    sha256: ring::digest::Context,
    seen: Seen,
    rate: Option<f64>,
    started: Instant,
    /// Stdout bytes received so far, for the test to watch.
    progress: Arc<AtomicU64>,
}

impl Reader {
    fn new(body: Incoming, bytes_per_sec: Option<f64>) -> Reader {
        Reader {
            body,
            buffer: Vec::new(),
            decoded: Vec::new(),
            sha256: ring::digest::Context::new(&ring::digest::SHA256),
            seen: Seen::default(),
            rate: bytes_per_sec,
            started: Instant::now(),
            progress: Arc::default(),
        }
    }

    /// Where this reader stores its count of stdout bytes received.
    fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// Reads one frame; `false` at the end of the stream.
    async fn read_frame(&mut self) -> bool {
        let Some(frame) = self.body.frame().await else {
            assert!(self.buffer.is_empty(), "stream ended inside a line");
            return false;
        };
        let Ok(data) = frame.expect("stream broke").into_data() else {
            return true;
        };
        self.buffer.extend_from_slice(&data);
        let mut start = 0;
        while let Some(end) = memchr::memchr(b'\n', &self.buffer[start..]) {
            let line = &self.buffer[start..start + end];
            self.line(line.to_vec());
            start += end + 1;
        }
        self.buffer.drain(..start);
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.seen.stdout_bytes as f64 / rate);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
        true
    }

    fn line(&mut self, line: Vec<u8>) {
        const STDOUT_HEAD: &[u8] = br#"{"t":"stdout","b64":""#;
        assert!(
            self.seen.terminal.is_none(),
            "nothing after the terminal event"
        );
        if let Some(rest) = line.strip_prefix(STDOUT_HEAD) {
            let end = memchr::memchr(b'"', rest).unwrap();
            self.decoded.clear();
            base64_simd::STANDARD
                .decode_append(&rest[..end], &mut self.decoded)
                .unwrap();
            let seq: u64 = std::str::from_utf8(&rest[end + r#"","seq":"#.len()..rest.len() - 1])
                .unwrap()
                .parse()
                .unwrap();
            self.seq(seq);
            self.sha256.update(&self.decoded);
            self.seen.stdout_bytes += self.decoded.len() as u64;
            self.progress
                .store(self.seen.stdout_bytes, Ordering::Relaxed);
            return;
        }
        let event: Value = serde_json::from_slice(&line).unwrap();
        match event["t"].as_str().unwrap() {
            "gap" => {
                let to = event["toSeq"].as_u64().unwrap();
                assert_eq!(event["fromSeq"].as_u64().unwrap(), self.seen.last_seq + 1);
                self.seen.last_seq = to;
                self.seen.gaps.push(event);
            }
            "exit" | "fail" => {
                self.seq(event["seq"].as_u64().unwrap());
                self.seen.terminal = Some(event);
            }
            _ => self.seq(event["seq"].as_u64().unwrap()),
        }
    }

    fn seq(&mut self, seq: u64) {
        assert_eq!(seq, self.seen.last_seq + 1, "seqs without hole or repeat");
        self.seen.last_seq = seq;
    }

    async fn read_to_end(mut self) -> Seen {
        while self.read_frame().await {}
        self.seen.stdout_sha256 = hex(self.sha256.finish().as_ref());
        self.seen
    }
}

/// A GET or POST whose client socket buffers little (64 KiB): what a reader has not read stays
/// in runnerd, not in the kernel, so the tests need less output to show the difference.
async fn small_buffer_request(
    daemon: &Runnerd,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Incoming {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_recv_buffer_size(Some(64 * 1024));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<Bytes>>(connector);
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{}{path}", daemon.port))
        .header("x-tale-runnerd-token", support::runnerd::TOKEN)
        .body(http_body_util::Full::new(
            body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
        ))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// How long a measure must stay unchanged to count as settled.
const SETTLE: Duration = Duration::from_secs(1);

/// Waits until `done` or until `measure` has stayed the same (and above zero) for [`SETTLE`]:
/// the point where a producer either finished or cannot go on. Returns whether it was `done`.
async fn settle(mut probe: impl AsyncFnMut() -> (u64, bool)) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let (measure, done) = probe().await;
        if done {
            return true;
        }
        if measure != last {
            (last, since) = (measure, Instant::now());
        } else if measure > 0 && since.elapsed() >= SETTLE {
            return false;
        }
        assert!(Instant::now() < deadline, "neither done nor settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec_state(daemon: &Runnerd, id: &str) -> Value {
    let (_, status) = daemon
        .client
        .json(Method::GET, &format!("/execs/{id}"), None)
        .await;
    status["state"].clone()
}

async fn start_exec(daemon: &Runnerd, body: Value) -> Incoming {
    small_buffer_request(daemon, Method::POST, "/execs", Some(body)).await
}

/// Bytes held right now by runnerd's spool files (anonymous files in its journal directory,
/// found through its open descriptors).
/// Bytes in the spool files runnerd holds open (its journal dir lives in its state dir, whose
/// name it picks at boot).
fn spool_bytes(daemon: &Runnerd) -> u64 {
    let fds = format!("/proc/{}/fd", daemon.daemon_pid());
    std::fs::read_dir(&fds)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().contains("/journal/"))
                })
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// 256 MiB read by a client throttled to ~40 MB/s arrive complete and byte-exact, with no gap,
/// though they are four times the per-exec spool: runnerd waits for the reader instead of evicting.
#[tokio::test(flavor = "multi_thread")]
async fn throttled_reader_gets_256_mib_byte_exact() {
    let daemon = Runnerd::start(Options::default()).await;
    let bytes = 256 * MIB;
    let body = start_exec(
        &daemon,
        json!({"execId": "big", "shell": counting_output(bytes), "timeoutMs": 600000}),
    )
    .await;
    let seen = Reader::new(body, Some(40e6)).read_to_end().await;
    assert!(seen.gaps.is_empty(), "no gap: {:?}", seen.gaps);
    assert_eq!(seen.stdout_bytes, bytes);
    assert_eq!(seen.stdout_sha256, reference_sha256(bytes), "byte-exact");
    let exit = seen.terminal.expect("an exit event");
    assert_eq!(exit["t"], "exit");
    assert_eq!(exit["exitCode"], 0);
}

/// A fast and a slow reader of the same exec both get every byte. While the slow one reads
/// nothing, the exec is held back (it does not run ahead and evict what the slow one has not
/// read) and the fast one gets everything there is; then the slow one catches up.
#[tokio::test(flavor = "multi_thread")]
async fn fast_and_slow_readers_both_get_everything() {
    let daemon = Runnerd::start(Options {
        args: vec!["--journal-exec-spool-bytes".into(), (2 * MIB).to_string()],
        // Longer than any pause below (through the environment: older binaries, which the test
        // is checked against, have no such flag and ignore the variable).
        env: vec![("TALE_JOURNAL_STALL_MS".into(), "300000".into())],
        ..Options::default()
    })
    .await;
    // Far more than the exec's spool, memory tail, pipe and socket buffers hold together (2 MiB
    // + 512 KiB + 1 MiB + a few MiB): without backpressure the slow reader would lose most of it.
    let bytes = 24 * MIB;
    // The exec waits for stdin's end, so both readers are connected before the first byte.
    let primary = start_exec(
        &daemon,
        json!({"execId": "two", "shell": format!("read _; {}", counting_output(bytes)),
               "stdinMode": "hold", "timeoutMs": 600000}),
    )
    .await;
    let attach =
        small_buffer_request(&daemon, Method::GET, "/execs/two/attach?sinceSeq=0", None).await;
    let (status, reply) = daemon
        .client
        .json(Method::POST, "/execs/two/stdin", Some(json!({"eof": true})))
        .await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"ok": true})));
    let fast = Reader::new(primary, None);
    let fast_progress = fast.progress();
    let fast = tokio::spawn(fast.read_to_end());
    // The slow reader reads nothing until the fast one has everything there is: the whole
    // output if the exec runs ahead, else as far as the journal lets the exec go.
    let fast_done =
        settle(async || (fast_progress.load(Ordering::Relaxed), fast.is_finished())).await;
    let held = fast_progress.load(Ordering::Relaxed);
    assert!(
        !fast_done && held < bytes,
        "the exec ran ahead of the slow reader: the fast one got {held} of {bytes} bytes"
    );
    assert_eq!(exec_state(&daemon, "two").await, "running");
    let slow = Reader::new(attach, None).read_to_end().await;
    let want = reference_sha256(bytes);
    for seen in [fast.await.unwrap(), slow] {
        assert!(seen.gaps.is_empty(), "no gap: {:?}", seen.gaps);
        assert_eq!(seen.stdout_bytes, bytes);
        assert_eq!(seen.stdout_sha256, want, "byte-exact");
        assert_eq!(seen.terminal.expect("exit")["exitCode"], 0);
    }
}

/// A reader that stops reading holds the exec back only for the stall window: then the exec
/// finishes, and the reader, reading again, gets an explicit gap and the stream's end.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_reader_lets_the_exec_finish_after_the_stall_window() {
    let stall = Duration::from_secs(2);
    let daemon = Runnerd::start(Options {
        args: vec![
            "--journal-stall-ms".into(),
            stall.as_millis().to_string(),
            "--journal-exec-spool-bytes".into(),
            (2 * MIB).to_string(),
        ],
        ..Options::default()
    })
    .await;
    let body = start_exec(
        &daemon,
        json!({"execId": "stall", "shell": counting_output(32 * MIB), "timeoutMs": 600000}),
    )
    .await;
    let mut reader = Reader::new(body, None);
    assert!(reader.read_frame().await);
    // Now read nothing: the exec must still finish, once the stall window has passed.
    let exited = poll(stall + Duration::from_secs(20), async || {
        let (_, status) = daemon.client.json(Method::GET, "/execs/stall", None).await;
        (status["state"] == "exited").then_some(status)
    })
    .await
    .expect("the exec finished although its reader stalled");
    assert_eq!(exited["exitCode"], 0);
    let seen = reader.read_to_end().await;
    assert!(!seen.gaps.is_empty(), "the stalled reader lost output");
    let exit = seen.terminal.expect("an exit event");
    assert_eq!(exit["exitCode"], 0);
    let duration = Duration::from_millis(exit["durationMs"].as_u64().unwrap());
    assert!(
        duration >= stall,
        "the reader held the exec until it stalled ({duration:?})"
    );
}

/// With no reader connected nothing waits: an exec whose only reader went away after its first
/// frame runs to its end, far beyond its spool and long before the stall window could have let a
/// reader go; a later attach gets an explicit gap instead of the evicted output.
#[tokio::test(flavor = "multi_thread")]
async fn an_exec_nobody_reads_is_never_held_back() {
    let daemon = Runnerd::start(Options {
        args: vec!["--journal-exec-spool-bytes".into(), (2 * MIB).to_string()],
        env: vec![("TALE_JOURNAL_STALL_MS".into(), "600000".into())],
        ..Options::default()
    })
    .await;
    let bytes = 24 * MIB;
    let body = start_exec(
        &daemon,
        json!({"execId": "gone", "shell": counting_output(bytes), "timeoutMs": 600000}),
    )
    .await;
    let mut reader = Reader::new(body, None);
    assert!(reader.read_frame().await);
    drop(reader);
    let exited = poll(Duration::from_secs(120), async || {
        let (_, status) = daemon.client.json(Method::GET, "/execs/gone", None).await;
        (status["state"] == "exited").then_some(status)
    })
    .await
    .expect("the exec finished with nobody reading");
    assert_eq!(exited["exitCode"], 0);
    let late =
        small_buffer_request(&daemon, Method::GET, "/execs/gone/attach?sinceSeq=0", None).await;
    let seen = Reader::new(late, None).read_to_end().await;
    assert_eq!(seen.gaps.len(), 1, "one explicit gap: {:?}", seen.gaps);
    assert!(seen.stdout_bytes < bytes);
    assert_eq!(seen.terminal.expect("an exit event")["exitCode"], 0);
}

/// Several execs whose readers lag share the daemon-wide spool budget. While the readers read
/// nothing, the execs are held back once the spool is full (on disk it never passes its cap);
/// then every reader gets every byte, and runnerd's memory stays small throughout.
#[tokio::test(flavor = "multi_thread")]
async fn spool_budget_holds_while_readers_lag() {
    let total = 4 * MIB;
    let daemon = Runnerd::start(Options {
        args: vec![
            "--journal-total-spool-bytes".into(),
            total.to_string(),
            "--journal-exec-spool-bytes".into(),
            (3 * MIB).to_string(),
        ],
        // Longer than any pause below (through the environment: older binaries, which the test
        // is checked against, have no such flag and ignore the variable).
        env: vec![("TALE_JOURNAL_STALL_MS".into(), "300000".into())],
        ..Options::default()
    })
    .await;
    // More than one exec can hold outside the spool (pipe, memory tail, socket buffers: ~6 MiB)
    // plus its spool cap: every exec must wait for its reader.
    let bytes = 12 * MIB;
    let ids: Vec<String> = (0..3).map(|i| format!("lag{i}")).collect();
    let mut bodies = Vec::new();
    for id in &ids {
        bodies.push(
            start_exec(
                &daemon,
                json!({"execId": id, "shell": counting_output(bytes), "timeoutMs": 600000}),
            )
            .await,
        );
    }
    let pid = daemon.daemon_pid();
    let (mut peak_spool, mut peak_rss) = (0, 0);
    // The readers read nothing until the spool stops growing (full) or every exec ended.
    let finished = settle(async || {
        let spool = spool_bytes(&daemon);
        peak_spool = peak_spool.max(spool);
        peak_rss = peak_rss.max(rss_bytes(pid));
        let mut all_exited = true;
        for id in &ids {
            all_exited &= exec_state(&daemon, id).await == "exited";
        }
        (spool, all_exited)
    })
    .await;
    assert!(!finished, "the execs ran ahead of their readers");
    for id in &ids {
        assert_eq!(exec_state(&daemon, id).await, "running", "{id}");
    }
    let readers: Vec<_> = bodies
        .into_iter()
        .map(|body| tokio::spawn(Reader::new(body, None).read_to_end()))
        .collect();
    while !readers.iter().all(|r| r.is_finished()) {
        peak_spool = peak_spool.max(spool_bytes(&daemon));
        peak_rss = peak_rss.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want = reference_sha256(bytes);
    for reader in readers {
        let seen = reader.await.unwrap();
        assert!(seen.gaps.is_empty(), "no gap: {:?}", seen.gaps);
        assert_eq!(
            seen.stdout_bytes,
            bytes,
            "{:?}\n{}",
            seen.terminal,
            daemon.log()
        );
        assert_eq!(seen.stdout_sha256, want, "byte-exact");
    }
    assert!(peak_spool > 0, "the readers lagged enough to use the spool");
    assert!(
        peak_spool <= total,
        "spool files held {peak_spool} bytes, over the {total}-byte budget"
    );
    assert!(
        peak_rss <= 64 * MIB,
        "runnerd grew to {peak_rss} bytes of RSS"
    );
}

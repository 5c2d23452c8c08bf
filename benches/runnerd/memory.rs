//! What limits sessions per host is the memory each runnerd owns, not what it shares: its
//! anonymous pages (heap, stacks, the relocated and written data of the binary), read from
//! `/proc/<pid>/smaps_rollup` fresh, idle after warm-up, and per live exec. The binary's own
//! resident pages are file-backed and clean: every session of one image shares them through the
//! page cache, so they count once per host, reported separately.
use super::{exec, Daemon, Http, TOKEN};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;
use std::time::{Duration, Instant};

/// Execs held live at once for the per-exec figure.
const LIVE_EXECS: usize = 200;
/// Execs run before the idle-after-warm-up reading.
const WARM_UP_EXECS: usize = 50;

/// One reading of `/proc/<pid>/smaps_rollup`, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Rollup {
    rss: u64,
    pss_anon: u64,
    private_dirty: u64,
}

fn rollup(pid: u32) -> Rollup {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from smaps_rollup"))
    };
    Rollup {
        rss: field("Rss:"),
        pss_anon: field("Pss_Anon:"),
        private_dirty: field("Private_Dirty:"),
    }
}

/// Resident pages of the binary's own mappings that are still file-backed (KiB): text, read-only
/// data, relocation tables. Copy-on-write pages of the binary are anonymous and not in here.
fn binary_file_resident_kib(pid: u32, binary: &str) -> u64 {
    let binary = std::fs::canonicalize(binary).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut in_binary) = (0u64, false);
    let kib = |line: &str| -> u64 { line.split_whitespace().nth(1).unwrap().parse().unwrap() };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_binary = line.split_whitespace().nth(5) == binary.to_str();
        } else if in_binary && line.starts_with("Rss:") {
            total += kib(line);
        } else if in_binary && line.starts_with("Anonymous:") {
            total -= kib(line);
        }
    }
    total
}

/// Children of `pid` (any of its threads) whose command name is `comm`.
fn children_running(pid: u32, comm: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|name| name.trim() == comm)
        })
        .count()
}

/// The live exec count runnerd reports on `/healthz`.
pub async fn live_execs(http: &Http, port: u16) -> u64 {
    let request = Request::get(format!("http://127.0.0.1:{port}/healthz"))
        .header("x-tale-runnerd-token", TOKEN)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let bytes = http
        .request(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["liveExecs"]
        .as_u64()
        .unwrap()
}

/// The memory rows of the runnerd table.
pub async fn report(http: &Http, binary: &str) -> Vec<String> {
    // A binary written moments ago has dirty page-cache pages, which smaps counts as Private_Dirty
    // of every process mapping them until writeback: flush them first.
    std::fs::File::open(binary).unwrap().sync_all().unwrap();
    let daemon = Daemon::start(&["--exec-user", "0:0", "--max-live-execs", "1100"]);
    let pid = daemon.child.id();
    // The first request has been answered: runnerd is up and idle.
    live_execs(http, daemon.port).await;
    let fresh = rollup(pid);
    for i in 0..WARM_UP_EXECS {
        let body = json!({"execId": format!("w{i}"), "command": ["true"], "timeoutMs": 10000});
        assert_eq!(exec(http, daemon.port, body, false).await.1, 0);
    }
    assert_eq!(live_execs(http, daemon.port).await, 0);
    let warm = rollup(pid);
    let shared_kib = binary_file_resident_kib(pid, binary);

    let mut handles = Vec::new();
    for i in 0..LIVE_EXECS {
        let http = http.clone();
        let port = daemon.port;
        handles.push(tokio::spawn(async move {
            let body =
                json!({"execId": format!("l{i}"), "command": ["sleep", "10"], "timeoutMs": 120000});
            exec(&http, port, body, false).await.1
        }));
    }
    // Until every child has exec'd `sleep`: a child between fork and exec still shares runnerd's
    // pages, which would halve their Pss and hide them from Private_Dirty.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (live_execs(http, daemon.port).await as usize) < LIVE_EXECS
        || children_running(pid, "sleep") < LIVE_EXECS
    {
        assert!(Instant::now() < deadline, "the execs did not all start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = rollup(pid);
    for handle in handles {
        assert_eq!(handle.await.unwrap(), 0);
    }
    drop(daemon);

    let per_exec =
        |after: u64, before: u64| after.saturating_sub(before) as f64 / LIVE_EXECS as f64;
    vec![
        format!(
            "| anonymous memory, idle (Pss_Anon / Private_Dirty) | fresh {} / {} KiB, after {WARM_UP_EXECS} execs {} / {} KiB | (what each session costs) |",
            fresh.pss_anon, fresh.private_dirty, warm.pss_anon, warm.private_dirty
        ),
        format!(
            "| anonymous memory per live exec ({LIVE_EXECS} `sleep` execs, streams attached) | {:.1} KiB Pss_Anon, {:.1} KiB Private_Dirty (Pss_Anon {} → {} KiB) | ≤ 20 KiB |",
            per_exec(live.pss_anon, warm.pss_anon),
            per_exec(live.private_dirty, warm.private_dirty),
            warm.pss_anon,
            live.pss_anon
        ),
        format!(
            "| the binary's file-backed resident pages, idle after warm-up | {shared_kib} KiB (RSS {} KiB fresh, {} KiB warm) | (shared by every session of an image, once per host) |",
            fresh.rss, warm.rss
        ),
    ]
}

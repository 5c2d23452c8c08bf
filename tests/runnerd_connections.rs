//! End-to-end against the real binary: the connection caps refuse a hostile flood without
//! refusing the spawner's legitimate bursts.
mod support;

use serde_json::json;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::runnerd::{output, raise_own_nofile, Options, Runnerd, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a connection from `source` (a loopback address) to `target`, bounded in time.
async fn connect_from(source: &str, target: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
        .await
        .ok()?
        .ok()
}

/// Sockets runnerd holds open now.
fn sockets_held(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether runnerd closed this connection (end of stream or reset), without waiting.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != ErrorKind::WouldBlock,
    }
}

/// One fresh connection carrying one signed request; returns the status line (or what went
/// wrong).
async fn signed_request(target: SocketAddr) -> String {
    let Some(mut stream) = connect_from("127.0.0.1", target).await else {
        return "connect failed".into();
    };
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-tale-runnerd-token: {TOKEN}\r\n\r\n"
    );
    if let Err(err) = stream.write_all(head.as_bytes()).await {
        return format!("write failed: {err}");
    }
    let mut reply = Vec::new();
    match tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut reply)).await {
        Err(_) => "no answer within 60 s".into(),
        Ok(Err(err)) => format!("read failed: {err}"),
        Ok(Ok(_)) => String::from_utf8_lossy(&reply)
            .lines()
            .next()
            .unwrap_or("closed without an answer")
            .to_string(),
    }
}

/// 200 fresh connections opened at once from one address (the spawner's), each carrying a signed
/// request, are all answered 200 — more than the per-source pre-auth cap, and while another
/// address holds enough idle connections to fill the total cap. The idle ones are closed unread
/// once their wait runs out.
#[tokio::test(flavor = "multi_thread")]
async fn signed_burst_is_served_while_another_source_floods() {
    const MAX_CONNECTIONS: usize = 500;
    const BURST: usize = 200;
    let hard = raise_own_nofile();
    if hard < 2048 {
        eprintln!("skipped: hard descriptor limit {hard} is too low");
        return;
    }
    let daemon = Runnerd::start(Options {
        args: vec!["--max-connections".into(), MAX_CONNECTIONS.to_string()],
        ..Options::default()
    })
    .await;
    let pid = daemon.daemon_pid();
    let baseline = sockets_held(pid);
    let target: SocketAddr = format!("127.0.0.1:{}", daemon.port).parse().unwrap();

    // Another session's address opens more idle connections than the whole cap.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..MAX_CONNECTIONS + 100 {
        flood.spawn(connect_from("127.0.0.2", target));
    }
    let idle: Vec<TcpStream> = flood.join_all().await.into_iter().flatten().collect();
    assert_eq!(idle.len(), MAX_CONNECTIONS + 100, "runnerd kept accepting");
    // The cap counts the support client's connection, already in `baseline`. The check that the
    // flood filled the cap comes after the burst's: without parking the burst is what fails.
    let full = baseline + MAX_CONNECTIONS - 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sockets_held(pid) < full && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_before_burst = sockets_held(pid);

    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        burst.spawn(signed_request(target));
    }
    let answers = burst.join_all().await;
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {BURST} signed requests not answered 200, e.g. {:?}\n{}",
        refused.len(),
        refused.first(),
        daemon.log()
    );

    assert!(
        held_before_burst >= full,
        "the flood did not fill the cap: {held_before_burst} sockets held, {full} expected"
    );
    // Execs still spawn, then every idle connection is closed (header timeout or parking wait).
    let events = daemon
        .client
        .exec(json!({"execId": "after-burst", "shell": "echo ok", "timeoutMs": 10000}))
        .await;
    assert_eq!(output(&events, "stdout"), b"ok\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = idle.iter().filter(|s| !closed_by_peer(s)).count();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} idle connections still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// runnerd listens with a backlog of `LISTEN_BACKLOG` (capped by the kernel's somaxconn), not the
/// platform's 128: with 128, a flood of hundreds of connections while runnerd is busy overflows
/// the accept queue, and SYN cookies then give clients connections runnerd never accepted — never
/// served and never closed (the cause of an "idle connections still open" failure above).
#[tokio::test(flavor = "multi_thread")]
async fn listen_backlog_holds_a_flood() {
    let daemon = Runnerd::start(Options::default()).await;
    let (backlog, expected) = support::proc_net::listen_backlog(daemon.port);
    assert_eq!(backlog, expected);
    assert!(backlog >= 1024, "backlog {backlog}");
}

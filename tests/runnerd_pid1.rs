//! End-to-end: runnerd's init duties, as a child subreaper and as real PID 1 of a PID namespace —
//! orphans are reaped, SIGTERM ends every exec and the daemon exits 0 within its grace.
mod support;

use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};
use support::runnerd::{output, poll, terminal, zombies_of, Options, Runnerd};

fn options(pid1: bool) -> Options {
    Options {
        pid1,
        args: vec!["--shutdown-grace-ms".into(), "2000".into()],
        ..Options::default()
    }
}

/// 500 orphaned background children are all reaped: no zombies, and `reapedOrphans` counts them.
async fn orphans_are_reaped(pid1: bool) {
    let daemon = Runnerd::start(options(pid1)).await;
    let events = daemon
        .client
        .exec(json!({"execId": "orphans", "shell": "i=0; while [ $i -lt 500 ]; do (sleep 0.3 &); i=$((i+1)); done; echo spawned",
                     "timeoutMs": 120000}))
        .await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    assert_eq!(output(&events, "stdout"), b"spawned\n");
    let pid = daemon.daemon_pid();
    let reaped = poll(Duration::from_secs(30), async || {
        let health = daemon.client.health().await;
        let count = health["reapedOrphans"].as_u64().unwrap();
        (count >= 500 && zombies_of(pid).is_empty()).then_some(count)
    })
    .await;
    assert!(
        reaped.is_some(),
        "reaped {:?}, zombies {:?}",
        daemon.client.health().await["reapedOrphans"],
        zombies_of(pid).len()
    );
}

/// SIGTERM to runnerd: every exec (one of them ignoring SIGTERM) ends and runnerd exits 0 in time.
async fn sigterm_ends_execs_and_exits_zero(pid1: bool) {
    let mut daemon = Runnerd::start(options(pid1)).await;
    let mut plain = daemon
        .client
        .exec_stream(json!({"execId": "a", "command": ["sleep", "600"], "timeoutMs": 600000}))
        .await;
    let mut stubborn = daemon
        .client
        .exec_stream(json!({"execId": "b", "shell": "trap '' TERM; echo ready; while :; do sleep 1; done", "timeoutMs": 600000}))
        .await;
    assert_eq!(plain.next().await.unwrap()["t"], "start");
    while stubborn.next().await.unwrap()["t"] != "stdout" {}
    let started = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let plain_rest = plain.collect_all().await;
    assert_eq!(terminal(&plain_rest)["exitCode"], 143);
    let stubborn_rest = stubborn.collect_all().await;
    assert_eq!(
        terminal(&stubborn_rest)["exitCode"],
        137,
        "SIGKILL after the grace"
    );
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("runnerd exited");
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    // Grace 2 s + drain; well under the 10 s of `docker stop`.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

/// As a child subreaper (tests, local backend).
#[tokio::test(flavor = "multi_thread")]
async fn subreaper_reaps_orphans() {
    orphans_are_reaped(false).await;
}

/// As PID 1 of its own PID namespace, as in a container.
#[tokio::test(flavor = "multi_thread")]
async fn pid1_reaps_orphans() {
    orphans_are_reaped(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subreaper_sigterm_shutdown() {
    sigterm_ends_execs_and_exits_zero(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pid1_sigterm_shutdown() {
    sigterm_ends_execs_and_exits_zero(true).await;
}

/// As PID 1 the exec cannot read runnerd's environment (it runs as another user).
#[tokio::test(flavor = "multi_thread")]
async fn pid1_environ_is_private() {
    let daemon = Runnerd::start(options(true)).await;
    let events = daemon
        .client
        .exec(json!({"execId": "peek", "shell": "echo $$; cat /proc/1/environ; echo rc=$?", "timeoutMs": 60000}))
        .await;
    let stdout = String::from_utf8(output(&events, "stdout")).unwrap();
    assert!(stdout.trim_end().ends_with("rc=1"), "{stdout}");
    assert!(!stdout.contains(support::runnerd::TOKEN));
}

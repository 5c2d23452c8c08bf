//! End-to-end with the real runnerd: an exec whose process exited while a background child keeps
//! only its stderr open (stdout already closed) ends after the pipe drain grace, with its exit
//! event. Before, the drain awaited the finished stdout pump a second time after the grace, the
//! exec's task panicked and the exec stayed `running` forever.
mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::runnerd::{terminal, Options, Runnerd};

#[tokio::test(flavor = "multi_thread")]
async fn exec_ends_when_a_background_child_holds_only_stderr() {
    let daemon = Runnerd::start(Options::default()).await;
    let started = Instant::now();
    let run = daemon.client.exec(json!({
        "execId": "held-stderr",
        "shell": "(sleep 6 >/dev/null </dev/null &) ; echo out",
    }));
    let events = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap_or_else(|_| panic!("the exec never ended:\n{}", daemon.log()));
    let end = terminal(&events);
    assert_eq!(end["t"], "exit", "{events:?}");
    assert_eq!(end["exitCode"], 0);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "ended after the drain grace, not when the child let go: {:?}",
        started.elapsed()
    );
    assert!(
        !daemon.log().contains("panicked"),
        "runnerd log:\n{}",
        daemon.log()
    );
}

//! End-to-end: cancel, deadline, runnerd shutdown and local session destroy end every process an
//! exec started — also those in other sessions (`setsid`), ignoring SIGTERM, double-forked, or a
//! fork bomb — while a normal exit leaves background processes alone. Real runnerd, real processes;
//! runnerd runs as root (execs as an unprivileged user), as in a session container.
mod support;

use hyper::{Method, StatusCode};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::runnerd::{output, poll, processes_with, terminal, EventStream, Options, Runnerd};
use support::spawner::SpawnerProcess;

/// A number no other test (or test run) uses as a `sleep` argument: it names the processes.
fn marker(case: u32) -> String {
    format!("{}{case:03}", 700_000 + std::process::id() % 100_000)
}

/// Processes whose command line holds `marker` anywhere (sleeps and the shells around them).
fn left(marker: &str) -> Vec<i32> {
    processes_with(marker)
}

/// Kills what a test left running (by pid, only processes named by its marker): stop them all,
/// then kill, in rounds, so even a surviving fork bomb ends.
fn clean_up(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let pids = left(marker);
        if pids.is_empty() {
            return;
        }
        for signal in [Signal::SIGSTOP, Signal::SIGKILL] {
            for &pid in &pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads events until the first stdout line.
async fn until_stdout(stream: &mut EventStream) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let event = stream.next().await.expect("stream ended before any output");
        let done = event["t"] == "stdout";
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// Waits until at least `count` `sleep <marker>` processes run.
async fn sleeps_running(marker: &str, count: usize) {
    let needle = format!("sleep\0{marker}\0");
    let running = poll(Duration::from_secs(10), async || {
        (processes_with(&needle).len() >= count).then_some(())
    })
    .await;
    assert!(
        running.is_some(),
        "{count} sleeps never ran: {:?}",
        processes_with(&needle)
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Cancel,
    Deadline,
}

/// Runs `script` (which starts escaping processes named by the marker, then sleeps in the
/// foreground), ends it by cancel or deadline, and checks that nothing of it is left once the
/// `exit` event arrived; another exec's escaped processes must survive it.
async fn ends_the_tree(case: u32, ending: Ending, script: impl Fn(&str) -> String) {
    ends_the_tree_with(Options::default(), case, ending, script).await;
}

async fn ends_the_tree_with(
    options: Options,
    case: u32,
    ending: Ending,
    script: impl Fn(&str) -> String,
) {
    let daemon = Runnerd::start(options).await;
    let m = marker(case);
    let bystander = marker(case + 50);
    let mut other = daemon
        .client
        .exec_stream(json!({"execId": "other", "shell": format!(
            "setsid sh -c 'sleep {bystander}; :' & echo started; sleep {bystander}; :"
        ), "timeoutMs": 600_000}))
        .await;
    until_stdout(&mut other).await;
    let timeout_ms = match ending {
        Ending::Cancel => 600_000,
        Ending::Deadline => 1_500,
    };
    let mut stream = daemon
        .client
        .exec_stream(json!({"execId": "tree", "shell": format!("{}\necho started; sleep {m}; :", script(&m)), "timeoutMs": timeout_ms}))
        .await;
    until_stdout(&mut stream).await;
    sleeps_running(&m, 2).await;
    sleeps_running(&bystander, 2).await;
    if ending == Ending::Cancel {
        let (status, body) = daemon
            .client
            .json(Method::POST, "/execs/tree/cancel", None)
            .await;
        assert_eq!((status, body), (StatusCode::OK, json!({"killed": true})));
    }
    let rest = stream.collect_all().await;
    let exit = terminal(&rest);
    assert_eq!(exit["cancelled"], ending == Ending::Cancel, "{exit}");
    assert_eq!(exit["timedOut"], ending == Ending::Deadline, "{exit}");
    // `exit` is written once the whole tree is gone: no waiting here.
    let survivors = left(&m);
    let bystanders = processes_with(&format!("sleep\0{bystander}\0")).len();
    clean_up(&m);
    clean_up(&bystander);
    assert!(survivors.is_empty(), "left after exit: {survivors:?}");
    assert_eq!(bystanders, 2, "another exec's processes are untouched");
}

/// Claude Code's Bash tool: the agent (the exec's child) runs each command in its own session.
fn tool_process(m: &str) -> String {
    format!("sh -c \"setsid sh -c 'sleep {m}; :' & wait\" &")
}

/// A process in its own session that ignores SIGTERM (its sleep inherits the ignored signal).
fn stubborn(m: &str) -> String {
    format!("setsid sh -c 'trap \"\" TERM; sleep {m}; :' &")
}

/// A classic daemon: fork, setsid, fork — re-parented to runnerd, in no group or session of the
/// exec.
fn double_fork(m: &str) -> String {
    format!("(setsid sh -c 'sleep {m}; :' &)")
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_tool_process_in_its_own_session() {
    ends_the_tree(1, Ending::Cancel, tool_process).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_ends_a_tool_process_in_its_own_session() {
    ends_the_tree(2, Ending::Deadline, tool_process).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_setsid_process_ignoring_sigterm() {
    ends_the_tree(3, Ending::Cancel, stubborn).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_ends_a_setsid_process_ignoring_sigterm() {
    ends_the_tree(4, Ending::Deadline, stubborn).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_double_forked_daemon() {
    ends_the_tree(5, Ending::Cancel, double_fork).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_ends_a_double_forked_daemon() {
    ends_the_tree(6, Ending::Deadline, double_fork).await;
}

/// runnerd not root (no mark groups): the exec's session, group and parent chain still reach a
/// tool process in its own session below a living child.
#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_cancel_ends_a_tool_process_in_its_own_session() {
    let options = Options {
        run_as: Some(10088),
        ..Options::default()
    };
    ends_the_tree_with(options, 11, Ending::Cancel, tool_process).await;
}

/// runnerd not root: a `setsid` child ignoring SIGTERM is found through its parent and killed.
#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_deadline_ends_a_setsid_process_ignoring_sigterm() {
    let options = Options {
        run_as: Some(10088),
        ..Options::default()
    };
    ends_the_tree_with(options, 12, Ending::Deadline, stubborn).await;
}

/// After a normal exit the exec is over: what it left in the background (a dev server, say) keeps
/// running, and a cancel — even one that arrives while runnerd still drains the pipes a background
/// child holds open — kills nothing.
#[tokio::test(flavor = "multi_thread")]
async fn normal_exit_leaves_background_processes_alone() {
    let daemon = Runnerd::start(Options::default()).await;
    let m = marker(7);
    let mut stream = daemon
        .client
        .exec_stream(json!({"execId": "bg", "shell": format!(
            "echo $$; setsid sh -c 'sleep {m}; :' & sleep {m} & exit 0"
        ), "timeoutMs": 600_000}))
        .await;
    let seen = until_stdout(&mut stream).await;
    let pid: i32 = String::from_utf8(output(&seen, "stdout"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background `sleep` holds stdout, so runnerd keeps draining after the shell is reaped.
    let reaped = poll(Duration::from_secs(10), async || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    assert!(reaped.is_some(), "the exec's shell was never reaped");
    sleeps_running(&m, 2).await;
    let (status, body) = daemon
        .client
        .json(Method::POST, "/execs/bg/cancel", None)
        .await;
    let rest = stream.collect_all().await;
    let running = processes_with(&format!("sleep\0{m}\0")).len();
    clean_up(&m);
    assert_eq!((status, body), (StatusCode::OK, json!({"killed": false})));
    let exit = terminal(&rest);
    assert_eq!(
        (&exit["exitCode"], &exit["cancelled"]),
        (&json!(0), &json!(false))
    );
    assert_eq!(running, 2, "background processes survive the exec");
}

/// A fork bomb whose every process starts in a new session (bounded by a process limit for its
/// own exec user, so it cannot hurt the machine) is ended by cancel within the grace, and the
/// user can spawn right after.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_fork_bomb() {
    const LIMIT: usize = 60;
    let daemon = Runnerd::start(Options {
        args: vec!["--exec-user".into(), "10077:10077".into()],
        ..Options::default()
    })
    .await;
    let m = marker(8);
    let bomb = daemon.write_file(
        &format!("bomb-{m}.sh"),
        b"while :; do setsid bash \"$0\" & done\n",
    );
    let mut stream = daemon
        .client
        .exec_stream(json!({"execId": "bomb", "shell": format!(
            "ulimit -u {LIMIT}; echo started; exec bash {}", bomb.display()
        ), "timeoutMs": 600_000}))
        .await;
    until_stdout(&mut stream).await;
    let name = format!("bomb-{m}");
    let grown = poll(Duration::from_secs(20), async || {
        (left(&name).len() >= LIMIT / 2).then_some(())
    })
    .await;
    assert!(grown.is_some(), "bomb did not grow: {}", left(&name).len());
    let cancelled_at = Instant::now();
    let (status, body) = daemon
        .client
        .json(Method::POST, "/execs/bomb/cancel", None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"killed": true})));
    let rest = stream.collect_all().await;
    let took = cancelled_at.elapsed();
    let survivors = left(&name);
    clean_up(&name);
    assert_eq!(terminal(&rest)["cancelled"], true);
    assert!(
        survivors.is_empty(),
        "{} bomb processes left",
        survivors.len()
    );
    // 5 s grace, then the freeze-and-kill rounds.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let events = daemon
        .client
        .exec(json!({"execId": "after", "shell": format!("ulimit -u {LIMIT}; sh -c 'echo ok'"), "timeoutMs": 60_000}))
        .await;
    assert_eq!(output(&events, "stdout"), b"ok\n", "{events:?}");
    assert_eq!(terminal(&events)["exitCode"], 0);
}

/// SIGTERM to runnerd ends every process of the session: a running exec's child in its own
/// session that ignores SIGTERM, and what a finished exec left in the background.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_processes_in_other_sessions() {
    let mut daemon = Runnerd::start(Options {
        args: vec!["--shutdown-grace-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await;
    let m = marker(9);
    let events = daemon
        .client
        .exec(json!({"execId": "done", "shell": format!("setsid sh -c 'sleep {m}; :' >/dev/null 2>&1 &"), "timeoutMs": 60_000}))
        .await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    let mut stream = daemon
        .client
        .exec_stream(json!({"execId": "live", "shell": format!("{}\necho started; sleep {m}; :", stubborn(&m)), "timeoutMs": 600_000}))
        .await;
    until_stdout(&mut stream).await;
    sleeps_running(&m, 3).await;
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let survivors = left(&m);
    clean_up(&m);
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
    assert!(survivors.is_empty(), "left after shutdown: {survivors:?}");
}

/// Local backend: `DELETE /v1/sessions/:id` ends the session's processes on the host, also one
/// that left the exec's session, instead of leaving them running with the workspace gone.
#[tokio::test(flavor = "multi_thread")]
async fn local_destroy_ends_the_session_processes() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    let m = marker(10);
    let (status, created) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": format!("tree{m}"), "organizationId": "org1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, stream) = c
        .sse(
            Method::POST,
            &format!("/v1/sessions/tree{m}/exec"),
            Some(json!({"execId": "bg", "shell": format!("setsid sh -c 'sleep {m}; :' >/dev/null 2>&1 & echo started")})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = stream.collect_all().await;
    assert_eq!(support::spawner::stdout_text(&events), "started\n");
    sleeps_running(&m, 1).await;
    let (status, body) = c
        .json(Method::DELETE, &format!("/v1/sessions/tree{m}"), None)
        .await;
    let survivors = left(&m);
    clean_up(&m);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(survivors.is_empty(), "left after destroy: {survivors:?}");
}

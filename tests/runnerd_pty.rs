//! End-to-end: pty execs of the real `tale runnerd` — the exec's controlling terminal, resize,
//! keystrokes through raw stdin, Ctrl-C, cancel of the whole tree, byte-exact replay — and raw
//! stdin on pipes.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::runnerd::{output, poll, processes_with, terminal, EventStream, Options, Runnerd};

const WAIT: Duration = Duration::from_secs(20);

fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

/// Reads events until the decoded stdout so far contains `needle`; returns the events read.
async fn read_until(stream: &mut EventStream, events: &mut Vec<Value>, needle: &str) {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if String::from_utf8_lossy(&output(events, "stdout")).contains(needle) {
                return;
            }
            let event = stream.next().await.expect("the stream ended early");
            events.push(event);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{needle:?} never appeared: {:?}",
        String::from_utf8_lossy(&output(events, "stdout"))
    );
}

async fn stdin(daemon: &Runnerd, exec_id: &str, bytes: &[u8]) -> Value {
    let (status, reply) = daemon
        .client
        .json(
            Method::POST,
            &format!("/execs/{exec_id}/stdin"),
            Some(json!({"b64": b64(bytes)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    reply
}

async fn resize(daemon: &Runnerd, exec_id: &str, body: Value) -> (StatusCode, Value) {
    daemon
        .client
        .json(
            Method::POST,
            &format!("/execs/{exec_id}/resize"),
            Some(body),
        )
        .await
}

/// A pty exec has /dev/pts/N as its terminal at the asked size; a resize changes what `stty size`
/// reports; keystrokes arrive through raw stdin (echoed by the terminal); output comes as `stdout`
/// only; and a reader that reconnects from its last seq gets exactly the bytes a full replay has.
#[tokio::test(flavor = "multi_thread")]
async fn pty_exec_terminal_resize_keys_and_replay() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut stream = daemon
        .client
        .exec_stream(json!({
            "execId": "term",
            "shell": "tty; stty size; read line; stty size; echo \"got:$line\"; [ -t 0 ] && echo stdin-is-tty",
            "pty": {"cols": 91, "rows": 17},
        }))
        .await;
    let mut events = Vec::new();
    read_until(&mut stream, &mut events, "17 91").await;
    let text = String::from_utf8_lossy(&output(&events, "stdout")).into_owned();
    assert!(
        text.lines().next().unwrap().trim().starts_with("/dev/pts/"),
        "tty names the pty: {text:?}"
    );
    // The first reader goes away mid-exec; the rest is read by a new one from its last seq.
    let last_seq = events.last().unwrap()["seq"].as_u64().unwrap();
    drop(stream);

    let (status, reply) = resize(&daemon, "term", json!({"cols": 120, "rows": 40})).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"ok": true})));
    assert_eq!(
        stdin(&daemon, "term", b"hello\r").await,
        json!({"ok": true})
    );

    let rest = daemon
        .client
        .attach("term", last_seq)
        .await
        .unwrap()
        .collect_all()
        .await;
    let exit = terminal(&rest);
    assert_eq!(
        (exit["t"].clone(), exit["exitCode"].clone()),
        (json!("exit"), json!(0))
    );
    let mut resumed = output(&events, "stdout");
    resumed.extend(output(&rest, "stdout"));
    let text = String::from_utf8_lossy(&resumed).into_owned();
    assert!(
        text.contains("40 120"),
        "the resize reached the terminal: {text:?}"
    );
    assert!(
        text.contains("hello\r\n"),
        "the terminal echoed the keys: {text:?}"
    );
    assert!(text.contains("got:hello"), "{text:?}");
    assert!(text.contains("stdin-is-tty"), "{text:?}");
    assert!(
        rest.iter().chain(&events).all(|e| e["t"] != "stderr"),
        "a pty has one output stream"
    );

    let replay = daemon
        .client
        .attach("term", 0)
        .await
        .unwrap()
        .collect_all()
        .await;
    assert_eq!(output(&replay, "stdout"), resumed, "byte-exact replay");
    let listed = daemon.client.json(Method::GET, "/execs", None).await.1;
    assert_eq!(listed["execs"][0]["pty"], json!(true));

    // Once the exec ended, there is no terminal to resize.
    let (_, reply) = resize(&daemon, "term", json!({"cols": 10, "rows": 10})).await;
    assert_eq!(reply, json!({"ok": false, "reason": "NOT_FOUND"}));
}

/// Ctrl-C typed into a pty interrupts the foreground program (exit 130), as in a real terminal.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_interrupts_the_foreground_program() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut stream = daemon
        .client
        .exec_stream(json!({
            "execId": "sleeper",
            "shell": "echo ready; exec sleep 100",
            "pty": {"cols": 80, "rows": 24},
        }))
        .await;
    let mut events = Vec::new();
    read_until(&mut stream, &mut events, "ready").await;
    // `exec` may not have replaced the shell yet: either way SIGINT ends the foreground group.
    assert_eq!(
        stdin(&daemon, "sleeper", b"\x03").await,
        json!({"ok": true})
    );
    while let Some(event) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        events.push(event);
    }
    let exit = terminal(&events);
    assert_eq!(exit["exitCode"], json!(130), "{events:?}");
    assert_eq!(exit["cancelled"], json!(false));
}

/// Keys typed into a pty exec restart its sliding deadline, as an attach does: a shell in use
/// outlives its `timeoutMs`; left alone, it times out.
#[tokio::test(flavor = "multi_thread")]
async fn typing_restarts_the_deadline() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut stream = daemon
        .client
        .exec_stream(json!({
            "execId": "typed",
            "shell": "echo ready; sleep 3; echo survived; sleep 100",
            "pty": {"cols": 80, "rows": 24},
            "timeoutMs": 1000,
        }))
        .await;
    let mut events = Vec::new();
    read_until(&mut stream, &mut events, "ready").await;
    // A key every 300 ms (the pace of the typing, not a wait for anything) until the sleep is over.
    let mut keys = tokio::time::interval(Duration::from_millis(300));
    while !String::from_utf8_lossy(&output(&events, "stdout")).contains("survived") {
        tokio::select! {
            _ = keys.tick() => {
                assert_eq!(stdin(&daemon, "typed", b"x").await, json!({"ok": true}));
            }
            event = stream.next() => events.push(event.expect("the exec ended while typed at")),
        }
    }
    // No more keys: the deadline ends it.
    while let Some(event) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        events.push(event);
    }
    let exit = terminal(&events);
    assert_eq!(exit["timedOut"], json!(true), "{events:?}");
}

/// Cancel still ends every process a pty exec started, also one that left its session.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_the_whole_pty_tree() {
    let daemon = Runnerd::start(Options::default()).await;
    let marker = "1234.25";
    let mut stream = daemon
        .client
        .exec_stream(json!({
            "execId": "tree",
            "shell": format!("setsid sleep {marker} & echo spawned; wait"),
            "pty": {"cols": 80, "rows": 24},
        }))
        .await;
    let mut events = Vec::new();
    read_until(&mut stream, &mut events, "spawned").await;
    assert!(!processes_with(marker).is_empty());
    let (_, reply) = daemon
        .client
        .json(Method::POST, "/execs/tree/cancel", None)
        .await;
    assert_eq!(reply, json!({"killed": true}));
    while let Some(event) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        events.push(event);
    }
    assert_eq!(terminal(&events)["cancelled"], json!(true));
    assert!(
        poll(WAIT, async || processes_with(marker)
            .is_empty()
            .then_some(()))
        .await
        .is_some(),
        "the detached child was ended too"
    );
}

/// Raw stdin on pipes takes bytes a JSON-line exec refuses (no newline, not JSON, binary); the
/// line rule stays for `hold`; resize refuses an exec without a pty and bad sizes.
#[tokio::test(flavor = "multi_thread")]
async fn raw_stdin_and_resize_refusals() {
    let daemon = Runnerd::start(Options::default()).await;
    let raw = daemon
        .client
        .exec_stream(json!({"execId": "raw", "command": ["cat"], "stdinMode": "raw"}))
        .await;
    let held = daemon
        .client
        .exec_stream(json!({"execId": "held", "command": ["cat"], "stdinMode": "hold"}))
        .await;
    assert_eq!(stdin(&daemon, "raw", b"hello").await, json!({"ok": true}));
    assert_eq!(
        stdin(&daemon, "raw", b" \xff\x00 world\n").await,
        json!({"ok": true})
    );
    assert_eq!(
        stdin(&daemon, "held", b"hello").await,
        json!({"ok": false, "reason": "BAD_LINE"})
    );
    let too_large = vec![b'a'; 1024 * 1024 + 1];
    assert_eq!(
        stdin(&daemon, "raw", &too_large).await,
        json!({"ok": false, "reason": "TOO_LARGE"})
    );
    let (_, reply) = resize(&daemon, "held", json!({"cols": 80, "rows": 24})).await;
    assert_eq!(reply, json!({"ok": false, "reason": "NOT_A_TERMINAL"}));
    let (_, reply) = resize(&daemon, "nope", json!({"cols": 80, "rows": 24})).await;
    assert_eq!(reply, json!({"ok": false, "reason": "NOT_FOUND"}));
    let (status, reply) = resize(&daemon, "held", json!({"cols": 0, "rows": 24})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["error"], "bad_request");
    for id in ["raw", "held"] {
        let (_, reply) = daemon
            .client
            .json(
                Method::POST,
                &format!("/execs/{id}/stdin"),
                Some(json!({"eof": true})),
            )
            .await;
        assert_eq!(reply, json!({"ok": true}));
    }
    let events = raw.collect_all().await;
    assert_eq!(terminal(&events)["exitCode"], json!(0));
    assert_eq!(output(&events, "stdout"), b"hello \xff\x00 world\n");
    assert_eq!(output(&held.collect_all().await, "stdout"), b"");
}

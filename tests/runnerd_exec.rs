//! End-to-end: the real `tale runnerd` (as a child subreaper) driven over HTTP — streaming, replay,
//! cancel, deadlines, caps, stdin, env, and the privilege drop.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use support::runnerd::{output, poll, processes_with, terminal, Options, Runnerd, TOKEN};

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// 20 MiB of random binary output arrives byte-exact, far beyond the in-memory journal tail.
#[tokio::test(flavor = "multi_thread")]
async fn binary_output_is_byte_exact() {
    let daemon = Runnerd::start(Options::default()).await;
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    daemon.write_file("blob.bin", &data);
    let events = daemon
        .client
        .exec(json!({"execId": "blob", "command": ["cat", "blob.bin"], "timeoutMs": 60000}))
        .await;
    let exit = terminal(&events);
    assert_eq!(exit["t"], "exit");
    assert_eq!(exit["exitCode"], 0);
    assert_eq!(sha256(&output(&events, "stdout")), sha256(&data));
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq counts from 1 without holes"
    );
}

/// stdout and stderr each keep their own order when interleaved.
#[tokio::test(flavor = "multi_thread")]
async fn interleaved_streams_keep_their_order() {
    let daemon = Runnerd::start(Options::default()).await;
    let events = daemon
        .client
        .exec(json!({"execId": "il", "shell": "i=1; while [ $i -le 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done", "timeoutMs": 60000}))
        .await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    let want = |p: &str| (1..=3000).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(
        String::from_utf8(output(&events, "stdout")).unwrap(),
        want("out")
    );
    assert_eq!(
        String::from_utf8(output(&events, "stderr")).unwrap(),
        want("err")
    );
}

/// A consumer that disconnects mid-stream reattaches with sinceSeq and loses nothing, even with
/// output well beyond the in-memory tail.
#[tokio::test(flavor = "multi_thread")]
async fn reattach_after_disconnect_is_lossless() {
    let daemon = Runnerd::start(Options::default()).await;
    let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    daemon.write_file("data.bin", &data);
    // Slow enough that the first reader leaves while the exec is still producing.
    let mut stream = daemon
        .client
        .exec_stream(json!({"execId": "re", "shell": "sleep 0.3; cat data.bin; sleep 0.2; cat data.bin", "timeoutMs": 60000}))
        .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(stream.next().await.unwrap());
    }
    drop(stream);
    let last_seq = seen.last().unwrap()["seq"].as_u64().unwrap();
    // Wait for the exec to finish while nobody reads.
    let exited = poll(Duration::from_secs(30), async || {
        let (_, status) = daemon.client.json(Method::GET, "/execs/re", None).await;
        (status["state"] == "exited").then_some(status)
    })
    .await
    .expect("exec finished");
    assert_eq!(exited["exitCode"], 0);
    let rest = daemon
        .client
        .attach("re", last_seq)
        .await
        .unwrap()
        .collect_all()
        .await;
    assert!(rest.iter().all(|e| e["t"] != "gap"), "no gap within budget");
    assert_eq!(rest[0]["seq"].as_u64().unwrap(), last_seq + 1);
    let mut all = seen;
    all.extend(rest);
    let mut want = data.clone();
    want.extend_from_slice(&data);
    assert_eq!(sha256(&output(&all, "stdout")), sha256(&want));
    assert_eq!(terminal(&all)["t"], "exit");
    // A fresh attach from 0 replays the whole exec again.
    let full = daemon
        .client
        .attach("re", 0)
        .await
        .unwrap()
        .collect_all()
        .await;
    assert_eq!(full[0]["t"], "start");
    assert_eq!(sha256(&output(&full, "stdout")), sha256(&want));
}

/// Beyond the per-exec spool budget a late reader gets an explicit gap, never silent loss.
#[tokio::test(flavor = "multi_thread")]
async fn eviction_beyond_budget_is_an_explicit_gap() {
    let daemon = Runnerd::start(Options {
        args: vec![
            "--journal-memory-bytes".into(),
            "65536".into(),
            "--journal-exec-spool-bytes".into(),
            "1048576".into(),
        ],
        ..Options::default()
    })
    .await;
    let events = daemon
        .client
        .exec(json!({"execId": "big", "shell": "head -c 20000000 /dev/zero", "timeoutMs": 60000}))
        .await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    let late = daemon
        .client
        .attach("big", 0)
        .await
        .unwrap()
        .collect_all()
        .await;
    let gap = late.iter().find(|e| e["t"] == "gap").expect("a gap event");
    assert_eq!(gap["fromSeq"], 1);
    let to_seq = gap["toSeq"].as_u64().unwrap();
    let after: Vec<u64> = late
        .iter()
        .skip_while(|e| e["t"] != "gap")
        .skip(1)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        after[0],
        to_seq + 1,
        "the stream resumes right after the gap"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(terminal(&late)["t"], "exit");
}

/// Cancel kills the whole tree, including a grandchild that ignores SIGTERM; nothing is left.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_whole_tree() {
    let daemon = Runnerd::start(Options::default()).await;
    let marker = format!("{}", 900000 + std::process::id() % 99999);
    let mut stream = daemon
        .client
        .exec_stream(json!({"execId": "tree", "shell": format!(
            "sleep {marker} & (sleep {marker} &) ; sh -c 'trap \"\" TERM; sleep {marker}' & echo started; wait"
        ), "timeoutMs": 60000}))
        .await;
    while stream.next().await.unwrap()["t"] != "stdout" {}
    let running = poll(Duration::from_secs(5), async || {
        (processes_with(&format!("sleep\0{marker}\0")).len() == 3).then_some(())
    })
    .await;
    assert!(running.is_some(), "three sleeps running");
    let (status, body) = daemon
        .client
        .json(Method::POST, "/execs/tree/cancel", None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"killed": true})));
    let rest = stream.collect_all().await;
    let exit = terminal(&rest);
    assert_eq!(exit["cancelled"], true);
    let gone = poll(Duration::from_secs(15), async || {
        processes_with(&format!("sleep\0{marker}\0"))
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "left: {:?}",
        processes_with(&format!("sleep\0{marker}\0"))
    );
    let (_, again) = daemon
        .client
        .json(Method::POST, "/execs/tree/cancel", None)
        .await;
    assert_eq!(again, json!({"killed": false}));
}

/// The deadline terminates the group: timedOut, exit code 128+SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn deadline_times_out() {
    let daemon = Runnerd::start(Options::default()).await;
    let events = daemon
        .client
        .exec(json!({"execId": "slow", "command": ["sleep", "30"], "timeoutMs": 300}))
        .await;
    let exit = terminal(&events);
    assert_eq!(exit["timedOut"], true);
    assert_eq!(exit["cancelled"], false);
    assert_eq!(exit["exitCode"], 143);
    assert!(exit["durationMs"].as_u64().unwrap() < 10_000);
}

/// Output caps clip exactly at the cap and say so; the process runs to its end.
#[tokio::test(flavor = "multi_thread")]
async fn output_caps_clip_exactly() {
    let daemon = Runnerd::start(Options::default()).await;
    let events = daemon
        .client
        .exec(json!({"execId": "cap", "shell": "head -c 100000 /dev/zero; head -c 10 /dev/zero >&2; echo done > marker.txt",
                     "timeoutMs": 60000, "stdoutMaxBytes": 12345, "stderrMaxBytes": 10}))
        .await;
    let exit = terminal(&events);
    assert_eq!(output(&events, "stdout").len(), 12345);
    assert_eq!(output(&events, "stderr").len(), 10);
    assert_eq!(exit["truncated"], json!({"stdout": true, "stderr": false}));
    assert_eq!(
        std::fs::read_to_string(daemon.root.join("marker.txt")).unwrap(),
        "done\n"
    );
}

/// Held stdin takes JSON lines, refuses others, and closes on eof.
#[tokio::test(flavor = "multi_thread")]
async fn held_stdin_steers_the_process() {
    let b64 = |s: &str| base64_simd::STANDARD.encode_to_string(s);
    let daemon = Runnerd::start(Options::default()).await;
    let stream = daemon
        .client
        .exec_stream(json!({"execId": "cat", "command": ["sh", "-c", "cat; exec sleep 30"], "stdinMode": "hold",
                             "stdinBase64": b64("{\"n\":1}\n"), "timeoutMs": 60000}))
        .await;
    let send = |body: serde_json::Value| {
        let client = daemon.client.clone();
        async move {
            client
                .json(Method::POST, "/execs/cat/stdin", Some(body))
                .await
        }
    };
    assert_eq!(
        send(json!({"b64": b64("{\"n\":2}\n")})).await,
        (StatusCode::OK, json!({"ok": true}))
    );
    assert_eq!(
        send(json!({"b64": b64("not json\n")})).await.1,
        json!({"ok": false, "reason": "BAD_LINE"})
    );
    assert_eq!(
        send(json!({"b64": b64("{}\n{}\n")})).await.1["reason"],
        "BAD_LINE"
    );
    assert_eq!(
        send(json!({"b64": b64("{\"n\":3}\n"), "eof": true}))
            .await
            .1,
        json!({"ok": true})
    );
    // Still running (sleeping), but its stdin is closed.
    assert_eq!(
        send(json!({"b64": b64("{}\n")})).await.1["reason"],
        "STDIN_CLOSED"
    );
    // Cancel only once cat has echoed everything (a SIGTERM could otherwise beat its last write).
    let echoed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut attach = daemon
            .client
            .attach("cat", 0)
            .await
            .expect("the exec is live");
        let mut seen = Vec::new();
        while !seen.ends_with(b"{\"n\":3}\n") {
            let event = attach.next().await.expect("the exec is still running");
            seen.extend(output(std::slice::from_ref(&event), "stdout"));
        }
    })
    .await;
    assert!(echoed.is_ok(), "cat echoed the three lines");
    daemon
        .client
        .json(Method::POST, "/execs/cat/cancel", None)
        .await;
    let events = stream.collect_all().await;
    assert_eq!(terminal(&events)["cancelled"], true);
    assert_eq!(
        output(&events, "stdout"),
        b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
    );
    assert_eq!(
        send(json!({"b64": b64("{}\n")})).await.1["reason"],
        "NOT_FOUND"
    );
    // Close mode: the initial bytes, then EOF.
    let events = daemon
        .client
        .exec(json!({"execId": "wc", "command": ["wc", "-c"], "stdinBase64": b64("12345"), "timeoutMs": 60000}))
        .await;
    assert_eq!(
        String::from_utf8(output(&events, "stdout")).unwrap().trim(),
        "5"
    );
}

/// Env layers: store < overlay; deny-listed names refused; runnerd's token never reaches an exec,
/// neither in its environment nor through /proc of the daemon.
#[tokio::test(flavor = "multi_thread")]
async fn env_layers_and_the_token_stays_private() {
    let daemon = Runnerd::start(Options::default()).await;
    let (status, reply) = daemon
        .client
        .json(
            Method::POST,
            "/env",
            Some(json!({"set": {"A": "store", "B": "store", "PATH": "/x"}, "unset": ["HOME"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, json!({"ok": true, "denied": ["PATH", "HOME"]}));
    let pid = daemon.daemon_pid();
    let events = daemon
        .client
        .exec(json!({"execId": "env", "shell": format!("echo A=$A B=$B HOME=$HOME; id -u; env; cat /proc/{pid}/environ; echo rc=$?"),
                     "env": {"B": "overlay", "TALE_RUNNERD_TOKEN": "x"}, "timeoutMs": 60000}))
        .await;
    let stdout = String::from_utf8(output(&events, "stdout")).unwrap();
    let stderr = String::from_utf8(output(&events, "stderr")).unwrap();
    assert!(
        stdout.starts_with(&format!(
            "A=store B=overlay HOME={}/.home\n10001\n",
            daemon.root.display()
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "token leaked: {stdout}{stderr}"
    );
    assert!(!stdout.contains("TALE_RUNNERD_TOKEN"), "{stdout}");
    assert!(stdout.contains("TALE_EXEC_ID=env"));
    assert!(
        stdout.trim_end().ends_with("rc=1"),
        "reading /proc/<runnerd>/environ must fail: {stdout}"
    );
    // Unset removes from the store.
    daemon
        .client
        .json(Method::POST, "/env", Some(json!({"unset": ["A"]})))
        .await;
    let events = daemon
        .client
        .exec(json!({"execId": "env2", "shell": "echo A=$A", "timeoutMs": 60000}))
        .await;
    assert_eq!(output(&events, "stdout"), b"A=\n");
}

/// Status of running, exited, spawn-failed and unknown execs; the live cap; duplicate ids.
#[tokio::test(flavor = "multi_thread")]
async fn status_limits_and_duplicates() {
    let daemon = Runnerd::start(Options {
        args: vec!["--max-live-execs".into(), "2".into()],
        ..Options::default()
    })
    .await;
    let mut first = daemon
        .client
        .exec_stream(json!({"execId": "s1", "command": ["sleep", "30"], "timeoutMs": 60000}))
        .await;
    assert_eq!(first.next().await.unwrap()["t"], "start");
    let (status, body) = daemon.client.json(Method::GET, "/execs/s1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "running");
    assert!(body["startedAtMs"].as_u64().unwrap() > 0);
    let dup = daemon
        .client
        .exec(json!({"execId": "s1", "command": ["true"], "timeoutMs": 1000}))
        .await;
    assert_eq!(
        dup,
        vec![json!({"t": "fail", "code": "DUPLICATE_EXEC", "message": "s1"})]
    );
    let mut second = daemon
        .client
        .exec_stream(json!({"execId": "s2", "command": ["sleep", "30"], "timeoutMs": 60000}))
        .await;
    assert_eq!(second.next().await.unwrap()["t"], "start");
    let full = daemon
        .client
        .exec(json!({"execId": "s3", "command": ["true"], "timeoutMs": 1000}))
        .await;
    assert_eq!(
        full,
        vec![json!({"t": "fail", "code": "EXEC_LIMIT", "message": "live exec cap 2 reached"})]
    );
    assert_eq!(daemon.client.health().await["liveExecs"], 2);
    for id in ["s1", "s2"] {
        daemon
            .client
            .json(Method::POST, &format!("/execs/{id}/cancel"), None)
            .await;
    }
    first.collect_all().await;
    second.collect_all().await;
    let (status, body) = daemon.client.json(Method::GET, "/execs/s1", None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"execId": "s1", "state": "exited", "exitCode": 143})
        )
    );
    let (status, body) = daemon.client.json(Method::GET, "/execs/nope", None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"execId": "nope", "state": "gone"})
        )
    );
    let failed = daemon
        .client
        .exec(json!({"execId": "nf", "command": ["/no/such/binary"], "timeoutMs": 1000}))
        .await;
    assert_eq!(failed[0]["t"], "start");
    assert_eq!(failed[1]["t"], "fail");
    assert_eq!(failed[1]["code"], "BAD_REQUEST");
    assert_eq!(failed[1]["seq"], 2);
    assert!(failed[1]["message"]
        .as_str()
        .unwrap()
        .starts_with("spawn failed: "));
    let (_, body) = daemon.client.json(Method::GET, "/execs/nf", None).await;
    assert_eq!(
        body,
        json!({"execId": "nf", "state": "exited", "exitCode": null})
    );
}

/// The shell form is a login shell (bash when present) and runs in the requested cwd.
#[tokio::test(flavor = "multi_thread")]
async fn shell_form_and_cwd() {
    let daemon = Runnerd::start(Options::default()).await;
    std::fs::create_dir_all(daemon.root.join("repo/sub")).unwrap();
    let events = daemon
        .client
        .exec(json!({"execId": "sh", "shell": "pwd; shopt -q login_shell && echo login", "cwd": "repo/sub", "timeoutMs": 60000}))
        .await;
    assert_eq!(
        String::from_utf8(output(&events, "stdout")).unwrap(),
        format!("{}/repo/sub\nlogin\n", daemon.root.display())
    );
}

/// A token file works as well as the env var; the file's trailing newline is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn token_from_file() {
    let daemon = Runnerd::start(Options {
        token_file: true,
        ..Options::default()
    })
    .await;
    assert_eq!(daemon.client.health().await["ok"], true);
}

/// Given only the token's SHA-256 (what the Docker backend does), runnerd accepts the token and
/// nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn token_by_digest() {
    let digest = tale::shared::hmac::sha256_hex(TOKEN.as_bytes());
    let daemon = Runnerd::start(Options {
        env: vec![("TALE_RUNNERD_TOKEN_SHA256".into(), digest.clone())],
        ..Options::default()
    })
    .await;
    assert_eq!(daemon.client.health().await["ok"], true);
    let (status, _) = daemon
        .client
        .http_with_token(Method::GET, "/healthz", &digest)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the digest itself is not a token"
    );
}

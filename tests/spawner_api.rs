//! End-to-end: the real `tale spawner` on the local backend — every route, SSE grammar, auth, the
//! bad-input table, caps, sweep to stop and resume, kill -9 and re-adopt, and the operator CLI.
mod support;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::runnerd::poll;
use support::spawner::{now_ms, result, stdout_text, SpawnerProcess, SANDBOX_TOKEN};

fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

/// Create, exec (SSE with ids and collected output), attach replay, status, env, files, stdin, pin,
/// list, get, destroy — the whole session life on one spawner.
#[tokio::test(flavor = "multi_thread")]
async fn session_lifecycle() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    let (status, health) = c.raw(Method::GET, "/health", None, false).await.unwrap();
    assert_eq!((status, &health["status"]), (StatusCode::OK, &json!("ok")));

    let (status, created) = c
        .json(Method::POST, "/v1/sessions", Some(json!({"sessionId": "life", "organizationId": "org1", "env": {"GREETING": "hello", "PATH": "/evil"}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let session = &created["session"];
    assert_eq!(
        (
            &session["sessionId"],
            &session["state"],
            &session["backend"],
            &session["pinned"]
        ),
        (
            &json!("life"),
            &json!("ready"),
            &json!("local"),
            &json!(false)
        )
    );
    assert_eq!(
        session["expiresAtMs"].as_u64().unwrap() - session["createdAtMs"].as_u64().unwrap(),
        86_400_000
    );

    let (status, stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/life/exec",
            Some(json!({"execId": "e1", "shell": "echo $GREETING; echo oops >&2; exit 3"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = stream.collect_all().await;
    assert_eq!(events[0].event, "phase");
    assert_eq!(events[0].data, r#"{"phase":"running"}"#);
    assert_eq!(events[0].id.as_deref(), Some("1"));
    assert_eq!(stdout_text(&events), "hello\n");
    let r = result(&events);
    assert_eq!(
        (&r["status"], &r["exitCode"], &r["reason"]),
        (&json!("failed"), &json!(3), &json!("failed"))
    );
    assert_eq!(r["stdoutBase64"], b64(b"hello\n"));
    assert_eq!(r["stderrBase64"], b64(b"oops\n"));
    for event in events
        .iter()
        .filter(|e| e.event == "stdout" || e.event == "stderr")
    {
        let seq = serde_json::from_str::<Value>(&event.data).unwrap()["seq"]
            .as_u64()
            .unwrap();
        assert_eq!(
            event.id.as_deref(),
            Some(seq.to_string().as_str()),
            "SSE id is the seq"
        );
    }

    // Attach replays from sinceSeq, or from Last-Event-ID; results carry empty buffers.
    let (_, stream) = c
        .sse(
            Method::GET,
            "/v1/sessions/life/exec/e1/attach?sinceSeq=1",
            None,
            &[],
        )
        .await;
    let replay = stream.collect_all().await;
    assert!(replay.iter().all(|e| e.event != "phase"), "{replay:?}");
    assert_eq!(stdout_text(&replay), "hello\n");
    assert_eq!(result(&replay)["stdoutBase64"], "");
    let (_, stream) = c
        .sse(
            Method::GET,
            "/v1/sessions/life/exec/e1/attach",
            None,
            &[("last-event-id", "3")],
        )
        .await;
    let resumed = stream.collect_all().await;
    assert_eq!(
        resumed.len(),
        1,
        "only the result follows seq 3: {resumed:?}"
    );
    assert_eq!(resumed[0].event, "result");
    let (_, stream) = c
        .sse(Method::GET, "/v1/sessions/life/exec/nope/attach", None, &[])
        .await;
    let missing = stream.collect_all().await;
    assert_eq!(missing[0].event, "error");
    assert_eq!(missing[0].data, r#"{"message":"exec nope not found"}"#);

    assert_eq!(
        c.json(Method::GET, "/v1/sessions/life/exec/e1", None).await,
        (
            StatusCode::OK,
            json!({"execId": "e1", "state": "exited", "exitCode": 3})
        )
    );
    assert_eq!(
        c.json(Method::GET, "/v1/sessions/life/exec/zz", None).await,
        (
            StatusCode::NOT_FOUND,
            json!({"execId": "zz", "state": "gone"})
        )
    );

    let (status, reply) = c
        .json(
            Method::PATCH,
            "/v1/sessions/life/env",
            Some(json!({"set": {"X": "1", "HOME": "/x"}, "unset": ["GREETING"]})),
        )
        .await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"ok": true, "denied": ["HOME"]}))
    );

    let (status, staged) = c
        .json(
            Method::POST,
            "/v1/sessions/life/files/stage",
            Some(json!({"files": [{"path": "in/a.txt", "contentBase64": b64(b"data")}]})),
        )
        .await;
    assert_eq!(
        (status, staged),
        (
            StatusCode::OK,
            json!({"staged": [{"path": "in/a.txt", "bytes": 4}], "skipped": []})
        )
    );
    let (status, listing) = c
        .json(Method::GET, "/v1/sessions/life/files?path=in", None)
        .await;
    assert_eq!(
        (status, &listing["entries"][0]["name"]),
        (StatusCode::OK, &json!("a.txt"))
    );
    let response = c
        .send(c.request(
            Method::GET,
            "/v1/sessions/life/files/content?path=in%2Fa.txt",
            Bytes::new(),
            true,
        ))
        .await;
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    use http_body_util::BodyExt;
    assert_eq!(
        &response.into_body().collect().await.unwrap().to_bytes()[..],
        b"data"
    );
    assert_eq!(
        c.json(Method::GET, "/v1/sessions/life/files?path=missing", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.json(
            Method::GET,
            "/v1/sessions/life/files/content?path=missing",
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, deleted) = c
        .json(
            Method::POST,
            "/v1/sessions/life/files/delete",
            Some(json!({"paths": ["in"]})),
        )
        .await;
    assert_eq!(deleted, json!({"deleted": ["in"], "skipped": []}));

    // Held stdin, steered through the spawner.
    let (_, mut stream) = c
        .sse(Method::POST, "/v1/sessions/life/exec", Some(json!({"execId": "steer", "command": ["cat"], "stdinMode": "hold", "collectOutput": false})), &[])
        .await;
    assert_eq!(stream.next().await.unwrap().event, "phase");
    let (status, reply) = c
        .json(
            Method::POST,
            "/v1/sessions/life/exec/steer/stdin",
            Some(json!({"b64": b64(b"{\"a\":1}\n"), "eof": true})),
        )
        .await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"ok": true})));
    let rest = stream.collect_all().await;
    assert_eq!(stdout_text(&rest), "{\"a\":1}\n");
    assert_eq!(
        result(&rest)["stdoutBase64"],
        "",
        "collectOutput:false accumulates nothing"
    );
    assert_eq!(
        c.json(
            Method::POST,
            "/v1/sessions/life/exec/steer/stdin",
            Some(json!({"b64": 5}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );

    // Cancel through the spawner.
    let (_, mut stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/life/exec",
            Some(json!({"execId": "long", "command": ["sleep", "60"]})),
            &[],
        )
        .await;
    assert_eq!(stream.next().await.unwrap().event, "phase");
    assert_eq!(
        c.json(Method::POST, "/v1/sessions/life/exec/long/cancel", None)
            .await,
        (StatusCode::OK, json!({"killed": true}))
    );
    let r = result(&stream.collect_all().await);
    assert_eq!(
        (&r["status"], &r["reason"]),
        (&json!("cancelled"), &json!("cancelled"))
    );

    assert_eq!(
        c.json(
            Method::PATCH,
            "/v1/sessions/life/pin",
            Some(json!({"pinned": true}))
        )
        .await,
        (StatusCode::OK, json!({"ok": true, "pinned": true}))
    );
    assert_eq!(
        c.json(
            Method::PATCH,
            "/v1/sessions/life/pin",
            Some(json!({"pinned": "yes"}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let (_, listed) = c
        .json(Method::GET, "/v1/sessions?organizationId=org1", None)
        .await;
    assert_eq!(listed["sessions"][0]["pinned"], true);
    assert_eq!(
        c.json(Method::GET, "/v1/sessions?organizationId=other", None)
            .await
            .1,
        json!({"sessions": []})
    );
    let (status, got) = c.json(Method::GET, "/v1/sessions/life", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        got["session"]["lastActivityAtMs"].as_u64().unwrap()
            > session["createdAtMs"].as_u64().unwrap(),
        "activity clock comes from runnerd"
    );

    // if_idle refuses while an exec runs.
    let (_, mut busy_stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/life/exec",
            Some(json!({"execId": "busy", "command": ["sleep", "60"]})),
            &[],
        )
        .await;
    assert_eq!(busy_stream.next().await.unwrap().event, "phase");
    assert_eq!(
        c.json(Method::DELETE, "/v1/sessions/life?if_idle=1", None)
            .await,
        (StatusCode::OK, json!({"destroyed": false, "busy": true}))
    );
    assert_eq!(
        c.json(Method::DELETE, "/v1/sessions/life", None).await,
        (StatusCode::OK, json!({"destroyed": true, "busy": false}))
    );
    assert_eq!(
        c.json(Method::GET, "/v1/sessions/life", None).await,
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
    assert!(
        !spawner.root.join("sessions/ses-life").exists(),
        "destroy deletes the workspace"
    );
    let (_, metrics) = c.raw(Method::GET, "/metrics", None, false).await.unwrap();
    assert_eq!(metrics, Value::Null, "metrics are text, not JSON");
}

/// Signatures: missing, wrong, stale and replayed requests get 401; the legacy form without a nonce works.
#[tokio::test(flavor = "multi_thread")]
async fn request_signatures() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    let unauthorized = (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    assert_eq!(
        c.raw(Method::GET, "/v1/sessions", None, false)
            .await
            .unwrap(),
        unauthorized
    );
    let send = |sig: String, ts: String, nonce: Option<&str>| {
        let mut request = c.request(Method::GET, "/v1/sessions", Bytes::new(), false);
        request
            .headers_mut()
            .insert("x-tale-sandbox-signature", sig.parse().unwrap());
        request
            .headers_mut()
            .insert("x-tale-sandbox-timestamp", ts.parse().unwrap());
        if let Some(nonce) = nonce {
            request
                .headers_mut()
                .insert("x-tale-sandbox-nonce", nonce.parse().unwrap());
        }
        let c = c.clone();
        async move { c.send(request).await.status() }
    };
    let ts = now_ms().to_string();
    let legacy = tale::shared::hmac::sign_request(
        SANDBOX_TOKEN.as_bytes(),
        "GET",
        "/v1/sessions",
        &ts,
        None,
        b"",
    );
    assert_eq!(send(legacy.clone(), ts.clone(), None).await, StatusCode::OK);
    assert_eq!(
        send(legacy, ts.clone(), None).await,
        StatusCode::UNAUTHORIZED,
        "replay"
    );
    let wrong =
        tale::shared::hmac::sign_request(b"other-key", "GET", "/v1/sessions", &ts, Some("n"), b"");
    assert_eq!(
        send(wrong, ts.clone(), Some("n")).await,
        StatusCode::UNAUTHORIZED
    );
    let old = (now_ms() - 31_000).to_string();
    let stale = tale::shared::hmac::sign_request(
        SANDBOX_TOKEN.as_bytes(),
        "GET",
        "/v1/sessions",
        &old,
        Some("n"),
        b"",
    );
    assert_eq!(send(stale, old, Some("n")).await, StatusCode::UNAUTHORIZED);
    let other_path = tale::shared::hmac::sign_request(
        SANDBOX_TOKEN.as_bytes(),
        "GET",
        "/v1/sessions?x=1",
        &ts,
        Some("m"),
        b"",
    );
    assert_eq!(
        send(other_path, ts, Some("m")).await,
        StatusCode::UNAUTHORIZED,
        "the query is signed"
    );
}

/// The bad-input table: malformed JSON, oversize bodies, bad ids, unknown sessions, duplicates, caps.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_and_caps() {
    let spawner = SpawnerProcess::local(&[
        ("SANDBOX_MAX_SESSIONS", "2"),
        ("SANDBOX_MAX_SESSIONS_PER_ORG", "1"),
    ])
    .await;
    let c = &spawner.client;
    let raw = |path: &'static str, body: &'static [u8]| {
        let c = c.clone();
        async move {
            c.raw(Method::POST, path, Some(Bytes::from_static(body)), true)
                .await
                .unwrap()
        }
    };
    let (status, body) = raw("/v1/sessions", b"{nope").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    for (body, message) in [
        (
            json!({"organizationId": "o"}),
            "sessionId must match ^[A-Za-z0-9_-]{1,64}$",
        ),
        (
            json!({"sessionId": "a b", "organizationId": "o"}),
            "sessionId must match ^[A-Za-z0-9_-]{1,64}$",
        ),
        (
            json!({"sessionId": "a", "organizationId": "o", "profile": "root"}),
            "profile must be \"default\" or \"agent\"",
        ),
        (
            json!({"sessionId": "a", "organizationId": "o", "env": {"A": 1}}),
            "env.A must be a string",
        ),
    ] {
        assert_eq!(
            c.json(Method::POST, "/v1/sessions", Some(body)).await,
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": message})
            )
        );
    }
    let big = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    let (status, body) = c
        .raw(Method::POST, "/v1/sessions", Some(big), true)
        .await
        .unwrap();
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("payload_too_large"))
    );
    for (method, path) in [
        (Method::GET, "/v1/sessions/ghost"),
        (Method::POST, "/v1/sessions/ghost/exec"),
        (Method::POST, "/v1/sessions/ghost/exec/e/cancel"),
        (Method::PATCH, "/v1/sessions/ghost/env"),
        (Method::GET, "/v1/sessions/ghost/files"),
        (Method::GET, "/v1/sessions/bad%20id"),
        (Method::GET, "/v1/nothing"),
    ] {
        assert_eq!(
            c.json(method, path, Some(json!({}))).await,
            (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            "{path}"
        );
    }
    c.create("one", "orgA").await;
    assert_eq!(
        c.json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "one", "organizationId": "orgA"}))
        )
        .await,
        (
            StatusCode::CONFLICT,
            json!({"error": "duplicate", "message": "session one exists"})
        )
    );
    let org_full = c
        .send(c.request(
            Method::POST,
            "/v1/sessions",
            Bytes::from(json!({"sessionId": "two", "organizationId": "orgA"}).to_string()),
            true,
        ))
        .await;
    assert_eq!(org_full.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(org_full.headers()["retry-after"], "10");
    c.create("two", "orgB").await;
    let (status, body) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "three", "organizationId": "orgC"})),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "session_quota", "message": "spawner session cap reached"})
        )
    );
    // Exec validation.
    for (body, message) in [
        (
            json!({"execId": "e"}),
            "exactly one of command or shell is required",
        ),
        (
            json!({"execId": "e", "command": "ls"}),
            "command must be a non-empty array of strings",
        ),
        (
            json!({"execId": "bad id", "shell": "true"}),
            "execId must match ^[A-Za-z0-9_-]{1,64}$",
        ),
    ] {
        assert_eq!(
            c.json(Method::POST, "/v1/sessions/one/exec", Some(body))
                .await,
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": message})
            )
        );
    }
    for id in ["one", "two"] {
        c.json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await;
    }
}

/// Split multi-byte characters never become U+FFFD in `text`.
#[tokio::test(flavor = "multi_thread")]
async fn utf8_split_across_chunks() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    c.create("utf", "o").await;
    let (_, stream) = c
        .sse(Method::POST, "/v1/sessions/utf/exec", Some(json!({"execId": "u", "shell": "printf '\\303'; sleep 0.2; printf '\\251\\360\\237'; sleep 0.2; printf '\\230\\200\\n'"})), &[])
        .await;
    let events = stream.collect_all().await;
    assert!(
        events.iter().filter(|e| e.event == "stdout").count() >= 2,
        "{events:?}"
    );
    assert_eq!(stdout_text(&events), "é😀\n");
    assert_resumes_whole(c, "/v1/sessions/utf/exec/u/attach", &events, "é😀\n").await;

    // A character held back before more stderr events than the attach's lookback: the resumed
    // stream decodes the exec from its start to rebuild it.
    let (_, stream) = c
        .sse(Method::POST, "/v1/sessions/utf/exec", Some(json!({"execId": "w", "shell": "printf '\\303'; for i in $(seq 40); do echo e >&2; sleep 0.02; done; printf '\\251!'"})), &[])
        .await;
    let events = stream.collect_all().await;
    let stderr_events = events.iter().filter(|e| e.event == "stderr").count();
    assert!(
        stderr_events > 20,
        "the cut outlives the lookback: {events:?}"
    );
    assert_resumes_whole(c, "/v1/sessions/utf/exec/w/attach", &events, "é!").await;
    c.json(Method::DELETE, "/v1/sessions/utf", None).await;
}

/// Resuming `attach` after each output event of `events` delivers the rest of `want` whole: no
/// U+FFFD, nothing cut, nothing repeated.
async fn assert_resumes_whole(
    c: &support::spawner::SpawnerClient,
    attach: &str,
    events: &[tale::shared::sse::SseEvent],
    want: &str,
) {
    for (n, event) in events.iter().enumerate() {
        if event.event != "stdout" && event.event != "stderr" {
            continue;
        }
        let id = event.id.clone().expect("stdout events carry an id");
        let (_, stream) = c
            .sse(Method::GET, attach, None, &[("last-event-id", &id)])
            .await;
        let resumed = stream.collect_all().await;
        let joined = stdout_text(&events[..=n]) + &stdout_text(&resumed);
        assert_eq!(joined, want, "resumed after {id}: {resumed:?}");
    }
}

/// The idle sweep stops a session (workspace kept); re-creating the same id resumes on it.
#[tokio::test(flavor = "multi_thread")]
async fn idle_sweep_stops_and_create_resumes() {
    let spawner = SpawnerProcess::local(&[("SANDBOX_SWEEP_INTERVAL_MS", "200")]).await;
    let c = &spawner.client;
    let (status, _) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": "sleepy", "organizationId": "o", "idleTimeoutMs": 1500})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/sleepy/exec",
            Some(json!({"execId": "w", "shell": "echo kept > note.txt"})),
            &[],
        )
        .await;
    assert_eq!(result(&stream.collect_all().await)["exitCode"], 0);
    // A live exec keeps the session alive past its idle limit.
    let (_, mut live) = c
        .sse(
            Method::POST,
            "/v1/sessions/sleepy/exec",
            Some(json!({"execId": "live", "command": ["sleep", "3"], "collectOutput": false})),
            &[],
        )
        .await;
    assert_eq!(live.next().await.unwrap().event, "phase");
    drop(live);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        c.json(Method::GET, "/v1/sessions/sleepy", None).await.0,
        StatusCode::OK,
        "alive while an exec runs"
    );
    let stopped = poll(Duration::from_secs(20), async || {
        (c.json(Method::GET, "/v1/sessions/sleepy", None).await.0 == StatusCode::NOT_FOUND)
            .then_some(())
    })
    .await;
    assert!(
        stopped.is_some(),
        "the idle sweep stopped the session:\n{}",
        spawner.log()
    );
    assert!(
        spawner.root.join("sessions/ses-sleepy/note.txt").exists(),
        "stop keeps the workspace"
    );
    c.create("sleepy", "o").await;
    let (_, stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/sleepy/exec",
            Some(json!({"execId": "r", "shell": "cat note.txt"})),
            &[],
        )
        .await;
    assert_eq!(stdout_text(&stream.collect_all().await), "kept\n");
    c.json(Method::DELETE, "/v1/sessions/sleepy", None).await;
}

/// kill -9 of the spawner mid-exec: the restarted spawner re-adopts the session, and an attach to
/// the exec that kept running replays it fully.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_then_readopt_and_lossless_attach() {
    let mut spawner = SpawnerProcess::local(&[]).await;
    spawner.client.create("survivor", "o").await;
    let (_, mut stream) = spawner
        .client
        .sse(Method::POST, "/v1/sessions/survivor/exec", Some(json!({"execId": "count", "shell": "i=1; while [ $i -le 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done", "collectOutput": false})), &[])
        .await;
    assert_eq!(stream.next().await.unwrap().event, "phase");
    spawner.kill9();
    drop(stream);
    spawner.restart().await;
    let c = &spawner.client;
    let (_, listed) = c.json(Method::GET, "/v1/sessions", None).await;
    assert_eq!(
        listed["sessions"][0]["sessionId"], "survivor",
        "re-adopted on boot"
    );
    let (_, stream) = c
        .sse(
            Method::GET,
            "/v1/sessions/survivor/exec/count/attach?sinceSeq=0",
            None,
            &[],
        )
        .await;
    let events = stream.collect_all().await;
    let want: String = (1..=40).map(|i| format!("line{i}\n")).collect();
    assert_eq!(stdout_text(&events), want);
    assert_eq!(result(&events)["exitCode"], 0);
    c.json(Method::DELETE, "/v1/sessions/survivor", None).await;
}

/// One-shot execute: staged files, streamed output, and the session is gone afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn one_shot_execute() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    let (status, stream) = c
        .sse(Method::POST, "/v1/execute", Some(json!({"shell": "cat in.txt; echo done", "files": [{"path": "in.txt", "contentBase64": b64(b"staged\n")}]})), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = stream.collect_all().await;
    assert_eq!(stdout_text(&events), "staged\ndone\n");
    assert_eq!(result(&events)["status"], "completed");
    let gone = poll(Duration::from_secs(10), async || {
        (c.json(Method::GET, "/v1/sessions", None).await.1 == json!({"sessions": []})).then_some(())
    })
    .await;
    assert!(gone.is_some());
    assert_eq!(
        c.json(Method::POST, "/v1/execute", Some(json!({"shell": ""})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

/// The operator CLI: create, exec (output and exit code), ls, rm — signed with SANDBOX_TOKEN.
#[tokio::test(flavor = "multi_thread")]
async fn operator_cli() {
    let spawner = SpawnerProcess::local(&[]).await;
    let url = format!("http://127.0.0.1:{}", spawner.port);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tale"))
            .arg("session")
            .args(args)
            .env("TALE_SPAWNER_URL", &url)
            .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
            .output()
            .unwrap()
    };
    let created = cli(&["create", "cli1", "--org", "ops", "--env", "WHO=operator"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let exec = cli(&["exec", "cli1", "echo hi $WHO; echo err >&2; exit 7"]);
    assert_eq!(exec.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "hi operator\n");
    // The CLI's own line (the exec id and how to attach) comes first on stderr.
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(stderr.starts_with("tale session: exec cli-"), "{stderr}");
    assert!(stderr.ends_with(")\nerr\n"), "{stderr}");
    let argv = cli(&["exec", "cli1", "--argv", "--", "printf", "%s-%s", "a", "b"]);
    assert_eq!(
        (
            argv.status.code(),
            String::from_utf8_lossy(&argv.stdout).to_string()
        ),
        (Some(0), "a-b".to_string())
    );
    let ls = cli(&["ls", "--org", "ops"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("\"cli1\""));
    let unsigned = std::process::Command::new(env!("CARGO_BIN_EXE_tale"))
        .args(["session", "ls"])
        .env("TALE_SPAWNER_URL", &url)
        .env_remove("SANDBOX_TOKEN")
        .output()
        .unwrap();
    // Without a token the CLI stops before sending (125) and says what to set.
    assert_eq!(unsigned.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("SANDBOX_TOKEN is not set"));
    assert!(cli(&["rm", "cli1"]).status.success());
}

//! End-to-end: the spawner's edge against strangers — nothing buffered before the signature's
//! shape and timestamp pass, a read deadline and a global budget for bodies in flight, connection
//! caps, exact signatures and replay closed across restarts, one error envelope, and an attach
//! after the end that sends no second result.
mod support;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use support::raw_http::{
    connect_from, forged_headers, post_head, raise_nofile, read_head, rss_bytes, signed_headers,
    BODY_BYTES,
};
use support::runnerd::poll;
use support::spawner::{now_ms, result, SpawnerProcess, SANDBOX_TOKEN};
use tale::shared::hmac::sign_request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Times one flooding connection comes back after the spawner closed it.
const MAX_ATTEMPTS: u32 = 3;

/// A request without well-formed signature headers or with a stale timestamp is answered 401 at
/// once, before the client sent a byte of its body (the old spawner waited for the body).
#[tokio::test(flavor = "multi_thread")]
async fn refused_before_any_body_byte() {
    let spawner = SpawnerProcess::local(&[]).await;
    let path = "/v1/sessions";
    let stale_ts = (now_ms() - 60_000).to_string();
    let good = signed_headers("POST", path, b"{}");
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        ("unsigned", vec![]),
        (
            "no timestamp",
            vec![("x-tale-sandbox-signature".into(), "ab".repeat(32))],
        ),
        (
            "signature with a plus",
            vec![
                (
                    "x-tale-sandbox-signature".into(),
                    format!("+{}", &"ab".repeat(32)[1..]),
                ),
                good[1].clone(),
            ],
        ),
        (
            "signature too short",
            vec![
                ("x-tale-sandbox-signature".into(), "ab".repeat(31)),
                good[1].clone(),
            ],
        ),
        (
            "stale timestamp",
            vec![
                ("x-tale-sandbox-signature".into(), "ab".repeat(32)),
                ("x-tale-sandbox-timestamp".into(), stale_ts),
            ],
        ),
    ];
    for (name, headers) in cases {
        let mut stream = connect_from([127, 0, 0, 1].into(), spawner.port)
            .await
            .unwrap();
        stream
            .write_all(post_head(path, BODY_BYTES, &headers).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{name}: no answer before the body"));
        assert!(head.starts_with("HTTP/1.1 401"), "{name}: {head}");
    }
}

/// 500 connections each holding a 2 MiB − 1 body, unsigned and with forged signatures, from 25
/// source addresses: the spawner's RSS stays under 96 MiB, a signed `GET /v1/sessions` is
/// answered throughout, and its memory is back within 16 MiB of idle within 10 s afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn body_flood_is_bounded() {
    raise_nofile(4096);
    let spawner = SpawnerProcess::local(&[("SANDBOX_BODY_READ_TIMEOUT_MS", "3000")]).await;
    let pid = spawner.pid().unwrap();
    // Warm up the paths a signed request takes, then take the idle figure.
    for _ in 0..3 {
        assert_eq!(
            spawner
                .client
                .json(Method::GET, "/v1/sessions", None)
                .await
                .0,
            StatusCode::OK
        );
    }
    let idle = rss_bytes(pid);
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let port = spawner.port;
    let flood_for = Duration::from_secs(8);
    let started = Instant::now();
    let mut attackers = Vec::new();
    for n in 0..500u32 {
        let body = body.clone();
        let source = IpAddr::from([127, 0, 1, (n % 25 + 1) as u8]);
        let forged = n % 2 == 1;
        attackers.push(tokio::spawn(async move {
            // Each connection sends its head and all of the body but the last byte, then holds;
            // when the spawner closes it (refused, busy, timed out) it comes back, until the end.
            let mut attempts = 0u32;
            while started.elapsed() < flood_for && attempts < MAX_ATTEMPTS {
                attempts += 1;
                let Ok(mut stream) = connect_from(source, port).await else {
                    continue;
                };
                let headers = if forged {
                    forged_headers("/v1/sessions")
                } else {
                    vec![]
                };
                let head = post_head("/v1/sessions", BODY_BYTES, &headers);
                if stream.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let remaining = flood_for.saturating_sub(started.elapsed());
                let _ = tokio::time::timeout(remaining, async {
                    if stream.write_all(&body[..BODY_BYTES - 1]).await.is_ok() {
                        let mut sink = [0u8; 1024];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                })
                .await;
            }
        }));
    }
    // The platform's client runs on its own thread and runtime, so the flood's tasks in this
    // process cannot starve it: what is measured is the spawner.
    let checker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = support::spawner::SpawnerClient::new(port);
            let (mut answered, mut slowest) = (0u32, Duration::ZERO);
            while started.elapsed() < flood_for {
                let asked = Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.json(Method::GET, "/v1/sessions", None),
                )
                .await;
                if !matches!(reply, Ok((StatusCode::OK, _))) {
                    return Err(format!(
                        "signed GET at {:?} into the flood: {reply:?} after {:?}",
                        started.elapsed(),
                        asked.elapsed()
                    ));
                }
                answered += 1;
                slowest = slowest.max(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok((answered, slowest))
        })
    });
    let mut peak = 0;
    while !checker.is_finished() {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (answered, slowest) = checker
        .join()
        .unwrap()
        .unwrap_or_else(|err| panic!("{err}"));
    for attacker in attackers {
        attacker.await.unwrap();
    }
    peak = peak.max(rss_bytes(pid));
    eprintln!(
        "idle RSS {} KiB, peak {} KiB, {answered} signed requests answered, slowest {slowest:?}",
        idle / 1024,
        peak / 1024
    );
    assert!(peak < 96 * 1024 * 1024, "peak RSS {} KiB", peak / 1024);
    let settled = poll(Duration::from_secs(10), async || {
        (rss_bytes(pid) <= idle + 16 * 1024 * 1024).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "RSS {} KiB is not back near idle {} KiB",
        rss_bytes(pid) / 1024,
        idle / 1024
    );
}

/// Per source address, only so many connections may wait unauthenticated; one that authenticated
/// no longer counts. Past the total cap every connection is refused. Refused connections are
/// closed without an answer.
#[tokio::test(flavor = "multi_thread")]
async fn connection_caps() {
    let spawner = SpawnerProcess::local(&[
        ("SANDBOX_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS", "4"),
        ("SANDBOX_MAX_CONNECTIONS", "8"),
    ])
    .await;
    let port = spawner.port;
    let source: IpAddr = [127, 0, 2, 1].into();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(source, port).await.unwrap());
    }
    // The fifth from the same address is closed unread.
    let closed_unread = async |source: IpAddr| {
        let mut stream = connect_from(source, port).await.unwrap();
        let _ = stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    // Accepts happen in order, so the held four are admitted before the next is looked at.
    let admitted = poll(Duration::from_secs(5), async || {
        closed_unread(source).await.then_some(())
    })
    .await;
    assert!(
        admitted.is_some(),
        "a fifth unauthenticated connection was served"
    );
    // Another address is not affected.
    let mut other = connect_from([127, 0, 2, 2].into(), port).await.unwrap();
    other
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut other, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A signed request on one of the held four frees its place.
    let get = |headers: Vec<(String, String)>| {
        let mut head = "GET /v1/sessions HTTP/1.1\r\nhost: x\r\n".to_string();
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head + "\r\n"
    };
    held[0]
        .write_all(get(signed_headers("GET", "/v1/sessions", b"")).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut held[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut fifth = connect_from(source, port).await.unwrap();
    fifth
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut fifth, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Open: 4 held + `other` + `fifth` = 6; two more from new addresses fill the total of 8.
    let _seventh = connect_from([127, 0, 2, 3].into(), port).await.unwrap();
    let _eighth = connect_from([127, 0, 2, 4].into(), port).await.unwrap();
    let full = poll(Duration::from_secs(5), async || {
        closed_unread([127, 0, 2, 5].into()).await.then_some(())
    })
    .await;
    assert!(full.is_some(), "a connection past the total cap was served");
}

/// A body that does not arrive within the deadline is refused with 408; when the in-flight budget
/// is taken, a signed body is refused at once with 503 and `retry-after`, and served once the
/// budget is free again.
#[tokio::test(flavor = "multi_thread")]
async fn body_deadline_and_budget() {
    let spawner = SpawnerProcess::local(&[
        // Long enough for the probes below to meet the hog under load (CI has 2 cores and runs
        // this suite's 500-connection tests alongside).
        ("SANDBOX_BODY_READ_TIMEOUT_MS", "15000"),
        ("SANDBOX_BODY_BUDGET_BYTES", &(2 * 1024 * 1024).to_string()),
    ])
    .await;
    let port = spawner.port;
    // A forged request holding (almost) the whole budget.
    let start_hog = async || {
        let mut hog = connect_from([127, 0, 3, 1].into(), port).await.unwrap();
        hog.write_all(
            post_head("/v1/sessions", BODY_BYTES, &forged_headers("/v1/sessions")).as_bytes(),
        )
        .await
        .unwrap();
        hog.write_all(&vec![b'x'; 1024]).await.unwrap();
        hog
    };
    let mut hog = start_hog().await;
    // Polling for the refusal is the wait for the spawner to take the hog's head. The probe's body
    // is invalid, so one that got through before the hog changes nothing.
    let body = br#"{}"#;
    let mut seen = Vec::new();
    let busy = poll(Duration::from_secs(10), async || {
        // A hog whose head arrived while a probe held its two bytes did not fit and was refused
        // at once (503, as it should be): send another.
        if read_head(&mut hog, Duration::from_millis(20))
            .await
            .is_some()
        {
            hog = start_hog().await;
        }
        let mut stream = connect_from([127, 0, 0, 1].into(), port).await.ok()?;
        let head = post_head(
            "/v1/sessions",
            body.len(),
            &signed_headers("POST", "/v1/sessions", body),
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        stream.write_all(body).await.ok()?;
        let head = read_head(&mut stream, Duration::from_secs(3)).await;
        seen.push(head.clone());
        head.filter(|head| head.starts_with("HTTP/1.1 503"))
    })
    .await;
    let Some(busy) = busy else {
        // What the hog itself got, if the spawner answered it (it should be held, not answered).
        let hog_head = read_head(&mut hog, Duration::from_millis(200)).await;
        let last = seen.last().cloned().flatten();
        panic!(
            "a body over the budget is refused with 503; {} probes, the last saw {last:?}; the hog saw {hog_head:?}\n{}",
            seen.len(),
            spawner.log()
        )
    };
    assert!(
        busy.to_ascii_lowercase().contains("retry-after: 1"),
        "{busy}"
    );
    // The hog's body never completes: 408 at the deadline, and the budget is free again.
    let head = read_head(&mut hog, Duration::from_secs(25)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert_eq!(
        spawner
            .client
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": "s1", "organizationId": "o"}))
            )
            .await
            .0,
        StatusCode::CREATED
    );
    spawner
        .client
        .json(Method::DELETE, "/v1/sessions/s1", None)
        .await;
}

/// Every respelling of a valid signature (`+` for a leading zero, case, padding) is refused once
/// the original was served, and a request captured before a restart cannot be replayed after it.
#[tokio::test(flavor = "multi_thread")]
async fn exact_signatures_and_replay_across_restart() {
    let mut spawner = SpawnerProcess::local(&[]).await;
    let send = |port: u16, sig: String, ts: String, nonce: String| async move {
        let c = support::spawner::SpawnerClient::new(port);
        let mut request = c.request(Method::GET, "/v1/sessions", Bytes::new(), false);
        let headers = request.headers_mut();
        headers.insert("x-tale-sandbox-signature", sig.parse().unwrap());
        headers.insert("x-tale-sandbox-timestamp", ts.parse().unwrap());
        headers.insert("x-tale-sandbox-nonce", nonce.parse().unwrap());
        c.send(request).await.status()
    };
    let ts = now_ms().to_string();
    // A signature with a byte below 0x10, so `0x` can be respelled `+x`.
    let (nonce, sig) = (0..)
        .map(|n| {
            let nonce = format!("n{n}");
            let sig = sign_request(
                SANDBOX_TOKEN.as_bytes(),
                "GET",
                "/v1/sessions",
                &ts,
                Some(&nonce),
                b"",
            );
            (nonce, sig)
        })
        .find(|(_, sig)| sig.as_bytes().chunks(2).any(|pair| pair[0] == b'0'))
        .unwrap();
    let port = spawner.port;
    assert_eq!(
        send(port, sig.clone(), ts.clone(), nonce.clone()).await,
        StatusCode::OK
    );
    let mut variants = vec![sig.to_ascii_uppercase(), sig.clone()];
    for (i, pair) in sig.as_bytes().chunks(2).enumerate() {
        if pair[0] == b'0' {
            let mut plus = sig.clone();
            plus.replace_range(i * 2..i * 2 + 1, "+");
            variants.push(plus);
        }
    }
    variants.extend([
        format!("0{sig}"),
        format!("{sig}0"),
        format!("0x{sig}"),
        format!("{sig}="),
    ]);
    for variant in variants {
        assert_eq!(
            send(port, variant.clone(), ts.clone(), nonce.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{variant}"
        );
    }
    // Captured before the restart, replayed after it within the skew.
    let captured = tale::shared::hmac::SignedHeaders::new(
        SANDBOX_TOKEN.as_bytes(),
        "GET",
        "/v1/sessions",
        b"",
        now_ms(),
    );
    assert_eq!(
        send(
            port,
            captured.signature.clone(),
            captured.timestamp.clone(),
            captured.nonce.clone()
        )
        .await,
        StatusCode::OK
    );
    spawner.restart().await;
    assert_eq!(
        send(port, captured.signature, captured.timestamp, captured.nonce).await,
        StatusCode::UNAUTHORIZED,
        "replay after restart"
    );
    // Fresh requests are served at once.
    assert_eq!(
        spawner
            .client
            .json(Method::GET, "/v1/sessions", None)
            .await
            .0,
        StatusCode::OK
    );
}

/// runnerd's refusals reach the client once, as the message of our envelope — never a JSON text
/// inside `message`.
#[tokio::test(flavor = "multi_thread")]
async fn runnerd_refusals_are_not_double_encoded() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    c.create("env1", "o").await;
    for (method, path, body) in [
        (
            Method::PUT,
            "/v1/sessions/env1/credentials/git",
            json!({"host": "https://example.test/x", "username": "u", "password": "p"}),
        ),
        (
            Method::POST,
            "/v1/sessions/env1/files/stage",
            json!({"files": [{"path": 5, "contentBase64": ""}]}),
        ),
    ] {
        let (status, reply) = c.json(method, path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {reply}");
        assert_eq!(reply["error"], "bad_request", "{path}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            serde_json::from_str::<Value>(message).is_err() && !message.contains("\"error\""),
            "{path}: double-encoded message {message:?}"
        );
        assert_eq!(reply.as_object().unwrap().len(), 2, "{reply}");
    }
    c.json(Method::DELETE, "/v1/sessions/env1", None).await;
}

/// An attach whose `Last-Event-ID` is the final `result`'s id, or beyond, ends without a second
/// result; one before it still gets the result.
#[tokio::test(flavor = "multi_thread")]
async fn attach_after_the_end_sends_no_second_result() {
    let spawner = SpawnerProcess::local(&[]).await;
    let c = &spawner.client;
    c.create("after", "o").await;
    let (_, stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/after/exec",
            Some(json!({"execId": "e1", "shell": "echo hi"})),
            &[],
        )
        .await;
    let events = stream.collect_all().await;
    assert_eq!(result(&events)["exitCode"], 0);
    let result_id: u64 = events
        .iter()
        .find(|e| e.event == "result")
        .and_then(|e| e.id.as_deref())
        .unwrap()
        .parse()
        .unwrap();
    for last in [result_id, result_id + 1, result_id + 100] {
        let (status, stream) = c
            .sse(
                Method::GET,
                "/v1/sessions/after/exec/e1/attach",
                None,
                &[("last-event-id", &last.to_string())],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let events = stream.collect_all().await;
        assert!(
            events
                .iter()
                .all(|e| e.event != "result" && e.event != "error"),
            "Last-Event-ID {last}: {events:?}"
        );
    }
    let (_, stream) = c
        .sse(
            Method::GET,
            "/v1/sessions/after/exec/e1/attach",
            None,
            &[("last-event-id", &(result_id - 1).to_string())],
        )
        .await;
    assert_eq!(result(&stream.collect_all().await)["exitCode"], 0);
    c.json(Method::DELETE, "/v1/sessions/after", None).await;
}

/// SIGTERM drains: the spawner stops accepting, lets a stream in flight finish (within its
/// grace), and exits 0; the session keeps running for the next start.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_in_flight_finish() {
    let mut spawner = SpawnerProcess::local(&[]).await;
    let c = spawner.client.clone();
    c.create("drain", "o").await;
    let (_, mut stream) = c
        .sse(
            Method::POST,
            "/v1/sessions/drain/exec",
            Some(json!({"execId": "slow", "shell": "sleep 1; echo done"})),
            &[],
        )
        .await;
    assert_eq!(stream.next().await.unwrap().event, "phase");
    let port = spawner.port;
    let exit = tokio::spawn(async move {
        let status = spawner.terminate(Duration::from_secs(15)).await;
        (status, spawner)
    });
    let events = stream.collect_all().await;
    assert_eq!(
        support::spawner::stdout_text(&events),
        "done\n",
        "{events:?}"
    );
    assert_eq!(result(&events)["exitCode"], 0);
    let (status, mut spawner) = exit.await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "no longer accepting"
    );
    spawner.restart().await;
    spawner
        .client
        .json(Method::DELETE, "/v1/sessions/drain", None)
        .await;
}

/// The spawner listens with a backlog of `LISTEN_BACKLOG` (capped by the kernel's somaxconn), not
/// the platform's 128, which a flood of connections overflows (see runnerd_connections).
#[tokio::test(flavor = "multi_thread")]
async fn listen_backlog_holds_a_flood() {
    let spawner = SpawnerProcess::local(&[]).await;
    let (backlog, expected) = support::proc_net::listen_backlog(spawner.port);
    assert_eq!(backlog, expected);
    assert!(backlog >= 1024, "backlog {backlog}");
}

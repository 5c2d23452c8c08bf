//! Golden transcripts of every spawner route: the real binary on the local backend, signed requests
//! sent by a raw HTTP/1.1 client, and the bytes it answers (status, headers but `date`, body, SSE
//! framing, error bodies) compared with the files in `tests/golden/spawner/`. Re-record with
//! `TALE_UPDATE_GOLDEN=1` (see `tests/golden/harness.rs`).
#[path = "golden/harness.rs"]
mod harness;
mod support;

use base64::Engine;
use harness::{send, Normalizer, RawRequest, Transcript};
use support::spawner::{now_ms, SpawnerProcess, SANDBOX_TOKEN};
use tale::shared::hmac::{SignedHeaders, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// Timestamps and durations are the only numbers that vary, plus the timing histograms' samples;
/// the spawner's session root is a temporary directory.
fn normalizer(spawner: &SpawnerProcess) -> Normalizer {
    Normalizer {
        json_numbers: vec![
            "createdAtMs",
            "lastActivityAtMs",
            "expiresAtMs",
            "startedAtMs",
            "durationMs",
            "mtimeMs",
        ],
        metric_values: vec![
            "tale_spawner_session_create_seconds_bucket",
            "tale_spawner_session_create_seconds_sum",
        ],
        numbers_after: vec![(r#""type":"dir","size":"#, "<dir size>")],
        literals: vec![(spawner.root.display().to_string(), "<spawner root>")],
        sorted_runs: vec!["tale_spawner_sessions{"],
    }
}

/// A request signed now, as the platform signs it.
fn signed(method: &str, target: &str, body: &str) -> RawRequest {
    let headers = SignedHeaders::new(
        SANDBOX_TOKEN.as_bytes(),
        method,
        target,
        body.as_bytes(),
        now_ms(),
    );
    let request = RawRequest::new(method, target);
    let request = if body.is_empty() {
        request
    } else {
        request.json(body)
    };
    request
        .hidden_header(SIGNATURE_HEADER, &headers.signature, "<signature>")
        .hidden_header(TIMESTAMP_HEADER, &headers.timestamp, "<timestamp>")
        .hidden_header(NONCE_HEADER, &headers.nonce, "<nonce>")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn spawner() -> SpawnerProcess {
    SpawnerProcess::local(&[
        ("SANDBOX_MAX_SESSIONS", "2"),
        ("SANDBOX_MAX_SESSIONS_PER_ORG", "1"),
    ])
    .await
}

/// Health, metrics, the signature check, unknown routes, bodies that are not JSON or too large.
#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_auth_routes() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new(
        "spawner",
        "health_metrics_auth_routes",
        normalizer(&spawner),
    );
    t.note("unauthenticated routes");
    t.run(port, RawRequest::new("GET", "/health")).await;
    t.run(port, RawRequest::new("GET", "/metrics")).await;
    t.note("unsigned, wrongly signed, stale, replayed");
    t.run(port, RawRequest::new("GET", "/v1/sessions")).await;
    let stale_ts = (now_ms() - 60_000).to_string();
    let stale = tale::shared::hmac::sign_request(
        SANDBOX_TOKEN.as_bytes(),
        "GET",
        "/v1/sessions",
        &stale_ts,
        Some("n1"),
        b"",
    );
    t.run(
        port,
        RawRequest::new("GET", "/v1/sessions")
            .hidden_header(SIGNATURE_HEADER, &stale, "<signature>")
            .hidden_header(TIMESTAMP_HEADER, &stale_ts, "<timestamp 60 s old>")
            .hidden_header(NONCE_HEADER, "n1", "<nonce>"),
    )
    .await;
    let mut wrong = signed("GET", "/v1/sessions", "");
    wrong.hidden_headers[0].1 = "0".repeat(64);
    wrong.hidden_headers[0].2 = "<wrong signature>";
    t.run(port, wrong).await;
    let once = signed("GET", "/v1/sessions", "");
    t.run(port, once.clone()).await;
    t.note("the same signed request again: a replay");
    t.run(port, once).await;
    t.note("unknown routes and ids");
    t.run(port, signed("GET", "/v1/nothing", "")).await;
    t.run(port, signed("GET", "/v1/sessions/bad%20id", ""))
        .await;
    t.run(port, signed("PUT", "/v1/sessions", "{}")).await;
    t.run(port, signed("GET", "/v1/sessions/ghost", "")).await;
    t.run(port, signed("POST", "/v1/sessions/ghost/exec", "{}"))
        .await;
    t.note("bodies: not JSON, too large");
    t.run(port, signed("POST", "/v1/sessions", "{nope")).await;
    let big = "x".repeat(2 * 1024 * 1024 + 1);
    let mut request = signed("POST", "/v1/sessions", &big);
    request.body_label = Some("2 MiB + 1 byte".into());
    t.run(port, request).await;
    t.finish();
}

/// Sessions: create (and every refusal), list, get, env, pin, destroy.
#[tokio::test(flavor = "multi_thread")]
async fn sessions() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new("spawner", "sessions", normalizer(&spawner));
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"s1","organizationId":"org1","ttlMs":60000,"env":{"A":"1","PATH":"/x"}}"#,
        ),
    )
    .await;
    t.note("refused creates");
    for body in [
        r#"{"sessionId":"s1","organizationId":"org9"}"#,
        r#"{"sessionId":"s2","organizationId":"org1"}"#,
        r#"{"organizationId":"o"}"#,
        r#"{"sessionId":"a b","organizationId":"o"}"#,
        r#"{"sessionId":"a","organizationId":""}"#,
        r#"{"sessionId":"a","organizationId":"o","profile":"root"}"#,
        r#"{"sessionId":"a","organizationId":"o","env":{"K":1}}"#,
        r#"{"sessionId":"a","organizationId":"o","env":[]}"#,
        "[1]",
    ] {
        t.run(port, signed("POST", "/v1/sessions", body)).await;
    }
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"s2","organizationId":"org2","profile":"agent"}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"s3","organizationId":"org3"}"#,
        ),
    )
    .await;
    t.note("list, get");
    t.run(port, signed("GET", "/v1/sessions", "")).await;
    t.run(port, signed("GET", "/v1/sessions?organizationId=org2", ""))
        .await;
    t.run(port, signed("GET", "/v1/sessions/s1", "")).await;
    t.note("env patch and what an exec sees");
    t.run(
        port,
        signed(
            "PATCH",
            "/v1/sessions/s1/env",
            r#"{"set":{"B":"2","HOME":"/x"},"unset":["A"]}"#,
        ),
    )
    .await;
    t.run(port, signed("PATCH", "/v1/sessions/s1/env", "{"))
        .await;
    t.run(
        port,
        signed("PATCH", "/v1/sessions/s1/env", r#"{"set":{"B":2}}"#),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/s1/exec",
            r#"{"execId":"see","shell":"printf %s \"${A:-none}:$B\""}"#,
        ),
    )
    .await;
    t.note("pin");
    t.run(
        port,
        signed("PATCH", "/v1/sessions/s1/pin", r#"{"pinned":true}"#),
    )
    .await;
    t.run(
        port,
        signed("PATCH", "/v1/sessions/s1/pin", r#"{"pinned":"yes"}"#),
    )
    .await;
    t.note("destroy");
    t.run(port, signed("DELETE", "/v1/sessions/s2", "")).await;
    t.run(port, signed("DELETE", "/v1/sessions/s1", "")).await;
    t.run(port, signed("GET", "/v1/sessions/s1", "")).await;
    t.run(port, signed("DELETE", "/v1/sessions/s1", "")).await;
    t.finish();
}

/// Execs through the spawner: SSE streams, attach by `sinceSeq` and `Last-Event-ID`, status, stdin,
/// cancel, deadline, refusals.
#[tokio::test(flavor = "multi_thread")]
async fn execs() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new("spawner", "execs", normalizer(&spawner));
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"x1","organizationId":"org1"}"#,
        ),
    )
    .await;
    let exec = |body: &str| signed("POST", "/v1/sessions/x1/exec", body);
    t.note("argv form, collected output");
    t.run(
        port,
        exec(r#"{"execId":"argv","command":["printf","%s\\n","hello"]}"#),
    )
    .await;
    t.note("shell form, stderr, non-zero exit");
    t.run(
        port,
        exec(r#"{"execId":"shell","shell":"printf oops >&2; exit 3"}"#),
    )
    .await;
    t.note("stdin, no collected output");
    t.run(
        port,
        exec(&format!(
            r#"{{"execId":"cat","command":["cat"],"stdinBase64":"{}","collectOutput":false}}"#,
            b64("hi\n")
        )),
    )
    .await;
    t.note("deadline, invalid cwd, a program that cannot start");
    t.run(
        port,
        exec(r#"{"execId":"slow","command":["sleep","30"],"timeoutMs":200}"#),
    )
    .await;
    t.run(
        port,
        exec(r#"{"execId":"cwd","shell":"true","cwd":"../.."}"#),
    )
    .await;
    t.run(
        port,
        exec(r#"{"execId":"nosuch","command":["/nonexistent/x"]}"#),
    )
    .await;
    t.note("refused execs");
    for body in [
        "{",
        "[]",
        r#"{"execId":"e"}"#,
        r#"{"execId":"e","command":"ls"}"#,
        r#"{"execId":"e","command":["a",1]}"#,
        r#"{"execId":"bad id","shell":"true"}"#,
        r#"{"execId":"e","shell":"x","collectOutput":"yes"}"#,
        r#"{"execId":"e","shell":"x","stdinMode":"open"}"#,
        r#"{"execId":"e","shell":"x","cwd":5}"#,
    ] {
        t.run(port, exec(body)).await;
    }
    t.note("attach to a finished exec: whole, from a seq, from Last-Event-ID, unknown");
    t.run(port, signed("GET", "/v1/sessions/x1/exec/argv/attach", ""))
        .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/x1/exec/argv/attach?sinceSeq=2", ""),
    )
    .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/x1/exec/argv/attach?sinceSeq=3", ""),
    )
    .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/x1/exec/argv/attach", "").header("last-event-id", "1"),
    )
    .await;
    t.note("a reader that has the result (id 3) reconnects: nothing more");
    t.run(
        port,
        signed("GET", "/v1/sessions/x1/exec/argv/attach", "").header("last-event-id", "3"),
    )
    .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/x1/exec/argv/attach?sinceSeq=7", ""),
    )
    .await;
    t.run(port, signed("GET", "/v1/sessions/x1/exec/nope/attach", ""))
        .await;
    t.note("status: exited, unknown");
    t.run(port, signed("GET", "/v1/sessions/x1/exec/argv", ""))
        .await;
    t.run(port, signed("GET", "/v1/sessions/x1/exec/nope", ""))
        .await;
    t.note("a held stdin: status running, one line, EOF, then refusals");
    let held_request =
        exec(r#"{"execId":"held","command":["cat"],"stdinMode":"hold","collectOutput":false}"#);
    let mut held = send(port, &held_request).await;
    held.read_until(b"event: phase").await;
    t.run(port, signed("GET", "/v1/sessions/x1/exec/held", ""))
        .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/x1/exec/held/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("not json\n")),
        ),
    )
    .await;
    t.run(port, signed("POST", "/v1/sessions/x1/exec/held/stdin", "{"))
        .await;
    t.run(
        port,
        signed("POST", "/v1/sessions/x1/exec/held/stdin", "{}"),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/x1/exec/held/stdin",
            &format!(r#"{{"dataBase64":"{}"}}"#, b64("{}\n")),
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/x1/exec/held/stdin",
            &format!(r#"{{"b64":"{}","eof":true}}"#, b64("{\"a\":1}\n")),
        ),
    )
    .await;
    held.finish().await;
    t.record(&held_request, &held);
    t.run(
        port,
        signed("POST", "/v1/sessions/x1/exec/held/stdin", r#"{"eof":true}"#),
    )
    .await;
    t.note("cancel a live exec, then again, then an unknown one");
    let long_request = exec(r#"{"execId":"long","command":["sleep","30"]}"#);
    let mut long = send(port, &long_request).await;
    long.read_until(b"event: phase").await;
    t.run(port, signed("POST", "/v1/sessions/x1/exec/long/cancel", ""))
        .await;
    long.finish().await;
    t.record(&long_request, &long);
    t.run(port, signed("POST", "/v1/sessions/x1/exec/long/cancel", ""))
        .await;
    t.run(port, signed("POST", "/v1/sessions/x1/exec/nope/cancel", ""))
        .await;
    t.run(port, signed("DELETE", "/v1/sessions/x1", "")).await;
    t.finish();
}

/// Terminals through the spawner (additive): a pty exec, resize, raw stdin, and their refusals.
#[tokio::test(flavor = "multi_thread")]
async fn terminal() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new("spawner", "terminal", normalizer(&spawner));
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"t1","organizationId":"org1"}"#,
        ),
    )
    .await;
    let exec = |body: &str| signed("POST", "/v1/sessions/t1/exec", body);
    t.note(
        "a pty exec: its size, a resize, keys through raw stdin (echo off, so output is stable)",
    );
    let tty_request = exec(
        r#"{"execId":"tty","shell":"stty -echo; stty size; read line; stty size","pty":{"cols":80,"rows":24},"collectOutput":false}"#,
    );
    let mut tty = send(port, &tty_request).await;
    tty.read_until(b"24 80").await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/t1/exec/tty/resize",
            r#"{"cols":100,"rows":30}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/t1/exec/tty/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("not json\r")),
        ),
    )
    .await;
    tty.finish().await;
    t.record(&tty_request, &tty);
    t.note("resize refusals: ended exec, bad size, unknown session");
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/t1/exec/tty/resize",
            r#"{"cols":100,"rows":30}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/t1/exec/tty/resize",
            r#"{"cols":0,"rows":30}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/nope/exec/tty/resize",
            r#"{"cols":100,"rows":30}"#,
        ),
    )
    .await;
    t.note("raw stdin on pipes: any bytes, then EOF");
    let raw_request =
        exec(r#"{"execId":"raw","command":["cat"],"stdinMode":"raw","collectOutput":false}"#);
    let mut raw = send(port, &raw_request).await;
    raw.read_until(b"event: phase").await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/t1/exec/raw/stdin",
            &format!(r#"{{"b64":"{}","eof":true}}"#, b64("no newline, not JSON")),
        ),
    )
    .await;
    raw.finish().await;
    t.record(&raw_request, &raw);
    t.note("refused pty requests");
    for body in [
        r#"{"execId":"p1","shell":"true","pty":{"cols":0,"rows":24}}"#,
        r#"{"execId":"p2","shell":"true","pty":{"cols":80,"rows":24},"stdinMode":"hold"}"#,
    ] {
        t.run(port, exec(body)).await;
    }
    t.run(port, signed("DELETE", "/v1/sessions/t1", "")).await;
    t.finish();
}

/// Files and git credentials through the spawner.
#[tokio::test(flavor = "multi_thread")]
async fn files_and_credentials() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new("spawner", "files_and_credentials", normalizer(&spawner));
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"f1","organizationId":"org1"}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/f1/files/stage",
            &format!(
                r#"{{"files":[{{"path":"in/a.txt","contentBase64":"{}"}},{{"path":"../x","contentBase64":"eA=="}},{{"path":"n"}}]}}"#,
                b64("hello\n")
            ),
        ),
    )
    .await;
    t.run(port, signed("POST", "/v1/sessions/f1/files/stage", "{"))
        .await;
    t.run(port, signed("GET", "/v1/sessions/f1/files?path=in", ""))
        .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/f1/files?path=missing", ""),
    )
    .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/f1/files/content?path=in%2Fa.txt", ""),
    )
    .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/f1/files/content?path=missing", ""),
    )
    .await;
    t.run(port, signed("GET", "/v1/sessions/f1/files/content", ""))
        .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/f1/files/delete",
            r#"{"paths":["in","../y"]}"#,
        ),
    )
    .await;
    t.run(port, signed("POST", "/v1/sessions/f1/files/delete", "[]"))
        .await;
    t.note("git credentials");
    t.run(
        port,
        signed(
            "PUT",
            "/v1/sessions/f1/credentials/git",
            r#"{"host":"git.example","username":"u","password":"p"}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "PUT",
            "/v1/sessions/f1/credentials/git",
            r#"{"host":"git.example"}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed("DELETE", "/v1/sessions/f1/credentials/git/git.example", ""),
    )
    .await;
    t.run(
        port,
        signed("DELETE", "/v1/sessions/f1/credentials/git/git.example", ""),
    )
    .await;
    t.run(port, signed("DELETE", "/v1/sessions/f1", "")).await;
    t.finish();
}

/// Files in pieces through the spawner: chunked writes and ranged reads, runnerd's refusals
/// relayed with their codes, the spawner's own checks.
#[tokio::test(flavor = "multi_thread")]
async fn files_chunked() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new("spawner", "files_chunked", normalizer(&spawner));
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"c1","organizationId":"org1"}"#,
        ),
    )
    .await;
    let write = |query: &str, body: &str| {
        let target = format!("/v1/sessions/c1/files/write?{query}");
        let mut request = signed("POST", &target, body);
        request.headers.retain(|(name, _)| name != "content-type");
        request.octets(body)
    };
    t.run(port, write("path=up%2Fbig.txt&offset=0", "hello "))
        .await;
    t.run(
        port,
        write("path=up%2Fbig.txt&offset=6&commit=true", "world\n"),
    )
    .await;
    t.run(
        port,
        signed(
            "GET",
            "/v1/sessions/c1/files/content?path=up%2Fbig.txt&offset=3&length=4",
            "",
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "GET",
            "/v1/sessions/c1/files/content?path=missing&offset=0",
            "",
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "GET",
            "/v1/sessions/c1/files/content?path=up%2Fbig.txt&offset=x",
            "",
        ),
    )
    .await;
    t.run(port, write("path=up%2Fbig.txt&offset=5", "x")).await;
    t.run(port, write("path=up%2Fbig.txt", "x")).await;
    t.run(port, write("path=up%2Fbig.txt&offset=0&commit=no", "x"))
        .await;
    t.run(port, write("path=..%2Fx&offset=0", "x")).await;
    t.run(port, write("offset=0", "x")).await;
    t.run(
        port,
        signed("POST", "/v1/sessions/nope/files/write?path=a&offset=0", ""),
    )
    .await;
    t.run(port, signed("DELETE", "/v1/sessions/c1", "")).await;
    t.finish();
}

/// One-shot execute and the agent-run routes' refusals.
#[tokio::test(flavor = "multi_thread")]
async fn execute_and_agent_run_refusals() {
    let spawner = spawner().await;
    let port = spawner.port;
    let mut t = Transcript::new("spawner", "execute_agent_runs", normalizer(&spawner));
    t.run(
        port,
        signed(
            "POST",
            "/v1/execute",
            &format!(
                r#"{{"shell":"cat in.txt","files":[{{"path":"in.txt","contentBase64":"{}"}}]}}"#,
                b64("staged\n")
            ),
        ),
    )
    .await;
    t.run(port, signed("POST", "/v1/execute", r#"{"shell":""}"#))
        .await;
    t.run(port, signed("POST", "/v1/execute", "{")).await;
    t.note("agent runs: refusals");
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions",
            r#"{"sessionId":"a1","organizationId":"org1","profile":"agent"}"#,
        ),
    )
    .await;
    for body in [
        "{",
        r#"{"agent":"nope","execId":"r1","run":{}}"#,
        r#"{"agent":"claude-code","execId":"bad id","run":{}}"#,
        r#"{"agent":"claude-code","execId":"r1"}"#,
    ] {
        t.run(port, signed("POST", "/v1/sessions/a1/agent-runs", body))
            .await;
    }
    t.run(
        port,
        signed("POST", "/v1/sessions/a1/agent-runs/r1/steer", "{"),
    )
    .await;
    t.run(
        port,
        signed(
            "POST",
            "/v1/sessions/a1/agent-runs/r1/steer",
            r#"{"agent":"claude-code","text":"hi"}"#,
        ),
    )
    .await;
    t.run(
        port,
        signed(
            "GET",
            "/v1/sessions/a1/agent-runs/r1/attach?agent=claude-code",
            "",
        ),
    )
    .await;
    t.run(
        port,
        signed("GET", "/v1/sessions/a1/agent-runs/r1/attach", ""),
    )
    .await;
    t.run(port, signed("DELETE", "/v1/sessions/a1", "")).await;
    t.finish();
}

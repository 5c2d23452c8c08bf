//! Golden transcripts of every runnerd route: the real binary, a raw HTTP/1.1 client, and the bytes
//! it answers (status, headers but `date`, body, NDJSON framing, error bodies) compared with the files
//! in `tests/golden/runnerd/`. Re-record with `TALE_UPDATE_GOLDEN=1` (see `tests/golden/harness.rs`).
#[path = "golden/harness.rs"]
mod harness;
mod support;

use base64::Engine;
use harness::{send, Normalizer, RawRequest, Transcript};
use support::runnerd::{Options, Runnerd, TOKEN};

/// Timestamps and durations are the only numbers that vary; the workspace is a temporary path.
fn normalizer(daemon: &Runnerd) -> Normalizer {
    Normalizer {
        json_numbers: vec![
            "startedAtMs",
            "durationMs",
            "bootedAtMs",
            "lastActivityAtMs",
            "mtimeMs",
        ],
        numbers_after: vec![(r#""type":"dir","size":"#, "<dir size>")],
        metric_values: Vec::new(),
        literals: vec![(daemon.root.display().to_string(), "<root>")],
        sorted_runs: Vec::new(),
    }
}

fn get(target: &str) -> RawRequest {
    RawRequest::new("GET", target).header("x-tale-runnerd-token", TOKEN)
}

fn post(target: &str, body: &str) -> RawRequest {
    RawRequest::new("POST", target)
        .header("x-tale-runnerd-token", TOKEN)
        .json(body)
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Starts an exec whose stream stays open; returns it once its `start` line arrived.
async fn start_live(daemon: &Runnerd, body: &str) -> (RawRequest, harness::RawResponse) {
    let request = post("/execs", body);
    let mut response = send(daemon.port, &request).await;
    response.read_until(b"\"t\":\"start\"").await;
    (request, response)
}

/// Readiness without a token, health with one, and every way the token check refuses.
#[tokio::test(flavor = "multi_thread")]
async fn health_auth_and_unknown_routes() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "health_auth_routes", normalizer(&daemon));
    let port = daemon.port;
    t.note("readiness needs no token");
    t.run(port, RawRequest::new("GET", "/readyz")).await;
    t.note("health");
    t.run(port, get("/healthz")).await;
    t.note("no token, a wrong token, a token of the wrong length");
    t.run(port, RawRequest::new("GET", "/healthz")).await;
    t.run(
        port,
        RawRequest::new("GET", "/healthz").header("x-tale-runnerd-token", "test-token-0123456780"),
    )
    .await;
    t.run(
        port,
        RawRequest::new("POST", "/execs")
            .header("x-tale-runnerd-token", "x")
            .json(r#"{"execId":"a","shell":"true"}"#),
    )
    .await;
    t.note("unknown routes, methods and ids");
    t.run(port, get("/nope")).await;
    t.run(port, post("/healthz", "{}")).await;
    t.run(port, get("/execs/a.b")).await;
    t.run(port, get("/execs/a.b/attach")).await;
    t.run(
        port,
        RawRequest::new("DELETE", "/execs/x").header("x-tale-runnerd-token", TOKEN),
    )
    .await;
    t.finish();
}

/// `POST /execs`: both program forms, stdin, caps, deadline, env overlay, and each refusal.
#[tokio::test(flavor = "multi_thread")]
async fn execs() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "execs", normalizer(&daemon));
    let port = daemon.port;
    t.note("argv form");
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"argv","command":["printf","%s\\n","hello"]}"#,
        ),
    )
    .await;
    t.note("shell form, stderr, non-zero exit");
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"shell","shell":"printf oops >&2; exit 3"}"#,
        ),
    )
    .await;
    t.note("the shell form's $0");
    t.run(
        port,
        post("/execs", r#"{"execId":"zero","shell":"printf %s \"$0\""}"#),
    )
    .await;
    t.note("stdin in close mode");
    t.run(
        port,
        post(
            "/execs",
            &format!(
                r#"{{"execId":"cat","command":["cat"],"stdinBase64":"{}"}}"#,
                b64("hi")
            ),
        ),
    )
    .await;
    t.note("output cap");
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"trunc","shell":"printf abcdef","stdoutMaxBytes":3,"stderrMaxBytes":0}"#,
        ),
    )
    .await;
    t.note("deadline");
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"slow","command":["sleep","30"],"timeoutMs":200}"#,
        ),
    )
    .await;
    t.note("env overlay; deny-listed names dropped");
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"envx","shell":"printf %s \"$FOO:$TMPDIR\"","env":{"FOO":"bar","TMPDIR":"/evil"}}"#,
        ),
    )
    .await;
    t.note("a program that cannot be started");
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"nosuch","command":["/nonexistent/x"]}"#,
        ),
    )
    .await;
    t.note("refusals before spawn: one seq-less fail line");
    for body in [
        r#"{"execId":"a/b","shell":"true"}"#,
        r#"{"shell":"true"}"#,
        r#"{"execId":"f1"}"#,
        r#"{"execId":"f2","shell":"true","command":["true"]}"#,
        r#"{"execId":"f3","command":[]}"#,
        r#"{"execId":"f4","command":["ls",3]}"#,
        r#"{"execId":"f5","shell":"true","cwd":"../.."}"#,
        r#"{"execId":"f6","shell":"true","cwd":"missing"}"#,
        r#"{"execId":"f7","shell":"true","cwd":5}"#,
        r#"{"execId":"f8","shell":"true","env":{"A":1}}"#,
        r#"{"execId":"f9","shell":"true","env":[]}"#,
        r#"{"execId":"f10","shell":"true","stdinMode":"open"}"#,
        r#"{"execId":"f11","shell":"true","stdinBase64":"%%%"}"#,
        r#"{"execId":"f12","shell":"true","timeoutMs":"5"}"#,
    ] {
        t.run(port, post("/execs", body)).await;
    }
    t.note("bodies that are not a request");
    t.run(port, post("/execs", "{")).await;
    t.run(port, post("/execs", "[]")).await;
    t.run(port, post("/execs", "\"x\"")).await;
    let mut big = br#"{"execId":"big","shell":""#.to_vec();
    big.resize(8 * 1024 * 1024 + 1, b'x');
    t.run(
        port,
        RawRequest::new("POST", "/execs")
            .header("x-tale-runnerd-token", TOKEN)
            .big_body(big, "8 MiB + 1 byte"),
    )
    .await;
    t.note("a duplicate of a live exec");
    let (live_request, mut live) =
        start_live(&daemon, r#"{"execId":"live","command":["sleep","30"]}"#).await;
    t.run(
        port,
        post("/execs", r#"{"execId":"live","command":["true"]}"#),
    )
    .await;
    t.run(port, post("/execs/live/cancel", "")).await;
    live.finish().await;
    t.record(&live_request, &live);
    t.finish();
}

/// The live-exec cap answers a fail line, before the id is looked at.
#[tokio::test(flavor = "multi_thread")]
async fn exec_limit() {
    let daemon = Runnerd::start(Options {
        args: vec!["--max-live-execs".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let mut t = Transcript::new("runnerd", "exec_limit", normalizer(&daemon));
    let (live_request, mut live) =
        start_live(&daemon, r#"{"execId":"one","command":["sleep","30"]}"#).await;
    t.run(
        daemon.port,
        post("/execs", r#"{"execId":"two","shell":"true"}"#),
    )
    .await;
    t.run(daemon.port, post("/execs", r#"{"execId":"a/b"}"#))
        .await;
    t.run(daemon.port, post("/execs/one/cancel", "")).await;
    live.finish().await;
    t.record(&live_request, &live);
    t.finish();
}

/// Attach (replay from each position, unknown ids, bad cursors), status of every state, cancel.
#[tokio::test(flavor = "multi_thread")]
async fn attach_status_cancel() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "attach_status_cancel", normalizer(&daemon));
    let port = daemon.port;
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"done","command":["printf","%s\\n","hello"]}"#,
        ),
    )
    .await;
    t.note("attach to a finished exec from each position (the exit is seq 3)");
    for since in ["0", "1", "2", "3", "4", "99"] {
        t.run(port, get(&format!("/execs/done/attach?sinceSeq={since}")))
            .await;
    }
    t.run(port, get("/execs/done/attach")).await;
    t.note("bad cursors and unknown execs");
    t.run(port, get("/execs/done/attach?sinceSeq=abc")).await;
    t.run(port, get("/execs/done/attach?sinceSeq=-1")).await;
    t.run(port, get("/execs/unknown/attach?sinceSeq=0")).await;
    t.note("status: exited, gone");
    t.run(port, get("/execs/done")).await;
    t.run(port, get("/execs/unknown")).await;
    t.note("a live exec: status running, attach, cancel, cancel again");
    let (live_request, mut live) =
        start_live(&daemon, r#"{"execId":"live","command":["sleep","30"]}"#).await;
    t.run(port, get("/execs/live")).await;
    let attach_request = get("/execs/live/attach?sinceSeq=0");
    let mut attached = send(port, &attach_request).await;
    attached.read_until(b"\"t\":\"start\"").await;
    // A reader already past what the exec will still write (its exit is seq 2) gets nothing more.
    let past_request = get("/execs/live/attach?sinceSeq=2");
    let mut past = send(port, &past_request).await;
    t.run(port, post("/execs/live/cancel", "")).await;
    live.finish().await;
    t.record(&live_request, &live);
    attached.finish().await;
    t.record(&attach_request, &attached);
    past.finish().await;
    t.record(&past_request, &past);
    t.run(port, post("/execs/live/cancel", "")).await;
    t.run(port, post("/execs/unknown/cancel", "")).await;
    t.run(port, get("/execs/live")).await;
    t.finish();
}

/// `POST /execs/:id/stdin`: lines into a held stdin, EOF, and every refusal.
#[tokio::test(flavor = "multi_thread")]
async fn stdin() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "stdin", normalizer(&daemon));
    let port = daemon.port;
    t.note("a held stdin: refusals, then one line the process echoes");
    let (held_request, mut held) = start_live(
        &daemon,
        r#"{"execId":"held","command":["head","-n","1"],"stdinMode":"hold"}"#,
    )
    .await;
    t.run(port, post("/execs/held/stdin", "{")).await;
    t.run(
        port,
        post(
            "/execs/held/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("not json\n")),
        ),
    )
    .await;
    t.run(
        port,
        post(
            "/execs/held/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("{}\n{}\n")),
        ),
    )
    .await;
    t.run(port, post("/execs/held/stdin", r#"{"b64":"***"}"#))
        .await;
    t.run(
        port,
        post(
            "/execs/held/stdin",
            &format!(r#"{{"dataBase64":"{}"}}"#, b64("{}\n")),
        ),
    )
    .await;
    t.run(port, post("/execs/held/stdin", "{}")).await;
    t.run(
        port,
        post(
            "/execs/held/stdin",
            &format!(r#"{{"b64":"{}","extra":1}}"#, b64("{\"a\":1}\n")),
        ),
    )
    .await;
    held.finish().await;
    t.record(&held_request, &held);
    t.note("the exec ended; an unknown exec");
    t.run(
        port,
        post(
            "/execs/held/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("{}\n")),
        ),
    )
    .await;
    t.run(port, post("/execs/nope/stdin", r#"{"eof":true}"#))
        .await;
    t.note("EOF ends a held stdin");
    let (eof_request, mut eof) = start_live(
        &daemon,
        r#"{"execId":"eof","command":["cat"],"stdinMode":"hold"}"#,
    )
    .await;
    t.run(
        port,
        post(
            "/execs/eof/stdin",
            &format!(r#"{{"b64":"{}","eof":true}}"#, b64("[1]\n")),
        ),
    )
    .await;
    eof.finish().await;
    t.record(&eof_request, &eof);
    t.note("close mode refuses stdin");
    let (closed_request, mut closed) =
        start_live(&daemon, r#"{"execId":"closed","command":["sleep","30"]}"#).await;
    t.run(
        port,
        post(
            "/execs/closed/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("{}\n")),
        ),
    )
    .await;
    t.run(port, post("/execs/closed/cancel", "")).await;
    closed.finish().await;
    t.record(&closed_request, &closed);
    t.finish();
}

/// `POST /env`: set, unset, denied names, what the next exec sees, and bodies of the wrong shape.
#[tokio::test(flavor = "multi_thread")]
async fn env() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "env", normalizer(&daemon));
    let port = daemon.port;
    t.run(
        port,
        post(
            "/env",
            r#"{"set":{"A":"1","B":"2","PATH":"/x","tale_runnerd_k":"v"},"unset":["B","HOME","NOPE"]}"#,
        ),
    )
    .await;
    t.run(
        port,
        post(
            "/execs",
            r#"{"execId":"see","shell":"printf %s \"$A:$B\""}"#,
        ),
    )
    .await;
    t.run(port, post("/env", "{}")).await;
    t.note("bodies of the wrong shape");
    t.run(port, post("/env", "{")).await;
    t.run(port, post("/env", r#"{"set":{"X":1}}"#)).await;
    t.run(port, post("/env", r#"{"set":[],"unset":"X"}"#)).await;
    t.run(port, post("/env", r#"[{"X":"1"}]"#)).await;
    t.run(port, post("/env", "7")).await;
    t.run(
        port,
        post("/execs", r#"{"execId":"see2","shell":"printf %s \"$X\""}"#),
    )
    .await;
    t.finish();
}

/// `GET`/`PUT /seed` (additive): unseeded at boot, marked with a digest, re-marked, and refusals.
#[tokio::test(flavor = "multi_thread")]
async fn seed() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut normalizer = normalizer(&daemon);
    normalizer.json_numbers.push("seededAtMs");
    let mut t = Transcript::new("runnerd", "seed", normalizer);
    let port = daemon.port;
    let put = |body: &str| {
        RawRequest::new("PUT", "/seed")
            .header("x-tale-runnerd-token", TOKEN)
            .json(body)
    };
    let digest = "0123456789abcdef".repeat(4);
    t.note("a fresh runnerd is unseeded");
    t.run(port, get("/seed")).await;
    t.note("marked, read back, marked again with another digest");
    t.run(port, put(&format!(r#"{{"digest":"{digest}"}}"#)))
        .await;
    t.run(port, get("/seed")).await;
    t.run(port, put(&format!(r#"{{"digest":"{}"}}"#, "f".repeat(64))))
        .await;
    t.run(port, get("/seed")).await;
    t.note("refusals: no token, wrong digests, wrong shapes");
    t.run(port, RawRequest::new("GET", "/seed")).await;
    t.run(port, put(&format!(r#"{{"digest":"{}"}}"#, "F".repeat(64))))
        .await;
    t.run(port, put(r#"{"digest":"abc"}"#)).await;
    t.run(port, put(r#"{"digest":"00","extra":1}"#)).await;
    t.run(port, put("[]")).await;
    t.run(port, post("/seed", "{}")).await;
    t.finish();
}

/// The files API: stage (inline, every skip reason), list, read, delete, and bad bodies.
#[tokio::test(flavor = "multi_thread")]
async fn files() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "files", normalizer(&daemon));
    let port = daemon.port;
    t.run(
        port,
        post(
            "/files/stage",
            &format!(
                r#"{{"files":[{{"path":"a.txt","contentBase64":"{}"}},{{"path":"dir/b.bin","contentBase64":"AAEC/w"}},{{"path":"../out","contentBase64":"eA=="}},{{"path":"c","contentBase64":"%%"}},{{"path":"d"}},{{"path":".","contentBase64":"eA=="}}]}}"#,
                b64("hello\n")
            ),
        ),
    )
    .await;
    t.note("list and read (the root is not listed: what runnerd keeps there is not this contract)");
    t.run(port, get("/fs/list?path=dir")).await;
    t.run(port, get("/fs/list?path=missing")).await;
    t.run(port, get("/fs/list?path=..")).await;
    t.run(port, get("/fs/read?path=a.txt")).await;
    t.run(port, get("/fs/read?path=dir%2Fb.bin")).await;
    t.run(port, get("/fs/read?path=dir")).await;
    t.run(port, get("/fs/read?path=missing")).await;
    t.run(port, get("/fs/read")).await;
    t.note("delete");
    t.run(
        port,
        post("/files/delete", r#"{"paths":["dir","missing","../x","."]}"#),
    )
    .await;
    t.run(port, get("/fs/list?path=dir")).await;
    t.note("bodies of the wrong shape");
    t.run(port, post("/files/stage", "{")).await;
    t.run(port, post("/files/stage", r#"{"files":{}}"#)).await;
    t.run(port, post("/files/stage", r#"{"files":[{"url":"x"}]}"#))
        .await;
    t.run(
        port,
        post(
            "/files/stage",
            r#"[[{"path":"arr.txt","contentBase64":"eA=="}]]"#,
        ),
    )
    .await;
    t.run(port, post("/files/delete", r#"{"paths":"a.txt"}"#))
        .await;
    t.run(port, post("/files/delete", "{}")).await;
    t.finish();
}

/// Files in pieces: chunked writes (commit, offset mismatch, every refusal) and ranged reads with
/// the file's size.
#[tokio::test(flavor = "multi_thread")]
async fn files_chunked() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "files_chunked", normalizer(&daemon));
    let port = daemon.port;
    let write = |query: &str, body: &str| {
        RawRequest::new("POST", &format!("/files/write?{query}"))
            .header("x-tale-runnerd-token", TOKEN)
            .octets(body)
    };
    t.run(port, write("path=up%2Fbig.txt&offset=0", "hello "))
        .await;
    t.run(port, get("/fs/read?path=up%2Fbig.txt")).await;
    t.run(
        port,
        write("path=up%2Fbig.txt&offset=6&commit=true", "world\n"),
    )
    .await;
    t.note("ranged reads");
    t.run(port, get("/fs/read?path=up%2Fbig.txt&offset=3&length=4"))
        .await;
    t.run(port, get("/fs/read?path=up%2Fbig.txt&offset=20"))
        .await;
    t.run(port, get("/fs/read?path=up%2Fbig.txt&length=x"))
        .await;
    t.run(port, get("/fs/read?path=missing&offset=0")).await;
    t.run(port, get("/fs/read?path=up&offset=0")).await;
    t.note("refusals");
    t.run(port, write("path=up%2Fbig.txt&offset=5", "x")).await;
    t.run(port, write("path=up%2Fbig.txt", "x")).await;
    t.run(port, write("path=up%2Fbig.txt&offset=-1", "x")).await;
    t.run(port, write("path=up%2Fbig.txt&offset=0&commit=yes", "x"))
        .await;
    t.run(port, write("path=..%2Fx&offset=0", "x")).await;
    t.run(port, write("offset=0", "x")).await;
    t.run(port, write("path=up&offset=0&commit=true", "x"))
        .await;
    t.finish();
}

/// Git credentials: grant, bad grants, revoke (existing and not).
#[tokio::test(flavor = "multi_thread")]
async fn credentials() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "credentials", normalizer(&daemon));
    let port = daemon.port;
    let put = |body: &str| {
        RawRequest::new("PUT", "/credentials/git")
            .header("x-tale-runnerd-token", TOKEN)
            .json(body)
    };
    t.run(
        port,
        put(r#"{"host":"git.example:8443","username":"u","password":"p","expiresAtMs":99999999999999}"#),
    )
    .await;
    t.run(port, put(r#"{"host":"git.example","username":"u"}"#))
        .await;
    t.run(port, put(r#"{"host":"","username":"u","password":"p"}"#))
        .await;
    t.run(port, put("{")).await;
    let delete =
        |target: &str| RawRequest::new("DELETE", target).header("x-tale-runnerd-token", TOKEN);
    t.run(port, delete("/credentials/git/git.example%3A8443"))
        .await;
    t.run(port, delete("/credentials/git/git.example%3A8443"))
        .await;
    t.finish();
}

/// Terminals (additive): a pty exec, `POST /execs/:id/resize`, raw stdin, and their refusals.
#[tokio::test(flavor = "multi_thread")]
async fn terminal() {
    let daemon = Runnerd::start(Options::default()).await;
    let mut t = Transcript::new("runnerd", "terminal", normalizer(&daemon));
    let port = daemon.port;
    t.note(
        "a pty exec: its size, a resize, keys through raw stdin (echo off, so output is stable)",
    );
    let (tty_request, mut tty) = start_live(
        &daemon,
        r#"{"execId":"tty","shell":"stty -echo; stty size; read line; stty size","pty":{"cols":80,"rows":24}}"#,
    )
    .await;
    tty.read_until(b64("24 80\r\n").as_bytes()).await;
    t.run(port, post("/execs/tty/resize", r#"{"cols":100,"rows":30}"#))
        .await;
    t.run(port, get("/execs")).await;
    t.run(
        port,
        post(
            "/execs/tty/stdin",
            &format!(r#"{{"b64":"{}"}}"#, b64("not json\r")),
        ),
    )
    .await;
    tty.finish().await;
    t.record(&tty_request, &tty);
    t.note("resize refusals: ended, unknown, not a terminal, bad sizes");
    t.run(port, post("/execs/tty/resize", r#"{"cols":100,"rows":30}"#))
        .await;
    t.run(
        port,
        post("/execs/nope/resize", r#"{"cols":100,"rows":30}"#),
    )
    .await;
    let (pipe_request, mut pipe) = start_live(
        &daemon,
        r#"{"execId":"pipe","command":["cat"],"stdinMode":"raw"}"#,
    )
    .await;
    t.run(
        port,
        post("/execs/pipe/resize", r#"{"cols":100,"rows":30}"#),
    )
    .await;
    for body in [
        r#"{"cols":0,"rows":30}"#,
        r#"{"cols":100,"rows":1001}"#,
        r#"{"cols":100}"#,
        r#"{"cols":"100","rows":30}"#,
        "[100,30]",
        "{",
    ] {
        t.run(port, post("/execs/pipe/resize", body)).await;
    }
    t.note("raw stdin on pipes: any bytes, then EOF");
    t.run(
        port,
        post(
            "/execs/pipe/stdin",
            &format!(r#"{{"b64":"{}","eof":true}}"#, b64("no newline, not JSON")),
        ),
    )
    .await;
    pipe.finish().await;
    t.record(&pipe_request, &pipe);
    t.note("refused pty requests: one seq-less fail line");
    for body in [
        r#"{"execId":"p1","shell":"true","pty":{"cols":0,"rows":24}}"#,
        r#"{"execId":"p2","shell":"true","pty":"80x24"}"#,
        r#"{"execId":"p3","shell":"true","pty":{"cols":80,"rows":24},"stdinMode":"hold"}"#,
    ] {
        t.run(port, post("/execs", body)).await;
    }
    t.finish();
}

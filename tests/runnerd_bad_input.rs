//! End-to-end: every route refuses bad input with the specified status and body, never panics, and
//! the daemon keeps serving afterwards.
mod support;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::runnerd::{Options, Runnerd};

fn fail(code: &str, message: &str) -> Vec<Value> {
    vec![json!({"t": "fail", "code": code, "message": message})]
}

/// The exec route's validation table: each refusal is one seq-less `fail` line.
#[tokio::test(flavor = "multi_thread")]
async fn exec_refusals() {
    let daemon = Runnerd::start(Options::default()).await;
    std::os::unix::fs::symlink("/etc", daemon.root.join("escape")).unwrap();
    std::fs::write(daemon.root.join("file"), b"x").unwrap();
    let root = daemon.root.display().to_string();
    let invalid_cwd = format!("cwd must resolve under {root} and exist");
    let one = "exactly one of command[] or shell required";
    let cases: Vec<(Value, Vec<Value>)> = vec![
        (
            json!({"command": ["true"]}),
            fail("BAD_REQUEST", "invalid execId"),
        ),
        (
            json!({"execId": "", "command": ["true"]}),
            fail("BAD_REQUEST", "invalid execId"),
        ),
        (
            json!({"execId": "a b", "command": ["true"]}),
            fail("BAD_REQUEST", "invalid execId"),
        ),
        (
            json!({"execId": "x".repeat(65), "command": ["true"]}),
            fail("BAD_REQUEST", "invalid execId"),
        ),
        (
            json!({"execId": 7, "command": ["true"]}),
            fail("BAD_REQUEST", "invalid execId"),
        ),
        (json!({"execId": "a"}), fail("BAD_REQUEST", one)),
        (
            json!({"execId": "a", "command": ["true"], "shell": "true"}),
            fail("BAD_REQUEST", one),
        ),
        (
            json!({"execId": "a", "command": []}),
            fail("BAD_REQUEST", one),
        ),
        (
            json!({"execId": "a", "command": ["true", 1]}),
            fail("BAD_REQUEST", "command[] must hold only strings"),
        ),
        (
            json!({"execId": "a", "shell": "true", "env": {"A": 1}}),
            fail("BAD_REQUEST", "env.A must be a string"),
        ),
        (
            json!({"execId": "a", "shell": "true", "env": []}),
            fail("BAD_REQUEST", "env must be an object"),
        ),
        (
            json!({"execId": "a", "shell": "true", "cwd": ".."}),
            fail("INVALID_CWD", &invalid_cwd),
        ),
        (
            json!({"execId": "a", "shell": "true", "cwd": "escape"}),
            fail("INVALID_CWD", &invalid_cwd),
        ),
        (
            json!({"execId": "a", "shell": "true", "cwd": "missing"}),
            fail("INVALID_CWD", &invalid_cwd),
        ),
        (
            json!({"execId": "a", "shell": "true", "cwd": "file"}),
            fail("INVALID_CWD", &invalid_cwd),
        ),
        (
            json!({"execId": "a", "shell": "true", "cwd": "/tmp"}),
            fail("INVALID_CWD", &invalid_cwd),
        ),
        (
            json!({"execId": "a", "shell": "true", "stdinBase64": "@@"}),
            fail("BAD_REQUEST", "stdinBase64 is not valid base64"),
        ),
        (
            json!({"execId": "a", "shell": "true", "stdinMode": "keep"}),
            fail("BAD_REQUEST", "stdinMode must be \"close\" or \"hold\""),
        ),
        (
            json!({"execId": "a", "shell": "true", "timeoutMs": "5"}),
            fail("BAD_REQUEST", "timeoutMs must be a number"),
        ),
    ];
    for (body, want) in cases {
        let got = daemon.client.exec(body.clone()).await;
        assert_eq!(got, want, "for {body}");
    }
    // A denied overlay name is dropped silently, not refused.
    let events = daemon
        .client
        .exec(json!({"execId": "ok", "shell": "echo $HOME", "env": {"HOME": "/evil"}, "timeoutMs": 5000}))
        .await;
    assert_eq!(events.last().unwrap()["exitCode"], 0);
}

/// HTTP-level refusals: auth, malformed JSON, oversized bodies, unknown routes, bad query values.
#[tokio::test(flavor = "multi_thread")]
async fn http_refusals() {
    let daemon = Runnerd::start(Options::default()).await;
    let client = &daemon.client;
    let unauthorized = (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    // Missing and wrong token on every authenticated route; /readyz needs none.
    for (method, path) in [
        (Method::GET, "/healthz"),
        (Method::POST, "/execs"),
        (Method::GET, "/execs/a/attach"),
        (Method::POST, "/execs/a/cancel"),
        (Method::POST, "/execs/a/stdin"),
        (Method::GET, "/execs/a"),
        (Method::POST, "/env"),
        (Method::POST, "/files/stage"),
        (Method::GET, "/fs/list"),
    ] {
        assert_eq!(
            client.raw(method.clone(), path, None, false).await,
            unauthorized,
            "{path}"
        );
    }
    let wrong = client
        .http_with_token(Method::GET, "/healthz", "test-token-0123456788")
        .await;
    assert_eq!(wrong, unauthorized);
    assert_eq!(
        client.raw(Method::GET, "/readyz", None, false).await,
        (StatusCode::OK, json!({"ok": true}))
    );

    let bad_json = Some(Bytes::from_static(b"{not json"));
    for path in [
        "/execs",
        "/env",
        "/execs/a/stdin",
        "/files/stage",
        "/files/delete",
    ] {
        let (status, body) = client.raw(Method::POST, path, bad_json.clone(), true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["error"], "bad_request", "{path}");
    }
    // Shapes the env route refuses.
    for body in [
        json!({"set": {"A": 1}}),
        json!({"set": []}),
        json!({"unset": "A"}),
        json!({"unset": [1]}),
    ] {
        let (status, reply) = client.json(Method::POST, "/env", Some(body.clone())).await;
        assert_eq!(
            (status, &reply["error"]),
            (StatusCode::BAD_REQUEST, &json!("bad_request")),
            "{body}"
        );
    }
    // stdin: b64 must be a string.
    let (status, _) = client
        .json(Method::POST, "/execs/a/stdin", Some(json!({"b64": 5})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown exec for stdin: NOT_FOUND in the reply, as specified.
    let (status, body) = client
        .json(Method::POST, "/execs/a/stdin", Some(json!({"b64": "e30K"})))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"ok": false, "reason": "NOT_FOUND"}))
    );

    let oversized = Some(Bytes::from(vec![b' '; 9 * 1024 * 1024]));
    let (status, body) = client.raw(Method::POST, "/execs", oversized, true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "payload_too_large");

    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/execs/a/b/c"),
        (Method::GET, "/execs/bad%20id"),
        (Method::DELETE, "/execs/a"),
        (Method::GET, "/execs/unknown/attach"),
    ] {
        assert_eq!(
            client.raw(method, path, None, true).await,
            (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            "{path}"
        );
    }
    let (status, body) = client
        .raw(Method::GET, "/execs/a/attach?sinceSeq=abc", None, true)
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (status, body) = client
        .raw(Method::GET, "/execs/a/attach?sinceSeq=-1", None, true)
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    assert_eq!(
        client.json(Method::POST, "/execs/none/cancel", None).await,
        (StatusCode::OK, json!({"killed": false}))
    );

    // Still serving.
    assert_eq!(client.health().await["ok"], true);
}

//! Property-driven fuzzing of everything the spawner parses from a caller: the signature headers,
//! every route's body (arbitrary JSON, valid bodies with fields replaced by arbitrary values, and
//! arbitrary bytes), `Last-Event-ID` / `sinceSeq`, query strings and the credential path segment.
//! Each target must never panic and must refuse bad input as 400 `bad_request` with a message.
//!
//! Cases per target: `TALE_FUZZ_CASES` (default [`DEFAULT_CASES`], about 30 s in all for a debug
//! build on 2 cores); a longer local run is `TALE_FUZZ_CASES=200000 cargo test --release --lib
//! spawner::api::fuzz`.
use super::credentials::{grant_body, revoke_host};
use super::exec::stdin_body;
use super::execute::execute_body;
use super::files::{delete_body, stage_body};
use super::sessions::{env_patch_body, pin_body};
use super::{ApiError, ApiRequest};
use crate::modes::spawner::agents::request::{AgentRunRequest, SteerRequest, StreamPosition};
use crate::modes::spawner::edge::body::BodyLease;
use crate::shared::fuzz;
use crate::shared::hmac::{sign_request, AuthFailure, RequestVerifier, MAC_LEN};
use crate::shared::protocol::spawner::{CreateSession, SessionExec, TEST_LIMITS};
use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

/// Cases per target when `TALE_FUZZ_CASES` is unset.
pub const DEFAULT_CASES: u32 = 2000;

fn runner() -> TestRunner {
    fuzz::runner_with(fuzz::cases(DEFAULT_CASES))
}

/// Text with the characters that matter to parsers: digits, hex, signs, dots, separators,
/// percent escapes, whitespace, control characters and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F+\\-. =x%&;/_]{0,70}",
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f é€😀]{0,8}",
        any::<u64>().prop_map(|n| n.to_string()),
        (any::<u64>(), any::<u32>()).prop_map(|(a, b)| format!("{a}.{b}")),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    fuzz::json_value(text().boxed())
}

/// Every field name some route reads, so that mutations hit real fields.
const FIELDS: &[&str] = &[
    "sessionId",
    "organizationId",
    "profile",
    "ttlMs",
    "idleTimeoutMs",
    "env",
    "execId",
    "command",
    "shell",
    "cwd",
    "stdinBase64",
    "stdinHold",
    "timeoutMs",
    "collectOutput",
    "agent",
    "run",
    "prompt",
    "gateway",
    "token",
    "baseUrl",
    "text",
    "eof",
    "b64",
    "pinned",
    "set",
    "unset",
    "files",
    "path",
    "url",
    "contentBase64",
    "paths",
    "host",
    "username",
    "password",
    "expiresAtMs",
];

/// Valid bodies of every route, to mutate.
fn templates() -> Vec<Value> {
    vec![
        json!({"sessionId": "s1", "organizationId": "o", "profile": "agent", "ttlMs": 60000, "env": {"A": "1"}}),
        json!({"execId": "e1", "command": ["ls", "-l"], "cwd": "/workspace", "env": {"X": "y"}, "timeoutMs": 1000, "collectOutput": true}),
        json!({"execId": "e1", "shell": "echo hi", "stdinBase64": "aGk=", "stdinHold": true}),
        json!({"agent": "claude-code", "execId": "a1", "run": {"prompt": "hi"}, "gateway": {"token": "t", "baseUrl": "http://gw"}, "timeoutMs": 5000}),
        json!({"agent": "opencode", "text": "more", "eof": true}),
        json!({"b64": "aGk=", "eof": false}),
        json!({"pinned": true}),
        json!({"set": {"A": "1"}, "unset": ["B"]}),
        json!({"files": [{"path": "a.txt", "contentBase64": "aGk="}, {"path": "b", "url": "https://x/y"}]}),
        json!({"paths": ["a", "b/c"]}),
        json!({"host": "github.com", "username": "u", "password": "p", "expiresAtMs": 1}),
        json!({"shell": "cat in.txt", "files": [{"path": "in.txt", "contentBase64": ""}], "organizationId": "org"}),
    ]
}

/// A valid body with some fields (top level or one level down) replaced, added or removed.
fn mutated_body() -> impl Strategy<Value = Value> {
    fuzz::mutated_body(templates(), FIELDS, json_value())
}

/// Any body a caller could send: arbitrary JSON, a mutated valid body.
fn any_body() -> impl Strategy<Value = Value> {
    prop_oneof![json_value(), mutated_body()]
}

/// A refusal must be a 400 `bad_request` with a message.
fn assert_bad_request(err: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.status, StatusCode::BAD_REQUEST);
    prop_assert_eq!(err.code, "bad_request");
    prop_assert!(err.message.as_deref().is_some_and(|m| !m.is_empty()));
    Ok(())
}

fn check<T>(result: Result<T, ApiError>) -> Result<Option<T>, TestCaseError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) => assert_bad_request(&err).map(|()| None),
    }
}

fn request(query: Option<String>, headers: HeaderMap, body: Bytes) -> ApiRequest {
    ApiRequest {
        method: Method::GET,
        path: "/v1/sessions".into(),
        query,
        headers,
        body,
        _lease: BodyLease::none(),
    }
}

/// Every route's body parser, on arbitrary and mutated bodies: accepted or refused as 400.
#[test]
fn route_bodies() {
    runner()
        .run(&any_body(), |body| {
            check(CreateSession::parse(&body, &TEST_LIMITS).map_err(ApiError::from))?;
            if let Some(exec) =
                check(SessionExec::parse(&body, &TEST_LIMITS).map_err(ApiError::from))?
            {
                // What goes to runnerd always serializes to a JSON object.
                let sent = serde_json::to_value(exec.runnerd_request(1024, 1024));
                prop_assert!(sent.is_ok_and(|v| v.is_object()));
            }
            check(execute_body(body.clone(), &TEST_LIMITS))?;
            check(
                AgentRunRequest::parse(&body, &TEST_LIMITS, "http://gw").map_err(ApiError::from),
            )?;
            check(SteerRequest::parse(&body, 4096).map_err(ApiError::from))?;
            check(stdin_body(&body))?;
            check(
                crate::shared::protocol::terminal::PtySize::from_value(&body)
                    .map_err(ApiError::bad_request),
            )?;
            check(pin_body(&body))?;
            check(env_patch_body(body.clone()))?;
            check(stage_body(body.clone()))?;
            check(delete_body(body.clone()))?;
            check(grant_body(body))?;
            Ok(())
        })
        .unwrap();
}

/// Arbitrary bytes as a body: valid JSON or 400.
#[test]
fn body_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any_body().prop_map(|v| v.to_string().into_bytes()),
        // Valid JSON cut short or with a byte flipped.
        (any_body(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut bytes = v.to_string().into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            bytes
        }),
    ];
    runner()
        .run(&bytes, |bytes| {
            let request = request(None, HeaderMap::new(), Bytes::from(bytes));
            check(request.json())?;
            Ok(())
        })
        .unwrap();
}

/// Signature headers: only exactly 64 hex digits and a fresh timestamp pass the pre-check, and
/// no made-up tag verifies.
#[test]
fn signature_headers() {
    const KEY: &[u8] = b"fuzz-key";
    let now = 1_700_000_000_000i64;
    let verifier = RequestVerifier::new(KEY, now - 10_000);
    let valid = sign_request(KEY, "GET", "/v1/sessions", &now.to_string(), None, b"");
    let signature = prop_oneof![
        text(),
        "[0-9a-fA-F]{64}",
        // The valid tag with one character replaced.
        (any::<prop::sample::Index>(), "[\\PC+]").prop_map(move |(at, c)| {
            let mut s = valid.clone();
            let at = at.index(s.len());
            s.replace_range(at..at + 1, &c);
            s
        }),
    ];
    let timestamp = prop_oneof![
        text(),
        (-40_000i64..40_000).prop_map(move |d| (now + d).to_string()),
    ];
    let headers = (
        prop::option::of(signature),
        prop::option::of(timestamp),
        prop::option::of(text()),
    );
    runner()
        .run(&headers, |(signature, timestamp, nonce)| {
            match verifier.precheck(signature.as_deref(), timestamp.as_deref(), now) {
                Ok(prechecked) => {
                    let signature = signature.unwrap();
                    prop_assert_eq!(signature.len(), 2 * MAC_LEN);
                    prop_assert!(signature.bytes().all(|b| b.is_ascii_hexdigit()));
                    let verified = verifier.verify_prechecked(
                        &prechecked,
                        "GET",
                        "/v1/sessions",
                        nonce.as_deref(),
                        b"",
                        now,
                    );
                    // Only the real tag for this exact request (once) can pass.
                    if verified.is_ok() {
                        let again = verifier.verify_prechecked(
                            &prechecked,
                            "GET",
                            "/v1/sessions",
                            nonce.as_deref(),
                            b"",
                            now,
                        );
                        prop_assert_eq!(again, Err(AuthFailure::Replay));
                    }
                }
                Err(AuthFailure::Replay) => prop_assert!(false, "replay before verification"),
                Err(_) => {}
            }
            Ok(())
        })
        .unwrap();
}

/// `Last-Event-ID` and `sinceSeq`: any text parses to a position or to nothing, the header winning
/// when it parses; agent positions round-trip through their ids.
#[test]
fn resume_positions() {
    let inputs = (prop::option::of(text()), prop::option::of(text()));
    runner()
        .run(&inputs, |(header, since)| {
            let mut headers = HeaderMap::new();
            if let Some(value) = header
                .as_deref()
                .and_then(|h| hyper::header::HeaderValue::from_str(h).ok())
            {
                headers.insert("last-event-id", value);
            }
            let query = since.as_ref().map(|s| {
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("sinceSeq", s)
                    .finish()
            });
            let request = request(query, headers.clone(), Bytes::new());
            let seq = request.resume_position(|v| v.trim().parse::<u64>().ok());
            let from_header = headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if from_header.is_some() {
                prop_assert_eq!(seq, from_header);
            }
            if let Some(position) = request.resume_position(StreamPosition::parse) {
                if position.sub > 0 {
                    prop_assert_eq!(StreamPosition::parse(&position.id()), Some(position));
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Query strings: any text is read without panicking, and an encoded pair reads back exactly.
#[test]
fn query_strings() {
    let inputs = (text(), text(), text());
    runner()
        .run(&inputs, |(raw, name, value)| {
            let request = request(Some(raw.clone()), HeaderMap::new(), Bytes::new());
            for name in [
                "path",
                "organizationId",
                "if_idle",
                "agent",
                "sinceSeq",
                &name,
            ] {
                let _ = request.query(name);
            }
            let encoded = form_urlencoded::Serializer::new(String::new())
                .append_pair(&name, &value)
                .finish();
            let request = request_with_query(format!("{encoded}&{raw}"));
            prop_assert_eq!(request.query(&name), Some(value.clone()));
            // The credential path segment decodes without panicking, exactly for encoded text.
            let segment: String =
                percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            prop_assert_eq!(revoke_host(&segment), value);
            let _ = revoke_host(&raw);
            Ok(())
        })
        .unwrap();
}

fn request_with_query(query: String) -> ApiRequest {
    request(Some(query), HeaderMap::new(), Bytes::new())
}

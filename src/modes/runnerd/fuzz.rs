//! Property-driven fuzzing of everything runnerd parses from outside: the body of every route
//! (arbitrary JSON, valid bodies with fields replaced, and arbitrary or corrupted bytes), the exec
//! request's validation, `/stdin` lines and base64, env patches, files API requests and paths
//! (lexically, and against a real scratch workspace with escaping symlinks), the NDJSON line
//! splitter, `sinceSeq`, query strings and the credential path segment. Each target must never
//! panic, must refuse with the documented error, and must round-trip where a round trip exists.
//!
//! Cases per target: `TALE_FUZZ_CASES` (default [`DEFAULT_CASES`]; the scratch-workspace target
//! runs a tenth of that, each case doing real file operations); a longer local run is
//! `TALE_FUZZ_CASES=20000 cargo test --lib runnerd::fuzz -- --test-threads=1`.
use super::credentials::CredentialStore;
use super::env_store::{is_denied_name, EnvStore};
use super::exec::spec::{parse_exec_id, parse_request, ExecSpec};
use super::exec::stdin::parse_line;
use super::files::beneath::normalize;
use super::files::Workspace;
use super::limits::{MAX_ENV_ENTRIES, MAX_ENV_VALUE_BYTES, MAX_STDIN_LINE_BYTES};
use super::server::{decode_body, parse_since_seq, revoke_host};
use crate::shared::fuzz::{self, runner_with};
use crate::shared::http::query_value;
use crate::shared::ndjson::NdjsonLines;
use crate::shared::protocol::runnerd::{
    decode_lenient_base64, is_valid_id, DeleteRequest, EnvPatch, ExecRequestWire, FailCode,
    GitCredentialGrant, StageItem, StageRequest, StdinRefusal, StdinRequest, MAX_ID_LEN,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Cases per target when `TALE_FUZZ_CASES` is unset.
pub const DEFAULT_CASES: u32 = 1000;

fn cases() -> u32 {
    fuzz::cases(DEFAULT_CASES)
}

fn runner() -> TestRunner {
    runner_with(cases())
}

/// Text with what matters to these parsers: digits, signs, dots, slashes, percent escapes,
/// base64 characters and padding, whitespace, control characters and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-zA-Z+/=\\-. %&_]{0,60}",
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f/.=é€😀]{0,8}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    fuzz::json_value(text().boxed())
}

/// Every field name a runnerd route reads, so that mutations hit real fields.
const FIELDS: &[&str] = &[
    "execId",
    "command",
    "shell",
    "cwd",
    "env",
    "stdinBase64",
    "stdinMode",
    "timeoutMs",
    "stdoutMaxBytes",
    "stderrMaxBytes",
    "b64",
    "eof",
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
    "digest",
];

/// Valid bodies of every runnerd route that takes one, to mutate.
fn templates() -> Vec<Value> {
    vec![
        json!({"execId": "e1", "command": ["ls", "-l"], "cwd": "sub", "env": {"X": "y"}, "timeoutMs": 1000, "stdoutMaxBytes": 10, "stderrMaxBytes": 0}),
        json!({"execId": "e-2_", "shell": "echo hi", "stdinBase64": "aGk", "stdinMode": "hold"}),
        json!({"b64": "eyJhIjoxfQo=", "eof": false}),
        json!({"eof": true}),
        json!({"set": {"A": "1", "PATH": "/x"}, "unset": ["B"]}),
        json!({"files": [{"path": "a.txt", "contentBase64": "aGk="}, {"path": "b", "url": "x:y"}]}),
        json!({"paths": ["a", "b/c"]}),
        json!({"host": "github.com", "username": "u", "password": "p", "expiresAtMs": 1}),
        json!({"digest": "0123456789abcdef".repeat(4)}),
    ]
}

/// A valid body with some fields (top level or one level down) replaced, added or removed.
fn mutated_body() -> impl Strategy<Value = Value> {
    fuzz::mutated_body(templates(), FIELDS, json_value())
}

fn any_body() -> impl Strategy<Value = Value> {
    prop_oneof![json_value(), mutated_body()]
}

/// A decoded body, or a refusal (400 `bad_request`) with a message.
fn decoded<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, TestCaseError> {
    match decode_body::<T>(bytes) {
        Ok(value) => Ok(Some(value)),
        Err(message) => {
            prop_assert!(!message.is_empty());
            Ok(None)
        }
    }
}

/// `POST /execs`: a body decodes and validates, or is refused with `fail BAD_REQUEST` and a
/// message; an accepted request sent again as the spawner serializes it validates to itself.
fn check_exec(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Some(wire) = decoded::<ExecRequestWire>(bytes)? else {
        return Ok(());
    };
    let exec_id = match parse_exec_id(&wire) {
        Ok(id) => id,
        Err(err) => {
            prop_assert_eq!(err.code, FailCode::BadRequest);
            prop_assert_eq!(err.message, "invalid execId");
            return Ok(());
        }
    };
    prop_assert!(is_valid_id(&exec_id));
    let (request, stdin) = match parse_request(exec_id.clone(), &wire) {
        Ok(parsed) => parsed,
        Err(err) => {
            prop_assert_eq!(err.code, FailCode::BadRequest);
            prop_assert!(!err.message.is_empty());
            return Ok(());
        }
    };
    prop_assert!(request.command.is_some() != request.shell.is_some());
    let resent = serde_json::to_vec(&request).unwrap();
    let rewire = decode_body::<ExecRequestWire>(&resent).unwrap();
    prop_assert_eq!(parse_exec_id(&rewire), Ok(exec_id.clone()));
    let reparsed = parse_request(exec_id, &rewire).unwrap();
    prop_assert_eq!(&reparsed, &(request.clone(), stdin.clone()));
    let spec = ExecSpec::new(request, stdin);
    prop_assert!(spec.env.iter().all(|(name, _)| !is_denied_name(name)));
    prop_assert!(!spec.timeout.is_zero());
    Ok(())
}

/// Every other route's body, with what the route does right after decoding it.
fn check_other_routes(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(stdin) = decoded::<StdinRequest>(bytes)? {
        if let Some(b64) = stdin.b64.as_deref().filter(|b| !b.is_empty()) {
            check_stdin_line(b64)?;
        }
    }
    if let Some(patch) = decoded::<EnvPatch>(bytes)? {
        let mut store = EnvStore::default();
        check_env_patch(&mut store, &patch)?;
    }
    if let Some(stage) = decoded::<StageRequest>(bytes)? {
        for item in &stage.files {
            check_path(&item.path)?;
        }
    }
    if let Some(delete) = decoded::<DeleteRequest>(bytes)? {
        for path in &delete.paths {
            check_path(path)?;
        }
    }
    if let Some(mark) = decoded::<crate::shared::protocol::runnerd::SeedMark>(bytes)? {
        // Accepted only as 64 lowercase hex digits, which is what the record then holds.
        if mark.is_valid() {
            prop_assert!(mark
                .digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            prop_assert_eq!(mark.digest.len(), 64);
        }
    }
    if let Some(grant) = decoded::<GitCredentialGrant>(bytes)? {
        let host = grant.host.to_ascii_lowercase();
        let store = CredentialStore::default();
        match store.grant(grant) {
            Ok(()) => prop_assert!(store.revoke(&host)),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }
    Ok(())
}

/// Every route's body as JSON: arbitrary values and mutated valid bodies.
#[test]
fn route_bodies() {
    runner()
        .run(&any_body(), |body| {
            let bytes = body.to_string().into_bytes();
            check_exec(&bytes)?;
            check_other_routes(&bytes)
        })
        .unwrap();
}

/// Every route's body as bytes: arbitrary, and valid JSON cut short or with a byte replaced.
#[test]
fn body_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (any_body(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let bytes = v.to_string().into_bytes();
            let at = at.index(bytes.len() + 1);
            bytes[..at].to_vec()
        }),
        (any_body(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut bytes = v.to_string().into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            bytes
        }),
    ];
    runner()
        .run(&bytes, |bytes| {
            check_exec(&bytes)?;
            check_other_routes(&bytes)?;
            // Only an object is ever accepted, whatever the route. (Not necessarily valid JSON
            // throughout: serde skips unknown fields without checking their strings' UTF-8.)
            if decode_body::<StdinRequest>(&bytes).is_ok() {
                let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
                prop_assert_eq!(first, Some(&b'{'));
            }
            Ok(())
        })
        .unwrap();
}

/// The `/stdin` line rule: one JSON value, 1..=64 KiB, ending in its only `\n`.
fn check_stdin_line(b64: &str) -> Result<(), TestCaseError> {
    match parse_line(b64) {
        Ok(line) => {
            prop_assert!(!line.is_empty() && line.len() <= MAX_STDIN_LINE_BYTES);
            prop_assert_eq!(line.iter().position(|b| *b == b'\n'), Some(line.len() - 1));
            prop_assert!(serde_json::from_slice::<Value>(&line).is_ok());
        }
        Err(refusal) => prop_assert_eq!(refusal, StdinRefusal::BadLine),
    }
    Ok(())
}

/// `/stdin` payloads: arbitrary text as base64, and arbitrary bytes (mostly JSON lines) encoded
/// with and without padding, which decode back exactly and pass exactly when they are one line.
#[test]
fn stdin_lines() {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        json_value().prop_map(|v| format!("{v}\n").into_bytes()),
        (json_value(), "[\\n \\r\\t{}]{0,3}")
            .prop_map(|(v, tail)| format!("{v}{tail}").into_bytes()),
    ];
    runner()
        .run(&(text(), payload), |(b64, bytes)| {
            check_stdin_line(&b64)?;
            for encoded in [
                base64_simd::STANDARD.encode_to_string(&bytes),
                base64_simd::STANDARD_NO_PAD.encode_to_string(&bytes),
            ] {
                prop_assert_eq!(decode_lenient_base64(&encoded), Ok(bytes.clone()));
                let one_line = !bytes.is_empty()
                    && bytes.len() <= MAX_STDIN_LINE_BYTES
                    && bytes.iter().position(|b| *b == b'\n') == Some(bytes.len() - 1)
                    && serde_json::from_slice::<Value>(&bytes).is_ok();
                prop_assert_eq!(parse_line(&encoded).is_ok(), one_line);
            }
            Ok(())
        })
        .unwrap();
}

/// Applies `patch` and checks the store's invariants and the reply's `denied`.
fn check_env_patch(store: &mut EnvStore, patch: &EnvPatch) -> Result<(), TestCaseError> {
    let set = patch.set.clone().unwrap_or_default();
    let unset = patch.unset.clone().unwrap_or_default();
    let before = store.vars().clone();
    let denied = store.patch(&set, &unset);
    let vars = store.vars();
    prop_assert!(vars.len() <= MAX_ENV_ENTRIES);
    for (name, value) in vars {
        prop_assert!(!is_denied_name(name), "stored a denied name {:?}", name);
        prop_assert!(value.len() <= MAX_ENV_VALUE_BYTES && !value.contains('\0'));
        prop_assert!(before.get(name) == Some(value) || set.get(name) == Some(value));
    }
    for name in &denied {
        prop_assert!(set.contains_key(name) || unset.contains(name));
    }
    for (name, value) in &set {
        if !denied.contains(name) && !unset.contains(name) {
            prop_assert_eq!(vars.get(name), Some(value));
        }
    }
    for name in &unset {
        if !is_denied_name(name) {
            prop_assert!(!vars.contains_key(name));
        }
    }
    Ok(())
}

/// Env names: ordinary, deny-listed in any case, or unusable (`=`, NUL, empty).
fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z_]{1,4}",
        prop::sample::select(vec![
            "HOME",
            "path",
            "TmpDir",
            "TALE_RUNNERD_TOKEN",
            "https_proxy",
            "No_Proxy",
            "",
            "A=B",
            "A\0B",
        ])
        .prop_map(str::to_owned),
        text(),
    ]
}

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => text(),
        1 => Just("v\0".to_owned()),
        1 => (0usize..3).prop_map(|extra| "x".repeat(MAX_ENV_VALUE_BYTES - 1 + extra)),
    ]
}

/// `POST /env`: several patches in a row keep the store's invariants, and `denied` is exact.
#[test]
fn env_patches() {
    let patch = (
        prop::option::of(prop::collection::btree_map(env_name(), env_value(), 0..8)),
        prop::option::of(prop::collection::vec(env_name(), 0..4)),
    )
        .prop_map(|(set, unset)| EnvPatch { set, unset });
    runner()
        .run(&prop::collection::vec(patch, 1..4), |patches| {
            let mut store = EnvStore::default();
            for patch in &patches {
                check_env_patch(&mut store, patch)?;
            }
            Ok(())
        })
        .unwrap();
}

/// A lexically accepted path is made of plain names only, so it stays beneath the root.
fn check_path(input: &str) -> Result<(), TestCaseError> {
    let root = Path::new("/srv/ws");
    if let Some(rel) = normalize(root, input) {
        let rel = rel.as_path();
        prop_assert!(rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)));
        prop_assert!(root.join(rel).starts_with(root));
        prop_assert!(!input.contains('\0'));
    }
    Ok(())
}

/// Paths built from the pieces that matter (`..`, `.`, empty segments, the root itself, names of
/// escaping symlinks) and arbitrary text.
fn file_path(root: PathBuf) -> impl Strategy<Value = String> {
    let root = root.display().to_string();
    let segment = prop::sample::select(vec![
        "a", "b", "..", ".", "", "escape", "abs", "secret", "outside", "a\0",
    ]);
    let joined = (
        any::<bool>(),
        prop::collection::vec(segment, 0..6),
        any::<bool>(),
    )
        .prop_map(move |(absolute, parts, slash)| {
            let mut path = if absolute {
                root.clone()
            } else {
                String::new()
            };
            for part in parts {
                if !path.is_empty() || absolute {
                    path.push('/');
                }
                path.push_str(part);
            }
            if slash {
                path.push('/');
            }
            path
        });
    prop_oneof![4 => joined, 1 => text(), 1 => Just("/etc/passwd".to_owned())]
}

/// Files API paths, lexically: an accepted path never leaves the root, and an absolute path under
/// the root means the same as its relative form.
#[test]
fn file_paths_lexically() {
    let root = PathBuf::from("/srv/ws");
    runner()
        .run(&file_path(root.clone()), |path| {
            check_path(&path)?;
            if !path.starts_with('/') {
                let absolute = format!("{}/{path}", root.display());
                prop_assert_eq!(normalize(&root, &absolute), normalize(&root, &path));
            }
            Ok(())
        })
        .unwrap();
}

/// A scratch workspace next to an "outside" directory (the host) that symlinks inside point to.
struct Scratch {
    base: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let base = std::env::temp_dir().join(format!("tale-runnerd-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("ws")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        Scratch { base }
    }

    fn ws(&self) -> PathBuf {
        std::fs::canonicalize(self.base.join("ws")).unwrap()
    }

    /// Puts back the host file and the escaping symlinks (a case may have deleted them).
    fn reset(&self) {
        std::fs::write(self.base.join("outside/secret"), b"host file").unwrap();
        let ws = self.ws();
        for (name, target) in [
            ("escape", PathBuf::from("../outside")),
            ("abs", self.base.join("outside")),
        ] {
            let link = ws.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(target, link).unwrap();
            }
        }
    }

    /// What the host directory holds: names and contents.
    fn outside(&self) -> Vec<(String, Vec<u8>)> {
        let mut entries: Vec<_> = std::fs::read_dir(self.base.join("outside"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let content = std::fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), content)
            })
            .collect();
        entries.sort();
        entries
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The files API on a real workspace: stage, delete, list and read of generated paths never touch
/// the host directory (through `..`, absolute paths or symlinks), and stage and delete answer for
/// every path, in order. URLs are never http(s), so nothing is fetched.
#[test]
fn files_api_in_a_scratch_workspace() {
    let scratch = Scratch::new();
    let workspace = Workspace::open(&scratch.ws(), None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let item = (
        file_path(scratch.ws()),
        prop::option::of(text().prop_map(|t| format!("x{t}"))),
        prop::option::of(prop_oneof![
            "[A-Za-z0-9+/]{0,12}={0,2}".boxed(),
            text().boxed()
        ]),
    )
        .prop_map(|(path, url, content_base64)| StageItem {
            path,
            url,
            content_base64,
        });
    let case = (
        prop::collection::vec(item, 0..4),
        prop::collection::vec(file_path(scratch.ws()), 0..3),
        file_path(scratch.ws()),
    );
    runner_with(cases() / 10)
        .run(&case, |(files, deletes, probe)| {
            scratch.reset();
            let host = scratch.outside();
            runtime.block_on(async {
                let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
                let reply = workspace.stage(StageRequest { files }).await;
                let mut answered: Vec<&String> = reply.staged.iter().map(|s| &s.path).collect();
                answered.extend(reply.skipped.iter().map(|s| &s.path));
                prop_assert_eq!(answered.len(), paths.len());
                prop_assert!(reply.skipped.iter().all(|s| !s.reason.is_empty()));
                let _ = workspace.list(&probe).await;
                let _ = workspace.read(&probe).await;
                let reply = workspace
                    .delete(DeleteRequest {
                        paths: deletes.clone(),
                    })
                    .await;
                prop_assert_eq!(reply.deleted.len() + reply.skipped.len(), deletes.len());
                Ok(())
            })?;
            prop_assert_eq!(scratch.outside(), host);
            Ok(())
        })
        .unwrap();
}

/// The NDJSON splitter: any chunking of a stream gives the lines of the whole stream; a stream
/// whose every line fits the cap never errs; lines given before an error are the stream's.
#[test]
fn ndjson_chunking() {
    let stream = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(
            prop_oneof![Just(b'\n'), Just(b' '), Just(b'\r'), Just(b'x')],
            0..200
        ),
        prop::collection::vec(json_value(), 0..6).prop_map(|values| {
            values
                .iter()
                .map(|v| format!("{v}\n"))
                .collect::<String>()
                .into_bytes()
        }),
    ];
    let cuts = prop::collection::vec(any::<prop::sample::Index>(), 0..12);
    runner()
        .run(&(stream, cuts, 1usize..64), |(stream, cuts, cap)| {
            let segments: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
            let complete = &segments[..segments.len() - 1];
            let expected: Vec<&[u8]> = complete
                .iter()
                .copied()
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            for max in [usize::MAX, cap] {
                let mut lines = NdjsonLines::new(max);
                let mut got = Vec::new();
                let mut erred = false;
                let mut start = 0;
                'chunks: for &end in &cuts {
                    lines.push(&stream[start..end]);
                    start = end;
                    loop {
                        match lines.next_line() {
                            Ok(Some(line)) => got.push(line),
                            Ok(None) => break,
                            Err(err) => {
                                prop_assert_eq!(err.max_line_bytes, max);
                                erred = true;
                                break 'chunks;
                            }
                        }
                    }
                }
                prop_assert!(got.len() <= expected.len());
                for (line, want) in got.iter().zip(&expected) {
                    prop_assert_eq!(&line[..], *want);
                }
                if segments.iter().all(|s| s.len() <= max) {
                    prop_assert!(!erred);
                }
                if !erred {
                    prop_assert_eq!(got.len(), expected.len());
                }
                if segments.last().is_some_and(|tail| tail.len() > max) {
                    prop_assert!(erred, "an over-long unterminated tail must err");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// `sinceSeq`, query strings, route ids and the credential path segment: any text is read without
/// panicking; `sinceSeq` is exactly a decimal `u64` and round-trips through the query string; an
/// encoded pair and an encoded host segment read back exactly.
#[test]
fn since_seq_queries_and_segments() {
    let inputs = (text(), text(), text(), any::<u64>());
    runner()
        .run(&inputs, |(raw, name, value, seq)| {
            match parse_since_seq(Some(&raw)) {
                Ok(n) => prop_assert_eq!(raw.parse::<u64>(), Ok(n)),
                Err(message) => {
                    prop_assert!(raw.parse::<u64>().is_err());
                    prop_assert_eq!(message, "sinceSeq must be a non-negative integer");
                }
            }
            prop_assert_eq!(parse_since_seq(None), Ok(0));
            let since = query_value(&raw, "sinceSeq");
            let _ = parse_since_seq(since.as_deref());
            let encoded = form_urlencoded::Serializer::new(String::new())
                .append_pair("sinceSeq", &seq.to_string())
                .append_pair(&name, &value)
                .finish();
            let query = format!("{encoded}&{raw}");
            prop_assert_eq!(
                parse_since_seq(query_value(&query, "sinceSeq").as_deref()),
                Ok(seq)
            );
            if name != "sinceSeq" {
                prop_assert_eq!(query_value(&query, &name), Some(value.clone()));
            }
            let segment =
                percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            prop_assert_eq!(revoke_host(&segment), value);
            let _ = revoke_host(&raw);
            if is_valid_id(&raw) {
                prop_assert!(raw.len() <= MAX_ID_LEN && raw.is_ascii() && !raw.contains('/'));
            }
            Ok(())
        })
        .unwrap();
}

/// The reply of `POST /env` for a body whose `set` is not a map of strings is a 400, not a
/// partial patch: the shapes are checked before anything is applied.
#[test]
fn env_patch_shapes_are_checked_first() {
    for body in [
        &br#"{"set":{"A":1}}"#[..],
        br#"{"set":["A"]}"#,
        br#"{"unset":"A"}"#,
        br#"{"set":{"A":"1"},"unset":[1]}"#,
    ] {
        assert!(decode_body::<EnvPatch>(body).is_err(), "{body:?}");
    }
    let patch: EnvPatch = decode_body(br#"{"set":{"A":"1"},"other":true}"#).unwrap();
    assert_eq!(patch.set, Some(BTreeMap::from([("A".into(), "1".into())])));
}

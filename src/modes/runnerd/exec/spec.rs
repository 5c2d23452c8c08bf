//! Parse, don't validate: `ExecRequestWire` (untrusted JSON) becomes the typed [`ExecRequest`] of
//! the wire contract — or a `fail` event with the specified code and message, checked in the
//! original daemon's order — and then an [`ExecSpec`], what the launcher runs.
/// Kept here too for callers of the exec module; the rule itself is part of the wire contract.
pub use crate::shared::protocol::runnerd::decode_lenient_base64;
pub use crate::shared::protocol::runnerd::StdinMode;
use crate::shared::protocol::runnerd::{
    is_denied_name, is_valid_id, ExecRequest, ExecRequestWire, FailCode, PtySize,
    DEFAULT_EXEC_TIMEOUT_MS,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A request refused before spawn: becomes one seq-less `fail` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub code: FailCode,
    pub message: String,
}

impl SpecError {
    fn bad(message: impl Into<String>) -> Self {
        SpecError {
            code: FailCode::BadRequest,
            message: message.into(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `command[0]` with `command[1..]`, no shell.
    Argv(Vec<String>),
    /// A shell command line, run by `bash -lc` (or `sh -lc` where there is no bash).
    Shell(String),
}

/// A validated exec request (cwd still to be resolved).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub exec_id: String,
    pub program: Program,
    /// The requested cwd, as given; see [`resolve_cwd`].
    pub cwd: Option<String>,
    /// Per-exec overlay with deny-listed names already dropped.
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub stdin_mode: StdinMode,
    pub timeout: Duration,
    pub stdout_cap: Option<u64>,
    pub stderr_cap: Option<u64>,
    /// Run on a pseudo-terminal of this size instead of pipes.
    pub pty: Option<PtySize>,
}

/// Step 2 of the order: the exec id.
pub fn parse_exec_id(wire: &ExecRequestWire) -> Result<String, SpecError> {
    match &wire.exec_id {
        Some(Value::String(id)) if is_valid_id(id) => Ok(id.clone()),
        _ => Err(SpecError::bad("invalid execId")),
    }
}

/// Steps 4 onwards (the id was parsed and checked for duplicates already), except the cwd.
pub fn parse_spec(exec_id: String, wire: &ExecRequestWire) -> Result<ExecSpec, SpecError> {
    let (request, stdin) = parse_request(exec_id, wire)?;
    Ok(ExecSpec::new(request, stdin))
}

/// The typed request, checked field by field in the original's order, with its stdin decoded
/// (the decoding is the check of `stdinBase64`).
pub fn parse_request(
    exec_id: String,
    wire: &ExecRequestWire,
) -> Result<(ExecRequest, Vec<u8>), SpecError> {
    let (command, shell) = parse_program(wire)?;
    let cwd = match &wire.cwd {
        None | Some(Value::Null) => None,
        Some(Value::String(cwd)) => Some(cwd.clone()),
        Some(_) => return Err(SpecError::bad("cwd must be a string")),
    };
    let env = parse_env(wire.env.as_ref())?;
    let (stdin_base64, stdin) = match &wire.stdin_base64 {
        None | Some(Value::Null) => (None, Vec::new()),
        Some(Value::String(b64)) => (
            Some(b64.clone()),
            decode_lenient_base64(b64)
                .map_err(|_| SpecError::bad("stdinBase64 is not valid base64"))?,
        ),
        Some(_) => return Err(SpecError::bad("stdinBase64 must be a string")),
    };
    let stdin_mode = match &wire.stdin_mode {
        None | Some(Value::Null) => StdinMode::Close,
        Some(Value::String(mode)) if mode == "close" => StdinMode::Close,
        Some(Value::String(mode)) if mode == "hold" => StdinMode::Hold,
        Some(Value::String(mode)) if mode == "raw" => StdinMode::Raw,
        // The message predates `raw` and is part of recorded transcripts: kept as it was.
        Some(_) => return Err(SpecError::bad("stdinMode must be \"close\" or \"hold\"")),
    };
    // A terminal takes keystrokes: its stdin is raw, whatever else was asked is refused.
    let (pty, stdin_mode) = match &wire.pty {
        None | Some(Value::Null) => (None, stdin_mode),
        Some(value) => {
            let size = PtySize::from_value(value).map_err(SpecError::bad)?;
            if !matches!(wire.stdin_mode, None | Some(Value::Null)) && stdin_mode != StdinMode::Raw
            {
                return Err(SpecError::bad("a pty exec's stdinMode is \"raw\""));
            }
            (Some(size), StdinMode::Raw)
        }
    };
    let request = ExecRequest {
        exec_id,
        command,
        shell,
        cwd,
        env,
        stdin_base64,
        stdin_mode,
        timeout_ms: positive_number(wire.timeout_ms.as_ref(), "timeoutMs")?,
        stdout_max_bytes: positive_number(wire.stdout_max_bytes.as_ref(), "stdoutMaxBytes")?,
        stderr_max_bytes: positive_number(wire.stderr_max_bytes.as_ref(), "stderrMaxBytes")?,
        pty,
    };
    Ok((request, stdin))
}

impl ExecSpec {
    /// What runs for a validated request whose `stdinBase64` decoded to `stdin`.
    pub fn new(request: ExecRequest, stdin: Vec<u8>) -> ExecSpec {
        let program = match (request.command, request.shell) {
            (Some(argv), _) => Program::Argv(argv),
            (None, shell) => Program::Shell(shell.unwrap_or_default()),
        };
        let positive = |n: u64| (n > 0).then_some(n);
        ExecSpec {
            exec_id: request.exec_id,
            program,
            cwd: request.cwd,
            env: request
                .env
                .into_iter()
                .filter(|(name, _)| !is_denied_name(name))
                .collect(),
            stdin,
            stdin_mode: request.stdin_mode,
            timeout: Duration::from_millis(
                positive(request.timeout_ms).unwrap_or(DEFAULT_EXEC_TIMEOUT_MS),
            ),
            stdout_cap: positive(request.stdout_max_bytes),
            stderr_cap: positive(request.stderr_max_bytes),
            pty: request.pty,
        }
    }
}

type CommandOrShell = (Option<Vec<String>>, Option<String>);

fn parse_program(wire: &ExecRequestWire) -> Result<CommandOrShell, SpecError> {
    const EXACTLY_ONE: &str = "exactly one of command[] or shell required";
    let command = wire.command.as_ref().filter(|v| !v.is_null());
    let shell = wire.shell.as_ref().filter(|v| !v.is_null());
    match (command, shell) {
        (Some(Value::Array(items)), None) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|argv| (Some(argv), None))
            .ok_or_else(|| SpecError::bad("command[] must hold only strings")),
        (None, Some(Value::String(shell))) if !shell.is_empty() => Ok((None, Some(shell.clone()))),
        _ => Err(SpecError::bad(EXACTLY_ONE)),
    }
}

/// The overlay as sent (deny-listed names included: [`ExecSpec::new`] drops them).
fn parse_env(env: Option<&Value>) -> Result<BTreeMap<String, String>, SpecError> {
    let object = match env {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(SpecError::bad("env must be an object")),
    };
    let mut vars = BTreeMap::new();
    for (name, value) in object {
        let Some(value) = value.as_str() else {
            return Err(SpecError::bad(format!("env.{name} must be a string")));
        };
        if value.contains('\0') {
            return Err(SpecError::bad(format!("env.{name} must not contain NUL")));
        }
        vars.insert(name.clone(), value.to_owned());
    }
    Ok(vars)
}

/// A number ≥ 1 (floored) → itself; below 1 or absent → 0 (the default); anything else is refused.
fn positive_number(value: Option<&Value>, field: &str) -> Result<u64, SpecError> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => {
            let n = n.as_f64().unwrap_or(0.0);
            Ok(if n >= 1.0 { n as u64 } else { 0 })
        }
        Some(_) => Err(SpecError::bad(format!("{field} must be a number"))),
    }
}

/// The cwd rule: default the root, relative joins the root, the real path must exist and be the
/// root or beneath it (symlinks resolved), and must be a directory. Blocking.
pub fn resolve_cwd(root: &Path, cwd: Option<&str>) -> Result<PathBuf, SpecError> {
    let invalid = || SpecError {
        code: FailCode::InvalidCwd,
        message: format!("cwd must resolve under {} and exist", root.display()),
    };
    let joined = match cwd {
        None | Some("") => root.to_path_buf(),
        Some(cwd) if cwd.contains('\0') => return Err(invalid()),
        Some(cwd) => root.join(cwd),
    };
    let real = std::fs::canonicalize(&joined).map_err(|_| invalid())?;
    if !real.starts_with(root) || !real.is_dir() {
        return Err(invalid());
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: &str) -> ExecRequestWire {
        serde_json::from_str(json).unwrap()
    }

    fn spec(json: &str) -> Result<ExecSpec, SpecError> {
        let w = wire(json);
        parse_spec(parse_exec_id(&w)?, &w)
    }

    /// Ids, command/shell exclusivity and field types map to BAD_REQUEST with the original messages.
    #[test]
    fn request_validation() {
        assert_eq!(
            spec(r#"{"execId":"a/b","shell":"x"}"#).unwrap_err().message,
            "invalid execId"
        );
        assert_eq!(
            spec(r#"{"shell":"x"}"#).unwrap_err().message,
            "invalid execId"
        );
        for body in [
            r#"{"execId":"a"}"#,
            r#"{"execId":"a","shell":"x","command":["y"]}"#,
            r#"{"execId":"a","command":[]}"#,
            r#"{"execId":"a","shell":""}"#,
            r#"{"execId":"a","command":"ls"}"#,
        ] {
            let err = spec(body).unwrap_err();
            assert_eq!(err.code, FailCode::BadRequest);
            assert_eq!(
                err.message, "exactly one of command[] or shell required",
                "{body}"
            );
        }
        let err = spec(r#"{"execId":"a","shell":"x","env":{"A":1}}"#).unwrap_err();
        assert_eq!(err.message, "env.A must be a string");
        assert!(spec(r#"{"execId":"a","shell":"x","stdinMode":"open"}"#).is_err());
        assert!(spec(r#"{"execId":"a","shell":"x","stdinBase64":"%%%"}"#).is_err());
        assert!(spec(r#"{"execId":"a","command":["ls",3]}"#).is_err());
    }

    /// Defaults, caps (≤0 = unlimited) and the env overlay's deny-list.
    #[test]
    fn defaults_and_overlay() {
        let s = spec(
            r#"{"execId":"a","command":["ls"],"timeoutMs":1500.7,"stdoutMaxBytes":10,"stderrMaxBytes":0,
                "env":{"A":"1","PATH":"/evil","http_proxy":"x"},"stdinBase64":"aGk"}"#,
        )
        .unwrap();
        assert_eq!(s.program, Program::Argv(vec!["ls".into()]));
        assert_eq!(s.timeout, Duration::from_millis(1500));
        assert_eq!((s.stdout_cap, s.stderr_cap), (Some(10), None));
        assert_eq!(s.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(s.stdin, b"hi");
        assert_eq!(s.stdin_mode, StdinMode::Close);
        assert_eq!(s.pty, None);
        let d = spec(r#"{"execId":"a","shell":"true"}"#).unwrap();
        assert_eq!(d.timeout, Duration::from_millis(DEFAULT_EXEC_TIMEOUT_MS));
    }

    /// `pty` is a size within bounds; its stdin is raw (absent or `raw` only); `raw` stands alone
    /// too.
    #[test]
    fn pty_and_raw_stdin() {
        let s = spec(r#"{"execId":"a","shell":"bash","pty":{"cols":80,"rows":24}}"#).unwrap();
        assert_eq!(s.pty, Some(PtySize { cols: 80, rows: 24 }));
        assert_eq!(s.stdin_mode, StdinMode::Raw);
        let s =
            spec(r#"{"execId":"a","shell":"bash","pty":{"cols":8,"rows":2},"stdinMode":"raw"}"#)
                .unwrap();
        assert_eq!(s.stdin_mode, StdinMode::Raw);
        let s = spec(r#"{"execId":"a","shell":"cat","stdinMode":"raw"}"#).unwrap();
        assert_eq!((s.pty, s.stdin_mode), (None, StdinMode::Raw));
        for (body, message) in [
            (
                r#"{"execId":"a","shell":"x","pty":{"cols":0,"rows":24}}"#,
                PtySize::rule(),
            ),
            (
                r#"{"execId":"a","shell":"x","pty":"80x24"}"#,
                PtySize::rule(),
            ),
            (
                r#"{"execId":"a","shell":"x","pty":{"cols":80,"rows":24},"stdinMode":"hold"}"#,
                "a pty exec's stdinMode is \"raw\"".to_string(),
            ),
            (
                r#"{"execId":"a","shell":"x","stdinMode":"lines"}"#,
                "stdinMode must be \"close\" or \"hold\"".to_string(),
            ),
        ] {
            let err = spec(body).unwrap_err();
            assert_eq!(
                (err.code, err.message),
                (FailCode::BadRequest, message),
                "{body}"
            );
        }
    }

    /// The contract is one type: whatever request the spawner builds, runnerd's validation of its
    /// JSON yields the same typed request (and the stdin it carries).
    #[test]
    fn spawner_requests_decode_to_the_same_request() {
        use crate::shared::protocol::spawner::{SessionExec, TEST_LIMITS};
        for body in [
            serde_json::json!({"execId": "e", "command": ["ls", "-l"], "timeoutMs": 5}),
            serde_json::json!({"execId": "e2", "shell": "echo $A", "cwd": "sub", "stdinMode": "hold",
                "env": {"A": "1", "B": "2"}, "stdinBase64": "aGk=", "collectOutput": false}),
            serde_json::json!({"execId": "e3", "shell": "bash", "pty": {"cols": 80, "rows": 24}}),
            serde_json::json!({"execId": "e4", "command": ["cat"], "stdinMode": "raw"}),
        ] {
            let exec = SessionExec::parse(&body, &TEST_LIMITS).unwrap();
            let sent = exec.runnerd_request(7, 8);
            let wire: ExecRequestWire =
                serde_json::from_slice(&serde_json::to_vec(&sent).unwrap()).unwrap();
            let (decoded, stdin) = parse_request(parse_exec_id(&wire).unwrap(), &wire).unwrap();
            assert_eq!(decoded, sent);
            let expected_stdin = sent
                .stdin_base64
                .as_deref()
                .map(|b64| decode_lenient_base64(b64).unwrap())
                .unwrap_or_default();
            assert_eq!(stdin, expected_stdin);
        }
    }

    /// cwd must exist beneath the root, also after resolving symlinks.
    #[test]
    fn cwd_rule() {
        let base = std::env::temp_dir().join(format!("tale-cwd-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(resolve_cwd(&root, None).unwrap(), root);
        assert_eq!(resolve_cwd(&root, Some("sub")).unwrap(), root.join("sub"));
        assert_eq!(
            resolve_cwd(&root, Some(root.join("sub").to_str().unwrap())).unwrap(),
            root.join("sub")
        );
        for bad in ["..", "../..", "missing", "out", "/etc", "sub/../../root2"] {
            assert_eq!(
                resolve_cwd(&root, Some(bad)).unwrap_err().code,
                FailCode::InvalidCwd,
                "{bad}"
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The lenient decoder accepts and rejects exactly what the `base64` crate's padding-indifferent
    /// engine (the decoder before base64-simd) did: every text of up to 5 characters over a set
    /// that covers padding, non-canonical trailing bits, whitespace and foreign alphabets, and
    /// long texts past the SIMD block size.
    #[test]
    fn lenient_decoder_matches_the_padding_indifferent_base64_engine() {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        use base64::Engine;
        let oracle = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let symbols = ["A", "B", "Q", "g", "/", "+", "=", " ", "-", "\n", "\u{e9}"];
        let mut texts = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|t| symbols.iter().map(move |s| format!("{t}{s}")))
                .collect();
            texts.extend(last.iter().cloned());
        }
        let long = oracle.encode((0..=255u8).cycle().take(10_001).collect::<Vec<u8>>());
        let unpadded = long.trim_end_matches('=').to_string();
        texts.extend([
            long.clone(),
            unpadded.clone(),
            format!("{}*{}", &long[..5000], &long[5001..]),
            format!("{unpadded}="),
        ]);
        for text in &texts {
            assert_eq!(
                decode_lenient_base64(text).ok(),
                oracle.decode(text).ok(),
                "{text:?}"
            );
        }
        assert_eq!(decode_lenient_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_lenient_base64("aGk=").unwrap(), b"hi");
    }
}

//! runnerd's wire protocol (spec era B, byte-compatible): requests, NDJSON exec events, replies.
//!
//! Field names and key order follow the original daemon's JSON exactly (`t` first, `seq` last), so
//! a client written against it reads our lines unchanged. Additive fields are optional and omitted
//! when absent.
pub use super::terminal::{PtySize, ResizeRefusal, ResizeReply, MAX_STDIN_RAW_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Header carrying the per-session runnerd token.
pub const TOKEN_HEADER: &str = "x-tale-runnerd-token";
/// Default TCP port runnerd listens on.
pub const DEFAULT_PORT: u16 = 8200;
/// Longest exec / session id accepted in a path or body.
pub const MAX_ID_LEN: usize = 64;
/// Largest request body runnerd accepts on any route (larger: 413 `payload_too_large`); the
/// spawner's own body cap may not exceed it, since it forwards bodies.
pub const MAX_REQUEST_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The header of a ranged file read that gives the file's whole size (runnerd's `GET /fs/read`
/// and the spawner's `GET …/files/content` with `offset`/`length`).
pub const FILE_SIZE_HEADER: &str = "x-tale-file-size";
/// Largest line `POST /execs/:id/stdin` accepts, decoded (`BAD_LINE` beyond it).
pub const MAX_STDIN_LINE_BYTES: usize = 64 * 1024;
/// Deadline of an exec whose request carries no positive `timeoutMs` (runnerd), and of an exec
/// request that names none (the spawner's default for `SANDBOX_EXEC_DEFAULT_TIMEOUT_MS`).
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// uid:gid execs run as when runnerd runs as root, as text (`TALE_EXEC_USER`, `SANDBOX_AGENT_USER`).
pub const DEFAULT_EXEC_USER_TEXT: &str = "10001:10001";
/// [`DEFAULT_EXEC_USER_TEXT`] parsed.
pub const DEFAULT_EXEC_USER: (u32, u32) = (10001, 10001);
/// Environment variable carrying the hex SHA-256 of the session's runnerd token (see
/// [`token_digest`]): the backends set it, runnerd compares presented tokens against it.
pub const TOKEN_SHA256_ENV: &str = "TALE_RUNNERD_TOKEN_SHA256";
/// Environment variables carrying the PEM certificate and private key runnerd serves TLS with
/// (both or neither; neither: plain HTTP). The `TALE_RUNNERD_` prefix keeps them out of every
/// exec's environment.
pub const RUNNERD_TLS_CERT_ENV: &str = "TALE_RUNNERD_TLS_CERT";
pub const RUNNERD_TLS_KEY_ENV: &str = "TALE_RUNNERD_TLS_KEY";
/// Environment variable naming the credential socket, set for every exec; the git credential
/// helper reads it.
pub const CREDENTIAL_SOCKET_ENV: &str = "TALE_CREDENTIAL_SOCKET";

/// `uid:gid` (both decimal) → the pair; anything else → `None`.
pub fn parse_uid_gid(text: &str) -> Option<(u32, u32)> {
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The token digest rule: runnerd keeps and compares SHA-256 digests of tokens, never the token.
pub fn token_digest(token: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token)
        .as_ref()
        .to_vec()
}

/// [`token_digest`] as lowercase hex, the form of [`TOKEN_SHA256_ENV`].
pub fn token_digest_hex(token: &[u8]) -> String {
    crate::shared::hex::encode(&token_digest(token))
}

/// Used for every base64 field runnerd decodes (`stdinBase64`, stdin `b64`, `contentBase64`).
/// Base64 as Node's `Buffer.from(s, 'base64')` reads it: the standard alphabet, padding optional.
/// No whitespace, and canonical trailing bits.
pub fn decode_lenient_base64(text: &str) -> Result<Vec<u8>, InvalidBase64> {
    let data = text.trim_end_matches('=');
    let padding = text.len() - data.len();
    // Padding may only fill up the last group of four, partly or fully, never stand alone or
    // overflow it: the rule of the decoder this one replaced (the `base64` crate's
    // padding-indifferent engine), pinned by the test below.
    let partial_group = data.len() % 4;
    if padding > 0 && (partial_group < 2 || partial_group + padding > 4) {
        return Err(InvalidBase64);
    }
    base64_simd::STANDARD_NO_PAD
        .decode_to_vec(data)
        .map_err(|_| InvalidBase64)
}

/// A text [`decode_lenient_base64`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not valid base64")]
pub struct InvalidBase64;

/// True when `id` matches `^[A-Za-z0-9_-]{1,64}$`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for names the platform may not set: they would break the sandbox (`HOME`, `PATH`, `TMPDIR`),
/// reach runnerd's own secrets (`TALE_RUNNERD_*`), or bypass the egress proxy (`*_proxy`). Names are
/// compared upper-cased. Names that cannot be an environment variable at all are refused as well.
pub fn is_denied_name(name: &str) -> bool {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return true;
    }
    let upper = name.to_ascii_uppercase();
    matches!(upper.as_str(), "HOME" | "PATH" | "TMPDIR")
        || upper.starts_with("TALE_RUNNERD_")
        || matches!(upper.as_str(), "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY")
}

/// What happens to an exec's stdin after `stdinBase64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    /// Write `stdinBase64`, then close.
    #[default]
    Close,
    /// Write `stdinBase64`, keep the pipe for `POST /execs/:id/stdin`, which takes one JSON line
    /// per request (agent runs steering `stream-json`).
    Hold,
    /// Additive: like `hold`, but `POST /execs/:id/stdin` takes any bytes (keystrokes, piped
    /// data). The mode of every pty exec.
    Raw,
}

/// `POST /execs` body: what the spawner sends and what runnerd's validation yields (from an
/// [`ExecRequestWire`], in the original's order). Numbers: a `timeoutMs` of 0 means runnerd's
/// default deadline, a cap of 0 means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    pub exec_id: String,
    /// `command[0]` run with `command[1..]`, no shell; exactly one of `command` and `shell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A command line for `bash -lc` (`sh -lc` where there is no bash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Per-exec overlay over the env store; deny-listed names are dropped by runnerd.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    #[serde(default)]
    pub stdin_mode: StdinMode,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub stdout_max_bytes: u64,
    #[serde(default)]
    pub stderr_max_bytes: u64,
    /// Additive: run the exec on a pseudo-terminal of this size (its output arrives as `stdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

/// `POST /execs` body as it arrives at runnerd. Every field is kept loose (`serde_json::Value`) so
/// that a field of the wrong type becomes a `fail BAD_REQUEST` event with the original's message, in
/// the original's validation order, rather than a 400; runnerd's `exec::spec` turns it into an
/// [`ExecRequest`].
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequestWire {
    pub exec_id: Option<serde_json::Value>,
    pub command: Option<serde_json::Value>,
    pub shell: Option<serde_json::Value>,
    pub cwd: Option<serde_json::Value>,
    pub env: Option<serde_json::Value>,
    pub stdin_base64: Option<serde_json::Value>,
    pub stdin_mode: Option<serde_json::Value>,
    pub timeout_ms: Option<serde_json::Value>,
    pub stdout_max_bytes: Option<serde_json::Value>,
    pub stderr_max_bytes: Option<serde_json::Value>,
    pub pty: Option<serde_json::Value>,
}

/// Why an exec stream ended without an `exit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailCode {
    InvalidCwd,
    ExecLimit,
    DuplicateExec,
    BadRequest,
}

/// `truncated` of an `exit` event: whether each stream hit its byte cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    pub stdout: bool,
    pub stderr: bool,
}

/// One NDJSON line of an exec stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum ExecEvent {
    Start {
        exec_id: String,
        started_at_ms: u64,
        seq: u64,
    },
    Stdout {
        b64: String,
        seq: u64,
    },
    Stderr {
        b64: String,
        seq: u64,
    },
    Exit {
        exit_code: i32,
        duration_ms: u64,
        truncated: Truncated,
        timed_out: bool,
        cancelled: bool,
        seq: u64,
    },
    Fail {
        code: FailCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Additive: events `fromSeq..=toSeq` were evicted from the journal before this reader got them.
    Gap {
        from_seq: u64,
        to_seq: u64,
    },
}

impl ExecEvent {
    /// The event's sequence number; `gap` and pre-spawn `fail` lines carry none.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ExecEvent::Start { seq, .. }
            | ExecEvent::Stdout { seq, .. }
            | ExecEvent::Stderr { seq, .. }
            | ExecEvent::Exit { seq, .. } => Some(*seq),
            ExecEvent::Fail { seq, .. } => *seq,
            ExecEvent::Gap { .. } => None,
        }
    }

    /// `exit` and `fail` end a stream; exactly one of them is the last line.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ExecEvent::Exit { .. } | ExecEvent::Fail { .. })
    }

    /// The event as one NDJSON line, `\n` included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("exec events always serialize");
        line.push(b'\n');
        line
    }
}

/// `GET /healthz` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub ok: bool,
    pub booted_at_ms: u64,
    pub last_activity_at_ms: u64,
    pub live_execs: u64,
    /// Kept for clients of era B, which read it in the idle sweep; tale has no screencast.
    #[serde(default)]
    pub active_screencasts: u64,
    /// Additive: processes re-parented to runnerd and reaped by it.
    #[serde(default)]
    pub reaped_orphans: u64,
    /// Additive: git credentials served to the credential helper.
    #[serde(default)]
    pub credential_accesses: u64,
}

/// `GET /execs/:id` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum ExecStatusState {
    Running { started_at_ms: u64 },
    Exited { exit_code: Option<i32> },
    Gone {},
}

/// `GET /execs/:id` reply: the id plus its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    pub exec_id: String,
    #[serde(flatten)]
    pub state: ExecStatusState,
}

/// One entry of `GET /execs` (tale, additive): a live or retained exec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecSummary {
    pub exec_id: String,
    /// `running` or `exited`.
    pub state: String,
    pub started_at_ms: u64,
    /// The exit code once exited (`null` while running or when killed by a signal).
    pub exit_code: Option<i32>,
    /// Additive: the exec runs on a pty (omitted when not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pty: bool,
}

/// `GET /execs` reply: live and retained execs, oldest start first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecList {
    pub execs: Vec<ExecSummary>,
}

/// `POST /execs/:id/stdin` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StdinRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eof: Option<bool>,
}

impl StdinRequest {
    /// What a request carrying neither `b64` nor `eof` is refused with (400 `bad_request`); other
    /// unknown fields are allowed, for additive evolution.
    pub const EMPTY_MESSAGE: &'static str = "one of b64 or eof is required";

    /// True when neither `b64` nor `eof` was given (e.g. a misspelled field).
    pub fn is_empty(&self) -> bool {
        self.b64.is_none() && self.eof.is_none()
    }
}

/// Why a stdin write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StdinRefusal {
    NotFound,
    StdinClosed,
    BadLine,
    WriteFailed,
    /// Additive: a raw chunk over [`MAX_STDIN_RAW_BYTES`].
    TooLarge,
}

/// `POST /execs/:id/stdin` reply: `{ok:true}` or `{ok:false, reason}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StdinReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StdinRefusal>,
}

/// `POST /execs/:id/cancel` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelReply {
    pub killed: bool,
}

/// `POST /env` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unset: Option<Vec<String>>,
}

/// `POST /env` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvReply {
    pub ok: bool,
    pub denied: Vec<String>,
}

/// `PUT /seed` body: the spawner marks the session's create-time seed (env, files, credentials)
/// as completely delivered. `digest` names what was delivered (64 lowercase hex, the SHA-256 the
/// spawner computes over the create's seed), so a retried create can tell its own seed apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedMark {
    pub digest: String,
}

impl SeedMark {
    /// Whether `digest` is exactly 64 lowercase hex digits.
    pub fn is_valid(&self) -> bool {
        self.digest.len() == 64
            && self
                .digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

/// `GET /seed` and `PUT /seed` reply. runnerd holds the record in memory, like the env and the
/// credentials it vouches for: a restarted runnerd (a re-created container or Pod) is unseeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedStatus {
    pub seeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded_at_ms: Option<u64>,
}

/// One file of `POST /files/stage`: inline bytes or a URL to fetch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageItem {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

/// `POST /files/stage` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRequest {
    pub files: Vec<StageItem>,
}

/// A staged file and its size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedFile {
    pub path: String,
    pub bytes: u64,
}

/// A path that was not staged or deleted, and why (`unsafe_path`, `too_large`, `no_source`, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedPath {
    pub path: String,
    pub reason: String,
}

/// `POST /files/stage` reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReply {
    pub staged: Vec<StagedFile>,
    pub skipped: Vec<SkippedPath>,
}

/// `POST /files/delete` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub paths: Vec<String>,
}

/// `POST /files/delete` reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeleteReply {
    pub deleted: Vec<String>,
    pub skipped: Vec<SkippedPath>,
}

/// Kind of a directory entry in `GET /fs/list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Other,
}

/// One entry of `GET /fs/list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
    pub mtime_ms: u64,
}

/// `GET /fs/list` reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListReply {
    pub entries: Vec<DirEntry>,
}

/// `PUT /credentials/git` body: a git credential for one host, served to the credential helper at
/// each git operation until revoked or expired. `host` is what git sends: `name[:port]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitCredentialGrant {
    pub host: String,
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl std::fmt::Debug for GitCredentialGrant {
    // The password never reaches a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentialGrant")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// Reply of `PUT /credentials/git` and `DELETE /credentials/git/:host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialReply {
    pub ok: bool,
    /// For DELETE: whether a credential for the host existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existed: Option<bool>,
}

/// One request on the credential socket: the host git asks about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialQuery {
    pub host: String,
}

/// The answer on the credential socket: both fields, or neither when nothing is granted.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for CredentialAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialAnswer")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Error body of every non-2xx JSON reply: `{error, message?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines keep the original daemon's key order: `t` first, `seq` last.
    #[test]
    fn event_lines_match_the_original_byte_for_byte() {
        let start = ExecEvent::Start {
            exec_id: "e1".into(),
            started_at_ms: 5,
            seq: 1,
        };
        assert_eq!(
            start.to_line(),
            b"{\"t\":\"start\",\"execId\":\"e1\",\"startedAtMs\":5,\"seq\":1}\n"
        );
        let exit = ExecEvent::Exit {
            exit_code: 0,
            duration_ms: 3,
            truncated: Truncated::default(),
            timed_out: false,
            cancelled: false,
            seq: 4,
        };
        assert_eq!(
            String::from_utf8(exit.to_line()).unwrap(),
            "{\"t\":\"exit\",\"exitCode\":0,\"durationMs\":3,\"truncated\":{\"stdout\":false,\"stderr\":false},\"timedOut\":false,\"cancelled\":false,\"seq\":4}\n"
        );
        let fail = ExecEvent::Fail {
            code: FailCode::ExecLimit,
            message: "live exec cap 4 reached".into(),
            seq: None,
        };
        assert_eq!(
            String::from_utf8(fail.to_line()).unwrap(),
            "{\"t\":\"fail\",\"code\":\"EXEC_LIMIT\",\"message\":\"live exec cap 4 reached\"}\n"
        );
        let gap = ExecEvent::Gap {
            from_seq: 2,
            to_seq: 9,
        };
        assert_eq!(
            String::from_utf8(gap.to_line()).unwrap(),
            "{\"t\":\"gap\",\"fromSeq\":2,\"toSeq\":9}\n"
        );
    }

    /// Status replies flatten the state next to the id, as the original does.
    #[test]
    fn exec_status_shapes() {
        let running = ExecStatus {
            exec_id: "a".into(),
            state: ExecStatusState::Running { started_at_ms: 7 },
        };
        assert_eq!(
            serde_json::to_string(&running).unwrap(),
            r#"{"execId":"a","state":"running","startedAtMs":7}"#
        );
        let gone = ExecStatus {
            exec_id: "a".into(),
            state: ExecStatusState::Gone {},
        };
        assert_eq!(
            serde_json::to_string(&gone).unwrap(),
            r#"{"execId":"a","state":"gone"}"#
        );
    }

    /// Values that exist as text and parsed, or on both ends, agree.
    #[test]
    fn shared_constants_agree() {
        assert_eq!(
            parse_uid_gid(DEFAULT_EXEC_USER_TEXT),
            Some(DEFAULT_EXEC_USER)
        );
        assert_eq!(parse_uid_gid("1:x"), None);
        assert_eq!(parse_uid_gid("12"), None);
        assert_eq!(
            token_digest_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_digest(b"abc").len(), 32);
    }

    /// A stdin request must carry `b64` or `eof`; unknown fields are ignored.
    #[test]
    fn stdin_requests_carry_something() {
        let parse = |json: &str| serde_json::from_str::<StdinRequest>(json).unwrap();
        assert!(parse("{}").is_empty());
        assert!(parse(r#"{"dataBase64":"e30K"}"#).is_empty());
        assert!(!parse(r#"{"eof":false}"#).is_empty());
        assert!(!parse(r#"{"b64":"","x":1}"#).is_empty());
    }

    /// The id rule of paths and bodies.
    #[test]
    fn id_rule() {
        assert!(is_valid_id("abc_DEF-09"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(is_valid_id(&"x".repeat(64)));
    }
}

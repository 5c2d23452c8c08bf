//! The spawner's wire contract (spec era B): session and exec requests with their validation, replies,
//! the SSE event data, and the error envelope. camelCase JSON, field order as the original.
use super::runnerd::{
    is_denied_name, is_valid_id, ExecEvent, ExecRequest, FailCode, PtySize, StdinMode, Truncated,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most env entries in a create or exec request.
pub const MAX_REQUEST_ENV_ENTRIES: usize = 128;
/// Longest env value, in UTF-16 code units (the original counts JavaScript string length).
pub const MAX_REQUEST_ENV_VALUE_UNITS: usize = 32_768;

/// `^[A-Za-z0-9_-]{1,128}$`.
pub fn is_valid_org_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Resource profile of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Default,
    Agent,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Agent => "agent",
        }
    }
    pub fn from_label(label: &str) -> Profile {
        if label == "agent" {
            Profile::Agent
        } else {
            Profile::Default
        }
    }
}

/// Session state as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Creating,
    Ready,
    Degraded,
    Terminating,
    Terminated,
    Expired,
}

impl SessionState {
    /// The wire name (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Creating => "creating",
            SessionState::Ready => "ready",
            SessionState::Degraded => "degraded",
            SessionState::Terminating => "terminating",
            SessionState::Terminated => "terminated",
            SessionState::Expired => "expired",
        }
    }
}

/// A session as the API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub organization_id: String,
    pub profile: Profile,
    pub state: SessionState,
    pub backend: String,
    pub created_at_ms: u64,
    pub last_activity_at_ms: u64,
    pub expires_at_ms: u64,
    pub idle_timeout_ms: u64,
    pub pinned: bool,
    /// Whether the session's compute can be reached (an addition to the original contract):
    /// absent when it can, `false` when its node is lost, `null` when that cannot be told.
    #[serde(default, skip_serializing_if = "Reachability::is_reachable")]
    pub reachable: Reachability,
}

/// Whether a session's compute is within reach, as the backend can tell without probing it.
/// On the wire (field `reachable`): omitted, `false`, or `null` (unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reachability {
    #[default]
    Reachable,
    /// Its compute is on a node that stopped reporting (or left the cluster).
    Unreachable,
    /// Its compute does not answer and the backend cannot tell why (no right to read its node).
    Unknown,
}

impl Reachability {
    pub fn is_reachable(&self) -> bool {
        *self == Reachability::Reachable
    }
}

impl Serialize for Reachability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reachability::Reachable => serializer.serialize_bool(true),
            Reachability::Unreachable => serializer.serialize_bool(false),
            Reachability::Unknown => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for Reachability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<bool>::deserialize(deserializer)? {
            Some(true) => Reachability::Reachable,
            Some(false) => Reachability::Unreachable,
            None => Reachability::Unknown,
        })
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SessionReply {
    pub session: SessionInfo,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SessionListReply {
    pub sessions: Vec<SessionInfo>,
}

/// `DELETE /v1/sessions/:id` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct DestroyReply {
    pub destroyed: bool,
    pub busy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Configured maxima that requests are clamped to.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub max_lifetime_ms: u64,
    pub max_idle_ms: u64,
    pub exec_default_timeout_ms: u64,
    pub exec_max_timeout_ms: u64,
}

/// A 400 with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

fn object(body: &Value) -> Result<&Map<String, Value>, BadRequest> {
    body.as_object()
        .ok_or_else(|| bad("body must be a JSON object"))
}

/// A positive finite number clamped to `max`; anything else means `max` (or `default`).
fn clamped(value: Option<&Value>, default: u64, max: u64) -> u64 {
    match value.and_then(Value::as_f64) {
        Some(v) if v.is_finite() && v > 0.0 => (v as u64).clamp(1, max),
        _ => default.min(max),
    }
}

/// The env rules shared by create and exec: an object of at most 128 string values of at most
/// 32768 UTF-16 units; deny-listed names are dropped silently.
pub fn parse_env(value: Option<&Value>) -> Result<BTreeMap<String, String>, BadRequest> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let object = value
        .as_object()
        .ok_or_else(|| bad("env must be an object"))?;
    if object.len() > MAX_REQUEST_ENV_ENTRIES {
        return Err(bad(format!(
            "env has more than {MAX_REQUEST_ENV_ENTRIES} entries"
        )));
    }
    let mut env = BTreeMap::new();
    for (name, value) in object {
        let value = value
            .as_str()
            .ok_or_else(|| bad(format!("env.{name} must be a string")))?;
        if value.encode_utf16().count() > MAX_REQUEST_ENV_VALUE_UNITS {
            return Err(bad(format!("env.{name} value too large")));
        }
        if !is_denied_name(name) {
            env.insert(name.clone(), value.to_owned());
        }
    }
    Ok(env)
}

fn string_field<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

/// A validated `POST /v1/sessions`.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateSession {
    pub session_id: String,
    pub organization_id: String,
    pub profile: Profile,
    pub ttl_ms: u64,
    pub idle_timeout_ms: u64,
    pub env: BTreeMap<String, String>,
}

impl CreateSession {
    pub fn parse(body: &Value, limits: &RequestLimits) -> Result<CreateSession, BadRequest> {
        let body = object(body)?;
        let session_id = string_field(body, "sessionId")
            .filter(|id| is_valid_id(id))
            .ok_or_else(|| bad("sessionId must match ^[A-Za-z0-9_-]{1,64}$"))?;
        let organization_id = string_field(body, "organizationId")
            .filter(|id| is_valid_org_id(id))
            .ok_or_else(|| bad("organizationId must match ^[A-Za-z0-9_-]{1,128}$"))?;
        let profile = match body.get("profile") {
            None | Some(Value::Null) => Profile::Default,
            Some(Value::String(p)) if p == "default" => Profile::Default,
            Some(Value::String(p)) if p == "agent" => Profile::Agent,
            Some(_) => return Err(bad("profile must be \"default\" or \"agent\"")),
        };
        Ok(CreateSession {
            session_id: session_id.to_owned(),
            organization_id: organization_id.to_owned(),
            profile,
            ttl_ms: clamped(
                body.get("ttlMs"),
                limits.max_lifetime_ms,
                limits.max_lifetime_ms,
            ),
            idle_timeout_ms: clamped(
                body.get("idleTimeoutMs"),
                limits.max_idle_ms,
                limits.max_idle_ms,
            ),
            env: parse_env(body.get("env"))?,
        })
    }
}

/// A validated `POST /v1/sessions/:id/exec`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionExec {
    pub exec_id: String,
    pub command: Option<Vec<String>>,
    pub shell: Option<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub stdin_base64: Option<String>,
    pub stdin_mode: StdinMode,
    pub timeout_ms: u64,
    pub collect_output: bool,
    /// Additive: run on a pseudo-terminal of this size (stdin is then raw).
    pub pty: Option<PtySize>,
}

impl SessionExec {
    pub fn parse(body: &Value, limits: &RequestLimits) -> Result<SessionExec, BadRequest> {
        let body = object(body)?;
        let exec_id = string_field(body, "execId")
            .filter(|id| is_valid_id(id))
            .ok_or_else(|| bad("execId must match ^[A-Za-z0-9_-]{1,64}$"))?;
        let command = match body.get("command") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if !items.is_empty() => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("command must be a non-empty array of strings"))?,
            ),
            Some(_) => return Err(bad("command must be a non-empty array of strings")),
        };
        let shell = match body.get("shell") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return Err(bad("shell must be a non-empty string")),
        };
        if command.is_some() == shell.is_some() {
            return Err(bad("exactly one of command or shell is required"));
        }
        let optional_string = |field: &str| match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{field} must be a string"))),
        };
        let stdin_mode = match body.get("stdinMode") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if m == "close" => Some(StdinMode::Close),
            Some(Value::String(m)) if m == "hold" => Some(StdinMode::Hold),
            Some(Value::String(m)) if m == "raw" => Some(StdinMode::Raw),
            // The message predates `raw` and is part of recorded transcripts: kept as it was.
            Some(_) => return Err(bad("stdinMode must be \"close\" or \"hold\"")),
        };
        let (pty, stdin_mode) = match body.get("pty") {
            None | Some(Value::Null) => (None, stdin_mode.unwrap_or_default()),
            Some(value) => {
                let size = PtySize::from_value(value).map_err(bad)?;
                if stdin_mode.is_some_and(|mode| mode != StdinMode::Raw) {
                    return Err(bad("a pty exec's stdinMode is \"raw\""));
                }
                (Some(size), StdinMode::Raw)
            }
        };
        let collect_output = match body.get("collectOutput") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("collectOutput must be a boolean")),
        };
        Ok(SessionExec {
            exec_id: exec_id.to_owned(),
            command,
            shell,
            cwd: optional_string("cwd")?,
            env: parse_env(body.get("env"))?,
            stdin_base64: optional_string("stdinBase64")?,
            stdin_mode,
            timeout_ms: clamped(
                body.get("timeoutMs"),
                limits.exec_default_timeout_ms,
                limits.exec_max_timeout_ms,
            ),
            collect_output,
            pty,
        })
    }

    /// The runnerd `POST /execs` request, with output caps (0 = unlimited when not collecting).
    pub fn runnerd_request(&self, stdout_cap: u64, stderr_cap: u64) -> ExecRequest {
        let (stdout_cap, stderr_cap) = if self.collect_output {
            (stdout_cap, stderr_cap)
        } else {
            (0, 0)
        };
        ExecRequest {
            exec_id: self.exec_id.clone(),
            command: self.command.clone(),
            shell: self.shell.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            stdin_base64: self.stdin_base64.clone(),
            stdin_mode: self.stdin_mode,
            timeout_ms: self.timeout_ms,
            stdout_max_bytes: stdout_cap,
            stderr_max_bytes: stderr_cap,
            pty: self.pty,
        }
    }
}

/// How an exec ended, as a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecOutcomeStatus {
    Completed,
    Failed,
    Cancelled,
}

/// Additive: why an exec ended, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecEndReason {
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    SessionLost,
}

impl ExecEndReason {
    /// The wire name (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecEndReason::Completed => "completed",
            ExecEndReason::Failed => "failed",
            ExecEndReason::Cancelled => "cancelled",
            ExecEndReason::TimedOut => "timed_out",
            ExecEndReason::SessionLost => "session_lost",
        }
    }
}

/// The `result` SSE event and the one-shot reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExecResponse {
    pub status: ExecOutcomeStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub stdout_base64: String,
    pub stderr_base64: String,
    pub truncated: Truncated,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub reason: ExecEndReason,
}

impl SessionExecResponse {
    /// Maps runnerd's terminal event plus the collected output (already base64) to the result.
    pub fn from_terminal(
        event: &ExecEvent,
        stdout_base64: String,
        stderr_base64: String,
    ) -> Option<SessionExecResponse> {
        match event {
            ExecEvent::Exit {
                exit_code,
                duration_ms,
                truncated,
                timed_out,
                cancelled,
                ..
            } => {
                let (status, reason) = if *cancelled {
                    (ExecOutcomeStatus::Cancelled, ExecEndReason::Cancelled)
                } else if *exit_code == 0 {
                    (ExecOutcomeStatus::Completed, ExecEndReason::Completed)
                } else if *timed_out {
                    (ExecOutcomeStatus::Failed, ExecEndReason::TimedOut)
                } else {
                    (ExecOutcomeStatus::Failed, ExecEndReason::Failed)
                };
                let timeout = *timed_out && *exit_code != 0;
                Some(SessionExecResponse {
                    status,
                    exit_code: Some(*exit_code),
                    duration_ms: *duration_ms,
                    stdout_base64,
                    stderr_base64,
                    truncated: *truncated,
                    error_code: timeout.then(|| "TIMEOUT".to_string()),
                    error_message: timeout.then(|| "exec timed out".to_string()),
                    reason,
                })
            }
            ExecEvent::Fail { code, message, .. } => Some(SessionExecResponse {
                status: ExecOutcomeStatus::Failed,
                exit_code: None,
                duration_ms: 0,
                stdout_base64: String::new(),
                stderr_base64: String::new(),
                truncated: Truncated::default(),
                error_code: Some(
                    if *code == FailCode::InvalidCwd {
                        "INVALID_CWD"
                    } else {
                        "RUNTIME_ERROR"
                    }
                    .into(),
                ),
                error_message: Some(message.clone()),
                reason: ExecEndReason::Failed,
            }),
            _ => None,
        }
    }

    /// The stream ended without a terminal event.
    pub fn session_lost(
        stdout_base64: String,
        stderr_base64: String,
        truncated: Truncated,
    ) -> SessionExecResponse {
        SessionExecResponse {
            status: ExecOutcomeStatus::Failed,
            exit_code: None,
            duration_ms: 0,
            stdout_base64,
            stderr_base64,
            truncated,
            error_code: Some("SESSION_LOST".into()),
            error_message: Some("runnerd stream ended without a terminal event".into()),
            reason: ExecEndReason::SessionLost,
        }
    }
}

/// `phase` event data.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct PhaseData {
    pub phase: String,
}

/// `stdout`/`stderr` event data.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct OutputData {
    pub text: String,
    pub seq: u64,
}

/// `gap` event data (additive).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GapData {
    pub from_seq: u64,
    pub to_seq: u64,
}

/// `error` event data.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ErrorData {
    pub message: String,
}

/// `PATCH …/pin`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct PinRequest {
    pub pinned: bool,
}

/// The spawner's default limits, for the request-parsing tests of the protocol modules.
#[cfg(test)]
pub(crate) const TEST_LIMITS: RequestLimits = RequestLimits {
    max_lifetime_ms: 86_400_000,
    max_idle_ms: 1_800_000,
    exec_default_timeout_ms: 600_000,
    exec_max_timeout_ms: 7_200_000,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: RequestLimits = TEST_LIMITS;

    /// `reachable` is absent for a reachable session (the original's bytes), `false` for one on
    /// a lost node, `null` when unknown, and reads back as written (absent: reachable).
    #[test]
    fn reachable_is_additive() {
        let info = SessionInfo {
            session_id: "s".into(),
            organization_id: "o".into(),
            profile: Profile::Default,
            state: SessionState::Ready,
            backend: "kubernetes".into(),
            created_at_ms: 1,
            last_activity_at_ms: 1,
            expires_at_ms: 2,
            idle_timeout_ms: 3,
            pinned: false,
            reachable: Reachability::Reachable,
        };
        let wire = serde_json::to_value(&info).unwrap();
        assert!(wire.get("reachable").is_none(), "{wire}");
        for (reachable, expected) in [
            (Reachability::Unreachable, json!(false)),
            (Reachability::Unknown, json!(null)),
        ] {
            let info = SessionInfo {
                reachable,
                ..info.clone()
            };
            let wire = serde_json::to_value(&info).unwrap();
            assert_eq!(wire["reachable"], expected);
            assert_eq!(serde_json::from_value::<SessionInfo>(wire).unwrap(), info);
        }
        assert_eq!(
            serde_json::from_value::<SessionInfo>(serde_json::to_value(&info).unwrap()).unwrap(),
            info
        );
    }

    /// Create: ids, profile, clamping, env rules and messages.
    #[test]
    fn create_validation() {
        let ok = CreateSession::parse(
            &json!({"sessionId": "s1", "organizationId": "o1", "ttlMs": 1000, "idleTimeoutMs": -5,
            "env": {"A": "1", "PATH": "/x", "https_proxy": "p"}}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!((ok.ttl_ms, ok.idle_timeout_ms), (1000, 1_800_000));
        assert_eq!(ok.profile, Profile::Default);
        assert_eq!(ok.env, BTreeMap::from([("A".to_string(), "1".to_string())]));
        let big = CreateSession::parse(
            &json!({"sessionId": "s1", "organizationId": "o1", "ttlMs": 1e30, "profile": "agent"}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!((big.ttl_ms, big.profile), (86_400_000, Profile::Agent));
        let err = |body: Value| CreateSession::parse(&body, &LIMITS).unwrap_err().0;
        assert_eq!(
            err(json!({"organizationId": "o"})),
            "sessionId must match ^[A-Za-z0-9_-]{1,64}$"
        );
        assert_eq!(
            err(json!({"sessionId": "a/b", "organizationId": "o"})),
            "sessionId must match ^[A-Za-z0-9_-]{1,64}$"
        );
        assert_eq!(
            err(json!({"sessionId": "a", "organizationId": ""})),
            "organizationId must match ^[A-Za-z0-9_-]{1,128}$"
        );
        assert_eq!(
            err(json!({"sessionId": "a", "organizationId": "o", "profile": "root"})),
            "profile must be \"default\" or \"agent\""
        );
        assert_eq!(
            err(json!({"sessionId": "a", "organizationId": "o", "env": {"K": 1}})),
            "env.K must be a string"
        );
        assert_eq!(
            err(json!({"sessionId": "a", "organizationId": "o", "env": {"K": "x".repeat(32769)}})),
            "env.K value too large"
        );
        let many: Map<String, Value> = (0..129).map(|i| (format!("K{i}"), json!("v"))).collect();
        assert!(
            err(json!({"sessionId": "a", "organizationId": "o", "env": many}))
                .contains("more than 128")
        );
        assert_eq!(err(json!([1])), "body must be a JSON object");
    }

    /// Exec: exclusivity, defaults, clamping, and the runnerd request it becomes.
    #[test]
    fn exec_validation_and_forwarding() {
        let exec = SessionExec::parse(
            &json!({"execId": "e", "command": ["ls", "-l"], "timeoutMs": 9e9}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(exec.timeout_ms, 7_200_000);
        assert!(exec.collect_output);
        assert_eq!(
            serde_json::to_value(exec.runnerd_request(5, 6)).unwrap(),
            json!({"execId": "e", "command": ["ls", "-l"], "timeoutMs": 7_200_000, "stdoutMaxBytes": 5, "stderrMaxBytes": 6, "stdinMode": "close"})
        );
        let agent = SessionExec::parse(
            &json!({"execId": "e", "shell": "x", "collectOutput": false, "stdinMode": "hold"}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(agent.timeout_ms, 600_000);
        let request = serde_json::to_value(agent.runnerd_request(5, 6)).unwrap();
        assert_eq!(
            (
                request["stdoutMaxBytes"].clone(),
                request["stdinMode"].clone()
            ),
            (json!(0), json!("hold"))
        );
        let err = |body: Value| SessionExec::parse(&body, &LIMITS).unwrap_err().0;
        let shell = SessionExec::parse(
            &json!({"execId": "e", "shell": "bash", "pty": {"cols": 100, "rows": 30}}),
            &LIMITS,
        )
        .unwrap();
        let request = serde_json::to_value(shell.runnerd_request(5, 6)).unwrap();
        assert_eq!(
            (request["pty"].clone(), request["stdinMode"].clone()),
            (json!({"cols": 100, "rows": 30}), json!("raw"))
        );
        let raw = SessionExec::parse(
            &json!({"execId": "e", "shell": "cat", "stdinMode": "raw"}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!((raw.stdin_mode, raw.pty), (StdinMode::Raw, None));
        assert_eq!(
            err(json!({"execId": "e", "shell": "x", "pty": {"cols": 100}})),
            PtySize::rule()
        );
        assert_eq!(
            err(
                json!({"execId": "e", "shell": "x", "pty": {"cols": 1, "rows": 1}, "stdinMode": "close"})
            ),
            "a pty exec's stdinMode is \"raw\""
        );
        assert_eq!(
            err(json!({"execId": "e"})),
            "exactly one of command or shell is required"
        );
        assert_eq!(
            err(json!({"execId": "e", "command": ["a"], "shell": "b"})),
            "exactly one of command or shell is required"
        );
        assert_eq!(
            err(json!({"execId": "e", "command": []})),
            "command must be a non-empty array of strings"
        );
        assert_eq!(
            err(json!({"execId": "e", "command": ["a", 1]})),
            "command must be a non-empty array of strings"
        );
        assert_eq!(
            err(json!({"execId": "e", "shell": "x", "collectOutput": "yes"})),
            "collectOutput must be a boolean"
        );
        assert_eq!(
            err(json!({"execId": "", "shell": "x"})),
            "execId must match ^[A-Za-z0-9_-]{1,64}$"
        );
    }

    /// Result mapping: TIMEOUT only with a non-zero exit; fail codes; session lost.
    #[test]
    fn result_mapping() {
        let exit = |code, timed_out, cancelled| ExecEvent::Exit {
            exit_code: code,
            duration_ms: 7,
            truncated: Truncated::default(),
            timed_out,
            cancelled,
            seq: 9,
        };
        let r =
            SessionExecResponse::from_terminal(&exit(0, true, false), "YQ==".into(), String::new())
                .unwrap();
        assert_eq!(
            (r.status, r.error_code, r.reason),
            (ExecOutcomeStatus::Completed, None, ExecEndReason::Completed)
        );
        let r = SessionExecResponse::from_terminal(
            &exit(143, true, false),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.error_code.as_deref(), r.reason),
            (
                ExecOutcomeStatus::Failed,
                Some("TIMEOUT"),
                ExecEndReason::TimedOut
            )
        );
        let r = SessionExecResponse::from_terminal(
            &exit(143, false, true),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.reason),
            (ExecOutcomeStatus::Cancelled, ExecEndReason::Cancelled)
        );
        let fail = ExecEvent::Fail {
            code: FailCode::InvalidCwd,
            message: "m".into(),
            seq: None,
        };
        let r = SessionExecResponse::from_terminal(&fail, String::new(), String::new()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"status": "failed", "exitCode": null, "durationMs": 0, "stdoutBase64": "", "stderrBase64": "",
                   "truncated": {"stdout": false, "stderr": false}, "errorCode": "INVALID_CWD", "errorMessage": "m", "reason": "failed"})
        );
        let lost =
            SessionExecResponse::session_lost(String::new(), String::new(), Truncated::default());
        assert_eq!(lost.error_code.as_deref(), Some("SESSION_LOST"));
    }
}

//! Requests to the spawner (create, exec) and their validation: clamped limits, the env rules, 400s
//! with their message.
use super::{is_valid_org_id, Profile, MAX_REQUEST_ENV_ENTRIES, MAX_REQUEST_ENV_VALUE_UNITS};
use crate::shared::protocol::runnerd::{
    is_denied_name, is_valid_id, ExecRequest, PtySize, StdinMode,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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

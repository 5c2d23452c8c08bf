//! How an exec ended (the `result` SSE event and the one-shot reply) and the other SSE events' data.
use crate::shared::protocol::runnerd::{ExecEvent, FailCode, Truncated};
use serde::{Deserialize, Serialize};

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

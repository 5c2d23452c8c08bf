//! How a run ended, said once. A CLI's own `result` ends a turn when the CLI gets to print it; when
//! it does not — the run was cancelled, its deadline passed, the CLI died or gave up on a broken
//! model stream — [`RunEnd::finish`] makes the one `result` that says so, with a reason taken from
//! the CLI's last `error` event or its last non-empty stderr line. Pure: the spawner feeds it the
//! events it parsed and the stderr text it decoded, then tells it how the exec ended.
use super::events::{AgentEvent, AgentResultStatus};

/// Longest `reason` on a `result` (bytes; cut at a character boundary): a CLI may print a whole
/// response body as its last stderr line.
pub const MAX_RESULT_REASON_BYTES: usize = 4096;

/// How the exec under a run ended, as runnerd reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEnding {
    /// The process exited (or was killed) on its own.
    Exited { exit_code: i32 },
    /// `POST …/cancel` (or the session's stop) ended it.
    Cancelled,
    /// The run's `timeoutMs` passed.
    TimedOut,
    /// runnerd could not run it (e.g. the CLI is missing).
    Failed { message: String },
    /// The session went away mid-stream.
    Lost,
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The last non-empty line of a text stream, with memory bounded by [`MAX_RESULT_REASON_BYTES`]
/// whatever the stream holds.
#[derive(Default, Debug)]
struct LastLine {
    current: String,
    last: Option<String>,
}

impl LastLine {
    fn push(&mut self, text: &str) {
        let mut rest = text;
        while let Some(newline) = rest.find('\n') {
            self.append(&rest[..newline]);
            self.end_line();
            rest = &rest[newline + 1..];
        }
        self.append(rest);
    }

    fn append(&mut self, piece: &str) {
        let room = MAX_RESULT_REASON_BYTES.saturating_sub(self.current.len());
        if room > 0 {
            self.current.push_str(&bounded(piece, room));
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.current);
        let line = line.trim();
        if !line.is_empty() {
            self.last = Some(line.to_owned());
        }
    }

    fn last(&self) -> Option<String> {
        let tail = self.current.trim();
        if tail.is_empty() {
            self.last.clone()
        } else {
            Some(tail.to_owned())
        }
    }
}

/// What a run has shown so far that decides its ending.
#[derive(Default, Debug)]
pub struct RunEnd {
    agent_session_id: Option<String>,
    /// A `result` closed the latest turn and nothing of a new turn followed.
    closed: bool,
    last_error: Option<String>,
    last_text: Option<String>,
    stderr: LastLine,
}

impl RunEnd {
    /// Notes a parsed event and completes a CLI `result` that failed without saying why.
    pub fn observe(&mut self, event: &mut AgentEvent) {
        match event {
            AgentEvent::RunStarted {
                agent_session_id, ..
            } => {
                if agent_session_id.is_some() {
                    self.agent_session_id.clone_from(agent_session_id);
                }
                self.closed = false;
            }
            AgentEvent::Text { text, .. } => {
                self.last_text = Some(text.clone());
                self.closed = false;
            }
            AgentEvent::TextDelta { .. }
            | AgentEvent::ToolUse { .. }
            | AgentEvent::ToolResult { .. } => self.closed = false,
            AgentEvent::Error { message, .. } => {
                self.last_error = Some(bounded(message, MAX_RESULT_REASON_BYTES));
                self.closed = false;
            }
            AgentEvent::Result {
                status,
                agent_session_id,
                reason,
                ..
            } => {
                if agent_session_id.is_none() {
                    agent_session_id.clone_from(&self.agent_session_id);
                } else {
                    self.agent_session_id.clone_from(agent_session_id);
                }
                if *status != AgentResultStatus::Completed && reason.is_none() {
                    *reason = self.last_error.clone().or_else(|| self.stderr.last());
                }
                self.closed = true;
                self.last_error = None;
            }
            AgentEvent::Usage { .. } | AgentEvent::Raw { .. } => {}
        }
    }

    /// Notes decoded stderr text (only its last non-empty line is kept).
    pub fn observe_stderr(&mut self, text: &str) {
        self.stderr.push(text);
    }

    /// The `result` that ends the run when the CLI's own did not: always for a cancel or a deadline
    /// (the exec was cut whatever it printed), otherwise only when no `result` closed the last turn.
    pub fn finish(&self, ending: &ExecEnding) -> Option<AgentEvent> {
        let (status, reason) = match ending {
            ExecEnding::Cancelled => (
                AgentResultStatus::Cancelled,
                "the run was cancelled".to_owned(),
            ),
            ExecEnding::TimedOut => (
                AgentResultStatus::TimedOut,
                "the run's deadline (timeoutMs) passed".to_owned(),
            ),
            _ if self.closed => return None,
            ExecEnding::Failed { message } => (AgentResultStatus::Error, message.clone()),
            ExecEnding::Lost => (
                AgentResultStatus::Error,
                "the session was lost during the run".to_owned(),
            ),
            ExecEnding::Exited { exit_code } => (
                AgentResultStatus::Error,
                self.last_error
                    .clone()
                    .or_else(|| self.stderr.last())
                    .unwrap_or_else(|| {
                        format!("the agent exited with code {exit_code} without a result")
                    }),
            ),
        };
        Some(AgentEvent::Result {
            status,
            agent_session_id: self.agent_session_id.clone(),
            final_text: None,
            duration_ms: None,
            usage_totals: None,
            is_error: Some(true),
            api_error_status: None,
            reason: Some(bounded(&reason, MAX_RESULT_REASON_BYTES)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::spawner::agents::AgentSlug;

    fn started(id: &str) -> AgentEvent {
        AgentEvent::RunStarted {
            agent: AgentSlug::OpenCode,
            agent_session_id: Some(id.into()),
            model: None,
        }
    }

    fn result(status: AgentResultStatus) -> AgentEvent {
        AgentEvent::Result {
            status,
            agent_session_id: None,
            final_text: None,
            duration_ms: None,
            usage_totals: None,
            is_error: None,
            api_error_status: None,
            reason: None,
        }
    }

    fn feed(end: &mut RunEnd, events: Vec<AgentEvent>) -> Vec<AgentEvent> {
        events
            .into_iter()
            .map(|mut e| {
                end.observe(&mut e);
                e
            })
            .collect()
    }

    fn status_and_reason(event: Option<AgentEvent>) -> Option<(AgentResultStatus, String)> {
        match event? {
            AgentEvent::Result { status, reason, .. } => Some((status, reason.unwrap())),
            other => panic!("{other:?}"),
        }
    }

    /// A completed turn needs nothing more; a cancel or a deadline is said even then.
    #[test]
    fn cancel_and_deadline_always_end_the_run() {
        let mut end = RunEnd::default();
        feed(
            &mut end,
            vec![started("s1"), result(AgentResultStatus::Completed)],
        );
        assert_eq!(end.finish(&ExecEnding::Exited { exit_code: 0 }), None);
        assert_eq!(end.finish(&ExecEnding::Exited { exit_code: 1 }), None);
        let cancelled = end.finish(&ExecEnding::Cancelled).unwrap();
        assert!(
            matches!(&cancelled, AgentEvent::Result { status: AgentResultStatus::Cancelled,
            agent_session_id: Some(s), is_error: Some(true), .. } if s == "s1")
        );
        assert_eq!(
            serde_json::to_value(end.finish(&ExecEnding::TimedOut).unwrap()).unwrap()["status"],
            "timed-out"
        );
    }

    /// No result: the reason is the CLI's last error, else its last stderr line, else the exit.
    #[test]
    fn reasons_in_order_of_preference() {
        let mut end = RunEnd::default();
        feed(&mut end, vec![started("s1")]);
        assert_eq!(
            status_and_reason(end.finish(&ExecEnding::Exited { exit_code: 3 })),
            Some((
                AgentResultStatus::Error,
                "the agent exited with code 3 without a result".into()
            ))
        );
        end.observe_stderr("retrying…\nError: stream ended ");
        end.observe_stderr("early\n\n  \n");
        assert_eq!(
            status_and_reason(end.finish(&ExecEnding::Exited { exit_code: 0 }))
                .unwrap()
                .1,
            "Error: stream ended early"
        );
        feed(
            &mut end,
            vec![AgentEvent::Error {
                message: "bad chunk".into(),
                raw: None,
            }],
        );
        assert_eq!(
            status_and_reason(end.finish(&ExecEnding::Exited { exit_code: 1 }))
                .unwrap()
                .1,
            "bad chunk"
        );
        assert_eq!(
            status_and_reason(end.finish(&ExecEnding::Failed {
                message: "no such file".into()
            }))
            .unwrap()
            .1,
            "no such file"
        );
        // A CLI result that failed without a reason gets the error seen before it.
        let events = feed(&mut end, vec![result(AgentResultStatus::Error)]);
        assert!(
            matches!(&events[0], AgentEvent::Result { reason: Some(r), agent_session_id: Some(s), .. } if r == "bad chunk" && s == "s1")
        );
        // A new turn after a result reopens the run.
        feed(
            &mut end,
            vec![AgentEvent::Text {
                text: "more".into(),
                parent_tool_use_id: None,
            }],
        );
        assert!(end.finish(&ExecEnding::Lost).is_some());
    }

    /// stderr memory is bounded: a huge line is kept to the cap, on a character boundary.
    #[test]
    fn stderr_line_is_bounded() {
        let mut end = RunEnd::default();
        end.observe_stderr(&"é".repeat(MAX_RESULT_REASON_BYTES));
        end.observe_stderr(&"x".repeat(10_000));
        assert!(end.stderr.current.len() <= MAX_RESULT_REASON_BYTES);
        let (_, reason) =
            status_and_reason(end.finish(&ExecEnding::Exited { exit_code: 1 })).unwrap();
        assert_eq!(reason, "é".repeat(MAX_RESULT_REASON_BYTES / 2));
        assert_eq!(bounded("aé", 2), "a");
    }
}

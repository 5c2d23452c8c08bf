//! Terminal execs (tale, additive): the `pty` field of an exec request, `POST /execs/:id/resize`,
//! and the limits both ends check.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest `cols` or `rows` a pty may be given (a larger value is refused, never clamped).
pub const MAX_PTY_DIMENSION: u16 = 1000;
/// Largest decoded chunk one `POST /execs/:id/stdin` may carry to an exec with raw stdin
/// (`TOO_LARGE` beyond it).
pub const MAX_STDIN_RAW_BYTES: usize = 1024 * 1024;

/// A terminal size in character cells: the `pty` field of an exec request and the body of a
/// resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl PtySize {
    /// The message of every refused size: both ends and every route say the same.
    pub fn rule() -> String {
        format!("pty must be {{cols, rows}} with integers 1..={MAX_PTY_DIMENSION}")
    }

    /// Reads `{cols, rows}` from untrusted JSON (other fields are ignored, for additive
    /// evolution); the error is [`PtySize::rule`].
    pub fn from_value(value: &Value) -> Result<PtySize, String> {
        let dimension = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_u64)
                .filter(|n| (1..=MAX_PTY_DIMENSION as u64).contains(n))
                .map(|n| n as u16)
        };
        match (value.is_object(), dimension("cols"), dimension("rows")) {
            (true, Some(cols), Some(rows)) => Ok(PtySize { cols, rows }),
            _ => Err(PtySize::rule()),
        }
    }
}

/// Why a resize was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResizeRefusal {
    /// No live exec with this id.
    NotFound,
    /// The exec runs without a pty.
    NotATerminal,
}

/// `POST /execs/:id/resize` reply: `{ok:true}` or `{ok:false, reason}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResizeReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ResizeRefusal>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sizes are whole numbers within 1..=MAX on both axes; anything else is refused by one rule.
    #[test]
    fn size_rule() {
        assert_eq!(
            PtySize::from_value(&json!({"cols": 80, "rows": 24, "x": 1})),
            Ok(PtySize { cols: 80, rows: 24 })
        );
        assert_eq!(
            PtySize::from_value(&json!({"cols": 1000, "rows": 1})),
            Ok(PtySize {
                cols: 1000,
                rows: 1
            })
        );
        for bad in [
            json!({"cols": 0, "rows": 24}),
            json!({"cols": 1001, "rows": 24}),
            json!({"cols": 80}),
            json!({"cols": 80.5, "rows": 24}),
            json!({"cols": -1, "rows": 24}),
            json!({"cols": "80", "rows": 24}),
            json!([80, 24]),
            json!(true),
        ] {
            assert_eq!(PtySize::from_value(&bad), Err(PtySize::rule()), "{bad}");
        }
    }
}

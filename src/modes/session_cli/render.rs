//! Output: aligned tables with relative times for people, pretty JSON for scripts.
use serde_json::Value;

/// How replies are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

pub fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    print_text(&(text + "\n"));
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn print_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// "12s ago", "3m ago", "in 2h"; "-" for 0 (not set).
pub fn relative_time(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let (delta, past) = if at_ms <= now_ms {
        (now_ms - at_ms, true)
    } else {
        (at_ms - now_ms, false)
    };
    let seconds = delta / 1000;
    if seconds == 0 {
        return "just now".into();
    }
    let amount = match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    };
    if past {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// Left-aligned columns separated by two spaces; the header in capitals.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn time(value: &Value, now_ms: u64) -> String {
    relative_time(value.as_u64().unwrap_or(0), now_ms)
}

/// `ls`: one row per session.
pub fn sessions_table(reply: &Value, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = reply["sessions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                text(&s["sessionId"]),
                text(&s["organizationId"]),
                text(&s["state"]),
                text(&s["backend"]),
                time(&s["createdAtMs"], now_ms),
                time(&s["lastActivityAtMs"], now_ms),
                time(&s["expiresAtMs"], now_ms),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no sessions\n".into();
    }
    table(
        &[
            "SESSION", "ORG", "STATE", "BACKEND", "CREATED", "ACTIVE", "EXPIRES",
        ],
        &rows,
    )
}

/// `get`: one field per line.
pub fn session_detail(session: &Value, now_ms: u64) -> String {
    let rows = vec![
        vec!["session".into(), text(&session["sessionId"])],
        vec!["org".into(), text(&session["organizationId"])],
        vec!["profile".into(), text(&session["profile"])],
        vec!["state".into(), text(&session["state"])],
        vec!["backend".into(), text(&session["backend"])],
        vec!["pinned".into(), text(&session["pinned"])],
        vec!["created".into(), time(&session["createdAtMs"], now_ms)],
        vec![
            "last active".into(),
            time(&session["lastActivityAtMs"], now_ms),
        ],
        vec!["expires".into(), time(&session["expiresAtMs"], now_ms)],
        vec![
            "idle timeout".into(),
            format!("{}s", session["idleTimeoutMs"].as_u64().unwrap_or(0) / 1000),
        ],
    ];
    let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| format!("{:<width$}  {}\n", r[0], r[1]))
        .collect()
}

/// `execs`: one row per exec.
pub fn execs_table(reply: &Value, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = reply["execs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                text(&e["execId"]),
                text(&e["state"]),
                time(&e["startedAtMs"], now_ms),
                text(&e["exitCode"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no execs\n".into();
    }
    table(&["EXEC", "STATE", "STARTED", "EXIT"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Relative times pick the largest whole unit, past and future.
    #[test]
    fn relative_times() {
        let now = 1_000_000_000;
        assert_eq!(relative_time(now - 5_000, now), "5s ago");
        assert_eq!(relative_time(now - 185_000, now), "3m ago");
        assert_eq!(relative_time(now - 7_300_000, now), "2h ago");
        assert_eq!(relative_time(now + 90_000, now), "in 1m");
        assert_eq!(relative_time(0, now), "-");
        assert_eq!(relative_time(now + 20, now), "just now");
        assert_eq!(relative_time(now - 3 * 86_400_000, now + 1), "3d ago");
    }

    /// Columns align to the widest cell.
    #[test]
    fn execs_render_as_an_aligned_table() {
        let reply = json!({"execs": [
            {"execId": "a", "state": "exited", "startedAtMs": 1000, "exitCode": 0},
            {"execId": "long-exec", "state": "running", "startedAtMs": 61_000, "exitCode": null}
        ]});
        assert_eq!(
            execs_table(&reply, 121_000),
            "EXEC       STATE    STARTED  EXIT\n\
             a          exited   2m ago   0\n\
             long-exec  running  1m ago   -\n"
        );
        assert_eq!(execs_table(&json!({"execs": []}), 0), "no execs\n");
    }
}

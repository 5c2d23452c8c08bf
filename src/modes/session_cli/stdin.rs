//! `exec -i`: what to do with this process's stdin. Piped stdin is read whole (up to
//! [`MAX_PIPED_STDIN_BYTES`]) and sent with the exec request, so any bytes arrive exactly. A terminal
//! is forwarded line by line through `…/stdin` while the exec runs; the exec asks for raw stdin, so
//! any line passes (for keystrokes and full-screen programs use `tale session shell`).
use super::client::{CliClient, CliError};
use hyper::Method;
use serde_json::json;
use std::io::{BufRead, IsTerminal, Read};

/// The most piped stdin `exec -i` sends (it travels base64-encoded inside the exec request, which
/// the spawner caps at 4 MiB).
pub const MAX_PIPED_STDIN_BYTES: usize = 2 * 1024 * 1024;
/// The longest line forwarded from a terminal in one request (longer ones go in pieces).
pub const MAX_STDIN_LINE_BYTES: usize = 64 * 1024;

/// How an exec gets its stdin.
pub enum StdinPlan {
    /// No stdin (closed at once).
    Closed,
    /// These bytes, then EOF.
    Whole(Vec<u8>),
    /// Held open; terminal lines are forwarded as they are typed, Ctrl-D sends EOF.
    Lines,
}

impl StdinPlan {
    /// Decides from `-i` and whether stdin is a terminal; reads piped stdin now.
    pub fn from_process(interactive: bool) -> Result<StdinPlan, CliError> {
        if !interactive {
            return Ok(StdinPlan::Closed);
        }
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Ok(StdinPlan::Lines);
        }
        let mut bytes = Vec::new();
        stdin
            .lock()
            .take(MAX_PIPED_STDIN_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::local(format!("cannot read stdin: {e}")))?;
        if bytes.len() > MAX_PIPED_STDIN_BYTES {
            return Err(CliError::local(format!(
                "piped stdin is over {} MiB, the most `exec -i` sends with the request; stage the \
                 data as a file (POST …/files/stage) and read it from there",
                MAX_PIPED_STDIN_BYTES / (1024 * 1024)
            )));
        }
        Ok(StdinPlan::Whole(bytes))
    }

    /// Adds `stdinBase64` / `stdinMode` to an exec request.
    pub fn apply(&self, request: &mut serde_json::Map<String, serde_json::Value>) {
        match self {
            StdinPlan::Closed => {}
            StdinPlan::Whole(bytes) => {
                request.insert(
                    "stdinBase64".into(),
                    json!(base64_simd::STANDARD.encode_to_string(bytes)),
                );
            }
            StdinPlan::Lines => {
                request.insert("stdinMode".into(), json!("raw"));
            }
        }
    }
}

/// Forwards terminal lines to `path` (`…/exec/:execId/stdin`) until EOF, then sends `eof`.
pub async fn forward_lines(client: CliClient, path: String) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    // A plain thread: a blocked terminal read must not keep the runtime from shutting down.
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match (&mut input)
                .take(MAX_STDIN_LINE_BYTES as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(_) => {
                    // Raw stdin: a long line goes in pieces, a last line without `\n` as it is.
                    if tx.blocking_send(Some(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let body = match &line {
            Some(line) => json!({"b64": base64_simd::STANDARD.encode_to_string(line)}),
            None => json!({"eof": true}),
        };
        match client.json(Method::POST, &path, Some(&body)).await {
            Ok(reply) if reply.body["ok"] == json!(true) => {}
            Ok(reply) => {
                let reason = reply.body["reason"].as_str().unwrap_or("refused");
                eprintln!("tale session: stdin line not delivered ({reason})");
            }
            Err(err) => eprintln!("tale session: stdin not delivered: {}", err.message),
        }
        if line.is_none() {
            return;
        }
    }
}

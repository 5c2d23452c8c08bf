//! `tale session shell` and the interactive `attach`: a remote pty exec driven from this terminal.
//!
//! Four things run at once until the exec ends or the user detaches: the exec's SSE stream is
//! written to stdout as it comes; a plain thread reads stdin (a blocked terminal read must not keep
//! the runtime from shutting down) and hands chunks over; one forwarder task posts them to
//! `…/stdin` in order, joining what piled up while a post was in flight; SIGWINCH posts a resize.
//! The local terminal is in raw mode meanwhile ([`RawMode`], restored when the loop returns).
use super::client::{CliError, CliClient};
use super::stream::{open, result_code, Target};
use super::terminal::{local_size, DetachScanner, RawMode};
use crate::shared::sse::SseParser;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// What `shell` runs when no command is given: a login shell, bash where the image has it.
pub const LOGIN_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";
/// Deadline `shell` asks for unless `--timeout-ms` says otherwise: a day, which the spawner clamps
/// to its maximum exec timeout (an attach restarts the deadline).
pub const DEFAULT_SHELL_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest chunk of typed (or pasted) bytes read at once and posted in one `…/stdin` request.
pub const STDIN_CHUNK_BYTES: usize = 16 * 1024;
/// Typed chunks waiting for the forwarder; the reader thread blocks beyond it (backpressure).
const PENDING_CHUNKS: usize = 64;

/// A pty exec to drive: where it lives, how its SSE stream is opened, and the detach keys.
pub struct Interactive<'a> {
    pub target: Target<'a>,
    /// `POST` with this body starts the exec; `None` attaches (`GET path`).
    pub body: Option<Value>,
    pub path: String,
    pub detach_keys: Vec<u8>,
}

/// Fails unless stdin and stdout are terminals (raw mode needs one, and a shell needs a person).
pub fn require_terminal(what: &str) -> Result<(), CliError> {
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(CliError::local(format!(
            "{what} needs a terminal on stdin and stdout (for a command with piped input use \
             `tale session exec -i`)"
        )))
    }
}

/// The body of the exec `shell` starts.
pub fn shell_request(
    exec_id: &str,
    command: &[String],
    cwd: Option<&str>,
    timeout_ms: u64,
) -> Value {
    let (cols, rows) = local_size();
    let line = if command.is_empty() {
        LOGIN_SHELL.to_owned()
    } else {
        command.join(" ")
    };
    let mut body = json!({
        "execId": exec_id,
        "shell": line,
        "pty": {"cols": cols, "rows": rows},
        "collectOutput": false,
        "timeoutMs": timeout_ms,
    });
    if let Some(cwd) = cwd {
        body["cwd"] = json!(cwd);
    }
    body
}

/// Runs the interactive loop; the exit code is the exec's, or 0 after a detach.
pub async fn run(client: &CliClient, session: Interactive<'_>) -> Result<ExitCode, CliError> {
    let target = &session.target;
    let mut winch = signal(SignalKind::window_change())
        .map_err(|e| CliError::local(format!("cannot watch the terminal size: {e}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| CliError::local(format!("cannot watch for SIGTERM: {e}")))?;
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|e| CliError::local(format!("cannot watch for SIGHUP: {e}")))?;
    // In raw mode Ctrl-C is a byte for the session; a SIGINT can only come from elsewhere (`kill`),
    // and like SIGTERM and SIGHUP it detaches, so the terminal is restored.
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| CliError::local(format!("cannot watch for SIGINT: {e}")))?;
    let mut stream = open(client, &session.path, session.body.as_ref(), target.session).await?;
    let detach_hint = if session.detach_keys.is_empty() {
        String::new()
    } else {
        format!("; detach with {}", describe_keys(&session.detach_keys))
    };
    eprint!(
        "tale session: shell exec {} in session {}{detach_hint}\r\n",
        target.exec_id, target.session
    );
    let resize_path = format!(
        "/v1/sessions/{}/exec/{}/resize",
        target.session, target.exec_id
    );
    let stdin_path = format!(
        "/v1/sessions/{}/exec/{}/stdin",
        target.session, target.exec_id
    );
    let raw = RawMode::enter()?;
    if session.body.is_none() {
        // A reattach: the remote terminal takes this terminal's size (and redraws).
        resize(client, &resize_path).await;
    }
    let (typed_tx, typed_rx) = mpsc::channel::<Vec<u8>>(PENDING_CHUNKS);
    let (detach_tx, mut detach_rx) = mpsc::channel::<()>(1);
    spawn_stdin_reader(typed_tx, session.detach_keys.clone(), detach_tx);
    let forwarder = tokio::spawn(forward_stdin(client.clone(), stdin_path, typed_rx));
    let mut parser = SseParser::default();
    let outcome = loop {
        let frame = tokio::select! {
            frame = stream.frame() => frame,
            _ = winch.recv() => {
                resize(client, &resize_path).await;
                continue;
            }
            _ = detach_rx.recv() => break Ending::Detached,
            _ = terminate.recv() => break Ending::Detached,
            _ = hangup.recv() => break Ending::Detached,
            _ = interrupt.recv() => break Ending::Detached,
        };
        match frame {
            None => break Ending::Broken("the stream ended without a result".into()),
            Some(Err(e)) => break Ending::Broken(format!("the stream broke ({e})")),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if let Some(ending) = write_events(&mut parser, &data) {
                    break ending;
                }
            }
        }
    };
    forwarder.abort();
    drop(raw);
    let attach = format!("tale session attach {} {}", target.session, target.exec_id);
    match outcome {
        Ending::Result(value) => Ok(result_code(&value, target)),
        Ending::Detached => {
            eprintln!(
                "\ntale session: detached; shell exec {} keeps running in session {}; reattach with: \
                 {attach} (end it: tale session cancel {} {})",
                target.exec_id, target.session, target.session, target.exec_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Ending::Error(message) => Err(CliError::refused(message)),
        Ending::Broken(message) => Err(CliError::local(format!(
            "{message}; reattach with: {attach}"
        ))),
    }
}

enum Ending {
    Result(Value),
    Detached,
    Error(String),
    Broken(String),
}

/// Writes the exec's output to stdout; `Some` once it ended.
fn write_events(parser: &mut SseParser, data: &[u8]) -> Option<Ending> {
    let mut out = std::io::stdout().lock();
    for event in parser.feed(data) {
        let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            "stdout" | "stderr" => {
                let _ = out.write_all(value["text"].as_str().unwrap_or("").as_bytes());
            }
            "result" => return Some(Ending::Result(value)),
            "error" => {
                let message = value["message"].as_str().unwrap_or("stream error");
                return Some(Ending::Error(message.to_owned()));
            }
            _ => {}
        }
    }
    let _ = out.flush();
    None
}

/// Tells the remote terminal this terminal's size; a failure only costs the redraw.
async fn resize(client: &CliClient, path: &str) {
    let (cols, rows) = local_size();
    let _ = client
        .json(
            Method::POST,
            path,
            Some(&json!({"cols": cols, "rows": rows})),
        )
        .await;
}

/// Reads typed bytes on a plain thread, holding back the detach sequence.
fn spawn_stdin_reader(typed: mpsc::Sender<Vec<u8>>, keys: Vec<u8>, detach: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut scanner = DetachScanner::new(keys);
        let mut input = std::io::stdin().lock();
        let mut buffer = vec![0u8; STDIN_CHUNK_BYTES];
        loop {
            let n = match input.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let scanned = scanner.feed(&buffer[..n]);
            if !scanned.forward.is_empty() && typed.blocking_send(scanned.forward).is_err() {
                return;
            }
            if scanned.detach {
                let _ = detach.blocking_send(());
                return;
            }
        }
    });
}

/// Posts typed bytes in order; bytes that arrived during a post go out together in the next.
async fn forward_stdin(client: CliClient, path: String, mut typed: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut bytes) = typed.recv().await {
        while bytes.len() < STDIN_CHUNK_BYTES {
            match typed.try_recv() {
                Ok(more) => bytes.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let body = json!({"b64": base64_simd::STANDARD.encode_to_string(&bytes)});
        match client.json(Method::POST, &path, Some(&body)).await {
            Ok(reply) if reply.body["ok"] == json!(true) => {}
            Ok(reply) => {
                let reason = reply.body["reason"].as_str().unwrap_or("refused");
                eprint!("\r\ntale session: keys not delivered ({reason})\r\n");
            }
            Err(err) => eprint!("\r\ntale session: keys not delivered: {}\r\n", err.message),
        }
    }
}

/// `ctrl-p ctrl-q` for the bytes of a detach sequence.
fn describe_keys(keys: &[u8]) -> String {
    keys.iter()
        .map(|&b| match b {
            0..=0x1f => format!("ctrl-{}", ((b | 0x40) as char).to_ascii_lowercase()),
            b => (b as char).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detach keys are named back as they are written.
    #[test]
    fn key_descriptions() {
        assert_eq!(describe_keys(&[0x10, 0x11]), "ctrl-p ctrl-q");
        assert_eq!(describe_keys(&[0x1d, b'x']), "ctrl-] x");
    }

    /// The shell request asks for a pty, runs a login shell unless told otherwise.
    #[test]
    fn shell_requests() {
        let body = shell_request("s1", &[], None, 5);
        assert_eq!(body["shell"], LOGIN_SHELL);
        assert!(body["pty"]["cols"].as_u64().unwrap() > 0);
        assert_eq!(
            (body["timeoutMs"].clone(), body.get("cwd")),
            (json!(5), None)
        );
        let body = shell_request("s1", &["top".into(), "-b".into()], Some("sub"), 5);
        assert_eq!(
            (body["shell"].clone(), body["cwd"].clone()),
            (json!("top -b"), json!("sub"))
        );
    }
}

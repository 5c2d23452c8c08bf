//! `exec` and `attach`: stream an exec's SSE output to this terminal, announce the exec id, detach on
//! Ctrl-C with the command that resumes, and forward stdin when asked.
use super::client::{session_missing, CliClient, CliError};
use super::stdin::{forward_lines, StdinPlan};
use crate::shared::sse::SseParser;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;

/// Exit code after Ctrl-C detached from a still-running exec (128 + SIGINT, as a shell reports it).
pub const DETACHED: u8 = 130;
/// Exit code when the command could not be found in the session (as a shell reports it).
pub const NOT_FOUND: u8 = 127;
/// Exit code when the command was found but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;

/// Where an exec lives, for the messages that tell how to resume it.
pub struct Target<'a> {
    pub session: &'a str,
    pub exec_id: &'a str,
    /// `argv[0]` when the exec runs an argv (named when it is not found).
    pub program: Option<&'a str>,
}

impl Target<'_> {
    fn resume_hint(&self, since_seq: u64) -> String {
        let since = if since_seq > 0 {
            format!(" --since-seq {since_seq}")
        } else {
            String::new()
        };
        format!(
            "resume with: tale session attach {} {}{since}",
            self.session, self.exec_id
        )
    }
}

/// Starts (`body` given) or attaches to an exec and streams it until its result.
pub async fn run(
    client: &CliClient,
    path: &str,
    body: Option<&Value>,
    target: Target<'_>,
    stdin: StdinPlan,
) -> Result<ExitCode, CliError> {
    // Registered before the request, so a Ctrl-C from the moment the id is printed detaches.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::local(format!("cannot watch for Ctrl-C: {e}")))?;
    let mut stream = open(client, path, body, target.session).await?;
    if body.is_some() {
        eprintln!(
            "tale session: exec {} started in session {} (Ctrl-C detaches; {})",
            target.exec_id,
            target.session,
            target.resume_hint(0)
        );
    }
    let forwarder = match stdin {
        StdinPlan::Lines => Some(tokio::spawn(forward_lines(
            client.clone(),
            format!(
                "/v1/sessions/{}/exec/{}/stdin",
                target.session, target.exec_id
            ),
        ))),
        _ => None,
    };
    let mut parser = SseParser::default();
    let mut last_seq = 0;
    let outcome = loop {
        let frame = tokio::select! {
            frame = stream.frame() => frame,
            _ = interrupt.recv() => {
                eprintln!(
                    "\ntale session: detached; exec {} keeps running in session {}; {} (stop it: tale session cancel {} {})",
                    target.exec_id, target.session, target.resume_hint(last_seq), target.session, target.exec_id
                );
                break Ok(ExitCode::from(DETACHED));
            }
        };
        let Some(frame) = frame else {
            break Err(CliError::local(format!(
                "the stream ended without a result; {}",
                target.resume_hint(last_seq)
            )));
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                break Err(CliError::local(format!(
                    "the stream broke after seq {last_seq} ({e}); {}",
                    target.resume_hint(last_seq)
                )))
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if let Some(done) = print_events(&mut parser, &data, &mut last_seq, &target) {
            break done;
        }
    };
    if let Some(forwarder) = forwarder {
        forwarder.abort();
    }
    outcome
}

/// Starts (`body` given: POST) or attaches to (GET) an exec: its SSE body, or the refusal (a 404
/// names the session).
pub async fn open(
    client: &CliClient,
    path: &str,
    body: Option<&Value>,
    session: &str,
) -> Result<Incoming, CliError> {
    let method = if body.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let response = client.send(method, path, body).await?;
    let status = response.status().as_u16();
    let stream = response.into_body();
    if status == 200 {
        return Ok(stream);
    }
    let bytes = stream
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Err(if status == 404 {
        session_missing(session)
    } else {
        super::client::refusal(status, &value)
    })
}

/// Prints the events in one chunk; `Some` once the exec's result (or an error) arrived.
fn print_events(
    parser: &mut SseParser,
    data: &[u8],
    last_seq: &mut u64,
    target: &Target<'_>,
) -> Option<Result<ExitCode, CliError>> {
    for event in parser.feed(data) {
        let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        if let Some(seq) = value.get("seq").and_then(Value::as_u64) {
            *last_seq = seq;
        }
        match event.event.as_str() {
            "stdout" => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(value["text"].as_str().unwrap_or("").as_bytes());
                let _ = out.flush();
            }
            "stderr" => {
                let _ =
                    std::io::stderr().write_all(value["text"].as_str().unwrap_or("").as_bytes());
            }
            "gap" => eprintln!(
                "tale session: output {}..{} was lost (beyond the replay budget)",
                value["fromSeq"], value["toSeq"]
            ),
            "error" => {
                let message = value["message"].as_str().unwrap_or("stream error");
                return Some(Err(CliError::refused(if message.ends_with("not found") {
                    format!(
                        "exec {:?} not found in session {:?} (list its execs with `tale session execs {}`)",
                        target.exec_id, target.session, target.session
                    )
                } else {
                    message.to_owned()
                })));
            }
            "result" => return Some(Ok(result_code(&value, target))),
            _ => {}
        }
    }
    None
}

/// The exit code for a `result` event: the command's own, else 127/126 when it could not start.
pub(super) fn result_code(value: &Value, target: &Target<'_>) -> ExitCode {
    let message = value["errorMessage"].as_str();
    if let Some(code) = value["exitCode"].as_i64() {
        if let Some(message) = message {
            eprintln!(
                "tale session: {message} ({})",
                value["errorCode"].as_str().unwrap_or("")
            );
        }
        return ExitCode::from((code & 0xff) as u8);
    }
    let message = message.unwrap_or("the exec ended without an exit code");
    if message.starts_with("spawn failed") {
        let program = target.program.unwrap_or("the command");
        // A bare name is searched on PATH, where an unreadable directory reports EACCES rather than
        // ENOENT: as in a shell, only a path that exists but cannot run is "cannot be executed".
        if message.contains("No such file") || !program.contains('/') {
            eprintln!("tale session: {program}: command not found in the session");
            return ExitCode::from(NOT_FOUND);
        }
        eprintln!("tale session: {program}: cannot be executed ({message})");
        return ExitCode::from(NOT_EXECUTABLE);
    }
    eprintln!(
        "tale session: {message} ({})",
        value["errorCode"].as_str().unwrap_or("")
    );
    ExitCode::from(super::CLI_FAILURE)
}

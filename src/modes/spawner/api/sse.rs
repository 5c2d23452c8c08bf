//! Turning a runnerd NDJSON stream into the spawner's SSE grammar: `phase`, `stdout`/`stderr`
//! (`{text, seq}`, text decoded without ever splitting a character), additive `gap`, one `result`,
//! or `error`; every event with a seq carries `id: <seq>`; a keepalive comment every 20 s.
//!
//! With an [`AgentTap`] (the `agent-runs` routes) the decoded stdout text is also fed to the agent's
//! parser and each normalized event follows the `stdout` event that completed it as
//! `event: agent`, `id: <seq>.<n>`. A resumed agent attach replays the exec from its start (to
//! re-parse it) and sends only what lies after the client's position.
use crate::modes::spawner::agents::request::StreamPosition;
use crate::modes::spawner::agents::{AgentEvent, AgentEventParser, ExecEnding, RunEnd};
use crate::modes::spawner::metrics::Metrics;
use crate::modes::spawner::runnerd_client::{EventStream, RunnerdClient};
use crate::modes::spawner::state::Spawner;
use crate::shared::http::{channel_body, HttpResponse};
use crate::shared::protocol::runnerd::{ExecEvent, Truncated};
use crate::shared::protocol::runnerd::{ExecStatus, ExecStatusState};
use crate::shared::protocol::spawner::{
    ErrorData, GapData, OutputData, PhaseData, SessionExecResponse,
};
use crate::shared::sse::{
    event_frame, event_frame_with_id, Utf8StreamDecoder, KEEPALIVE_FRAME, KEEPALIVE_INTERVAL,
};
use base64_simd::STANDARD;
use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Frames that may wait between the proxy task and the client.
const SSE_CHANNEL_DEPTH: usize = 16;

/// How many events before its resume point a plain attach replays (decoded, never sent) so that
/// a character cut at that point is rebuilt from the bytes the client's earlier connection held
/// back. When those events hold fewer than 3 bytes of a stream (the most a cut character leaves
/// pending), the attach replays the exec from its start instead.
pub const RESUME_LOOKBACK_EVENTS: u64 = 16;

/// What the proxy is for.
pub enum ProxyMode {
    /// The primary exec stream: collects output into the result when `collect` is set.
    Exec { collect: bool },
    /// An attach: the result carries empty buffers. `resumed` is set when the client resumes
    /// after a position it already has.
    Attach { resumed: Option<Box<ResumedAttach>> },
}

/// A resumed attach whose stream may end before any event: the client already holds everything
/// up to the end (its `Last-Event-ID` is the `result`'s id or beyond) when runnerd says the exec
/// finished. Then the stream just ends; it is not a lost session.
pub struct ResumedAttach {
    pub runnerd: RunnerdClient,
    pub exec_id: String,
    /// The client holds every event up to this seq.
    pub since_seq: u64,
    /// The seq the runnerd stream was opened after (`since_seq` minus the lookback).
    pub opened_after: u64,
}

impl ResumedAttach {
    /// Where a resumed plain attach opens runnerd's journal: a few events early (see
    /// [`RESUME_LOOKBACK_EVENTS`]).
    pub fn lookback_start(since_seq: u64) -> u64 {
        since_seq.saturating_sub(RESUME_LOOKBACK_EVENTS)
    }

    async fn exec_finished(&self) -> bool {
        matches!(
            self.runnerd.status(&self.exec_id).await,
            Ok((
                _,
                ExecStatus {
                    state: ExecStatusState::Exited { .. },
                    ..
                }
            ))
        )
    }
}

/// An SSE response and the sender that feeds it.
pub fn sse_response() -> (mpsc::Sender<Bytes>, HttpResponse) {
    let (tx, body) = channel_body(SSE_CHANNEL_DEPTH);
    let mut response = hyper::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (tx, response)
}

/// Normalized agent events parsed from an exec's stdout, alongside the exec events, and the one
/// terminal `result` the run's ending calls for ([`RunEnd`]).
pub struct AgentTap {
    parser: AgentEventParser,
    end: RunEnd,
    /// Everything at or before this position was delivered on an earlier connection.
    resume_after: StreamPosition,
    last_seq: u64,
}

impl AgentTap {
    pub fn new(parser: AgentEventParser, resume_after: StreamPosition) -> AgentTap {
        AgentTap {
            parser,
            end: RunEnd::default(),
            resume_after,
            last_seq: 0,
        }
    }

    /// Whether an exec event at `seq` is new to the client.
    fn is_new(&self, seq: u64) -> bool {
        StreamPosition { seq, sub: 0 } > self.resume_after
    }

    /// The `agent` frames of `events`, parsed from the chunk at `seq`, that are new to the client.
    fn frames(&mut self, seq: u64, events: Vec<AgentEvent>) -> Vec<Bytes> {
        self.frames_from(seq, 1, events)
    }

    /// Like [`AgentTap::frames`], numbering from `first_sub`.
    fn frames_from(&mut self, seq: u64, first_sub: usize, events: Vec<AgentEvent>) -> Vec<Bytes> {
        self.last_seq = self.last_seq.max(seq);
        events
            .into_iter()
            .enumerate()
            .filter_map(|(n, mut event)| {
                self.end.observe(&mut event);
                let position = StreamPosition {
                    seq,
                    sub: u32::try_from(n + first_sub).unwrap_or(u32::MAX),
                };
                (position > self.resume_after)
                    .then(|| event_frame_with_id("agent", Some(&position.id()), &event))
            })
            .collect()
    }

    /// The frames that end the run at the terminal event `seq`: the events of the last stdout
    /// text, then the synthesized `result` if the ending calls for one (`<seq>.<n+1>`: the same
    /// id on every replay).
    fn finish(&mut self, seq: u64, rest: &str, ending: ExecEnding) -> Vec<Bytes> {
        let mut events = self.parser.feed(rest);
        events.extend(self.parser.end());
        let count = events.len();
        let mut frames = self.frames(seq, events);
        if let Some(terminal) = self.end.finish(&ending) {
            frames.extend(self.frames_from(seq, count + 1, vec![terminal]));
        }
        frames
    }
}

/// How a terminal exec event ended the run (the same rule as the exec's `result.reason`).
fn ending(event: &ExecEvent) -> ExecEnding {
    match event {
        ExecEvent::Exit {
            cancelled: true, ..
        } => ExecEnding::Cancelled,
        ExecEvent::Exit {
            timed_out: true,
            exit_code,
            ..
        } if *exit_code != 0 => ExecEnding::TimedOut,
        ExecEvent::Exit { exit_code, .. } => ExecEnding::Exited {
            exit_code: *exit_code,
        },
        ExecEvent::Fail { message, .. } => ExecEnding::Failed {
            message: message.clone(),
        },
        _ => ExecEnding::Lost,
    }
}

/// One output stream's decoder and whether its held-back bytes are known to be those the client's
/// earlier connection held: they are once the decoder saw 3 bytes, or the stream's start, or a
/// gap (which resets it).
struct StreamText {
    decoder: Utf8StreamDecoder,
    fed: usize,
    from_start: bool,
}

impl StreamText {
    fn new(from_start: bool) -> StreamText {
        StreamText {
            decoder: Utf8StreamDecoder::default(),
            fed: 0,
            from_start,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> String {
        self.fed = self.fed.saturating_add(bytes.len());
        self.decoder.feed(bytes)
    }

    /// Bytes around a gap do not join up: the cut character is dropped.
    fn reset(&mut self) {
        *self = StreamText::new(true);
    }

    fn settled(&self) -> bool {
        self.from_start || self.fed >= 3
    }
}

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Pumps `stream` into `tx` until a terminal event, the stream's end, or the client leaving.
/// Returns the result it sent, if any.
pub async fn pump(
    spawner: Arc<Spawner>,
    session_id: String,
    mut stream: EventStream,
    tx: mpsc::Sender<Bytes>,
    mode: ProxyMode,
    mut agent: Option<AgentTap>,
) -> Option<SessionExecResponse> {
    let collect = matches!(mode, ProxyMode::Exec { collect: true });
    let mut collected = Collected::default();
    // A resumed plain attach replays a few events the client already has, only to decode them.
    let (mut replayed_through, opened_at_start) = match (&mode, &agent) {
        (ProxyMode::Attach { resumed: Some(r) }, None) => (r.since_seq, r.opened_after == 0),
        _ => (0, true),
    };
    let mut stdout_text = StreamText::new(opened_at_start);
    let mut stderr_text = StreamText::new(opened_at_start);
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
        KEEPALIVE_INTERVAL,
    );
    let send = |frame: Bytes| {
        let tx = tx.clone();
        async move { tx.send(frame).await.is_ok() }
    };
    let mut seen_any = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = keepalive.tick() => {
                if !send(Bytes::from_static(KEEPALIVE_FRAME)).await { return None; }
                continue;
            }
            _ = tx.closed() => return None,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                if let (
                    false,
                    ProxyMode::Attach {
                        resumed: Some(resumed),
                    },
                ) = (seen_any, &mode)
                {
                    if resumed.exec_finished().await {
                        return None;
                    }
                }
                let result = SessionExecResponse::session_lost(
                    STANDARD.encode_to_string(&collected.stdout),
                    STANDARD.encode_to_string(&collected.stderr),
                    Truncated::default(),
                );
                if let Some(tap) = agent.as_mut() {
                    // No terminal seq: the run's end sits after everything it streamed.
                    let seq = tap.last_seq + 1;
                    for frame in tap.finish(seq, "", ExecEnding::Lost) {
                        send(frame).await;
                    }
                }
                send(event_frame("result", None, &result)).await;
                record_outcome(&spawner, &result);
                background_evict(&spawner, &session_id);
                return Some(result);
            }
            Err(err) => {
                send(event_frame(
                    "error",
                    None,
                    &ErrorData {
                        message: err.to_string(),
                    },
                ))
                .await;
                background_evict(&spawner, &session_id);
                return None;
            }
        };
        let replayed = match &event {
            ExecEvent::Gap { to_seq, .. } => *to_seq <= replayed_through,
            event => event.seq().is_some_and(|seq| seq <= replayed_through),
        };
        if replayed_through > 0 && !replayed {
            // The first event the client lacks: are the held-back bytes known by now?
            if !(stdout_text.settled() && stderr_text.settled()) {
                if let ProxyMode::Attach {
                    resumed: Some(resumed),
                } = &mode
                {
                    // Too few bytes in the lookback: decode the exec from its start instead.
                    // (When the exec vanished meanwhile, carry on with what is known.)
                    if let Ok(Some(from_start)) = resumed.runnerd.attach(&resumed.exec_id, 0).await
                    {
                        stream = from_start;
                        stdout_text = StreamText::new(true);
                        stderr_text = StreamText::new(true);
                        continue;
                    }
                }
            }
            replayed_through = 0;
        }
        if !replayed {
            seen_any = true;
        }
        keepalive.reset();
        // Replayed events the client already has (a resumed attach) are decoded, not sent.
        let fresh = match (&agent, &event) {
            (None, _) => !replayed,
            (Some(tap), ExecEvent::Gap { to_seq, .. }) => tap.is_new(*to_seq),
            (Some(tap), event) => event.seq().is_none_or(|seq| tap.is_new(seq)),
        };
        let mut agent_frames = Vec::new();
        let frame = match &event {
            ExecEvent::Start { seq, .. } => event_frame(
                "phase",
                Some(*seq),
                &PhaseData {
                    phase: "running".into(),
                },
            ),
            ExecEvent::Stdout { b64, seq } | ExecEvent::Stderr { b64, seq } => {
                let bytes = chunk_bytes(b64);
                if fresh {
                    spawner.metrics.bytes_streamed.inc_by(bytes.len() as u64);
                }
                let is_stdout = matches!(event, ExecEvent::Stdout { .. });
                let (decoder, buffer, name) = if is_stdout {
                    (&mut stdout_text, &mut collected.stdout, "stdout")
                } else {
                    (&mut stderr_text, &mut collected.stderr, "stderr")
                };
                if collect {
                    buffer.extend_from_slice(&bytes);
                }
                let text = decoder.feed(&bytes);
                match (is_stdout, agent.as_mut()) {
                    (true, Some(tap)) => {
                        let events = tap.parser.feed(&text);
                        agent_frames = tap.frames(*seq, events);
                    }
                    (false, Some(tap)) => tap.end.observe_stderr(&text),
                    _ => {}
                }
                event_frame(name, Some(*seq), &OutputData { text, seq: *seq })
            }
            ExecEvent::Gap { from_seq, to_seq } => {
                // The bytes around the gap do not join up: drop the cut line and character.
                if let Some(tap) = agent.as_mut() {
                    tap.parser.discard_partial_line();
                }
                stdout_text.reset();
                stderr_text.reset();
                event_frame(
                    "gap",
                    None,
                    &GapData {
                        from_seq: *from_seq,
                        to_seq: *to_seq,
                    },
                )
            }
            ExecEvent::Exit { .. } | ExecEvent::Fail { .. } => {
                // Bytes of a character cut at the very end are flushed (lossily) before the result.
                let seq = event.seq().unwrap_or(0);
                let mut stdout_rest = String::new();
                for (decoder, name) in [(&mut stdout_text, "stdout"), (&mut stderr_text, "stderr")]
                {
                    let rest = decoder.decoder.finish();
                    match (agent.as_mut(), name) {
                        (Some(_), "stdout") => stdout_rest.clone_from(&rest),
                        (Some(tap), _) => tap.end.observe_stderr(&rest),
                        _ => {}
                    }
                    if fresh && !rest.is_empty() {
                        send(event_frame(name, None, &OutputData { text: rest, seq })).await;
                    }
                }
                if let Some(tap) = agent.as_mut() {
                    agent_frames = tap.finish(seq, &stdout_rest, ending(&event));
                }
                for frame in agent_frames {
                    send(frame).await;
                }
                let (stdout, stderr) = if collect {
                    (
                        STANDARD.encode_to_string(&collected.stdout),
                        STANDARD.encode_to_string(&collected.stderr),
                    )
                } else {
                    (String::new(), String::new())
                };
                let result = SessionExecResponse::from_terminal(&event, stdout, stderr)
                    .expect("terminal events map to a result");
                // A resumed agent attach whose client already has the result gets none again.
                if fresh {
                    send(event_frame("result", event.seq(), &result)).await;
                    record_outcome(&spawner, &result);
                }
                return Some(result);
            }
        };
        if fresh && !send(frame).await {
            return None;
        }
        for frame in agent_frames {
            if !send(frame).await {
                return None;
            }
        }
    }
}

/// The bytes of a `stdout`/`stderr` event. runnerd sends padded standard base64; a chunk that is not
/// (which runnerd never sends) counts as empty rather than ending the stream, its seq still sent.
fn chunk_bytes(b64: &str) -> Vec<u8> {
    STANDARD.decode_to_vec(b64).unwrap_or_default()
}

fn record_outcome(spawner: &Spawner, result: &SessionExecResponse) {
    let reason = result.reason.as_str();
    spawner
        .metrics
        .exec_outcomes
        .get_or_create(&Metrics::label("reason", reason))
        .inc();
}

fn background_evict(spawner: &Arc<Spawner>, session_id: &str) {
    let spawner = spawner.clone();
    let session_id = session_id.to_owned();
    tokio::spawn(async move {
        spawner.evict_if_gone(&session_id).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    // The `base64` crate as an independent oracle (a dev-dependency only).
    use base64::engine::general_purpose::STANDARD as ORACLE;
    use base64::Engine;

    /// The SIMD decoder accepts and rejects exactly what the `base64` crate's strict decoder did
    /// (padding required, canonical trailing bits, no whitespace), so invalid chunks stay empty.
    #[test]
    fn chunk_bytes_matches_the_strict_base64_decoder() {
        let long = ORACLE.encode((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>());
        // Past the SIMD decoder's block size, with one bad character in the middle.
        let long_bad = format!("{}*{}", &long[..5000], &long[5001..]);
        let inputs = [
            "",
            "aGk=",
            "aGVsbG8gd29ybGQ=",
            "AAEC",
            "+/+/",
            long.as_str(),
            long_bad.as_str(),
            "aGk",
            "aGk==",
            "aGl=",
            "QR==",
            "a Gk=",
            "aGk=\n",
            "=aGk",
            "aG=k",
            "A===",
            "====",
            "-_-_",
            "aGk=aGk=",
            "\u{e9}\u{e9}",
        ];
        for input in inputs {
            assert_eq!(
                chunk_bytes(input),
                ORACLE.decode(input).unwrap_or_default(),
                "{input:?}"
            );
        }
        assert_eq!(chunk_bytes("aGk="), b"hi");
        assert!(
            chunk_bytes("aGk").is_empty(),
            "invalid input is an empty chunk"
        );
    }
}

//! Server-sent events: frames as the spawner writes them, a UTF-8 decoder that never splits a
//! character across two events, and a parser for clients (the operator CLI, tests).
use bytes::Bytes;
use std::time::Duration;

/// A comment frame sent when nothing else was, so proxies keep the stream open.
pub const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";
/// Between keepalive frames.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// `event: <name>\n[id: <id>\n]data: <json>\n\n`. `data` is single-line JSON.
pub fn event_frame(name: &str, id: Option<u64>, data: &impl serde::Serialize) -> Bytes {
    event_frame_with_id(name, id.map(|id| id.to_string()).as_deref(), data)
}

/// [`event_frame`] with any id text (agent events use `<seq>.<n>`). The id must not hold a newline.
pub fn event_frame_with_id(name: &str, id: Option<&str>, data: &impl serde::Serialize) -> Bytes {
    let mut frame = format!("event: {name}\n");
    if let Some(id) = id {
        debug_assert!(!id.contains('\n'));
        frame.push_str(&format!("id: {id}\n"));
    }
    frame.push_str("data: ");
    frame.push_str(&serde_json::to_string(data).expect("event data serializes"));
    frame.push_str("\n\n");
    Bytes::from(frame)
}

/// Decodes a byte stream to text chunk by chunk, holding back the (at most 3) bytes of a character
/// cut by a chunk boundary until the next chunk; invalid bytes become U+FFFD as in a lossy decoder.
#[derive(Debug, Default)]
pub struct Utf8StreamDecoder {
    pending: Vec<u8>,
}

impl Utf8StreamDecoder {
    /// The text of everything fed so far that forms complete characters.
    pub fn feed(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let mut held = 0;
        let mut pieces = self.pending.utf8_chunks().peekable();
        while let Some(piece) = pieces.next() {
            out.push_str(piece.valid());
            let invalid = piece.invalid();
            if pieces.peek().is_none() && is_cut_character(invalid) {
                // An incomplete sequence at the end: keep it for the next chunk.
                held = invalid.len();
            } else if !invalid.is_empty() {
                out.push('\u{FFFD}');
            }
        }
        self.pending.drain(..self.pending.len() - held);
        out
    }

    /// Flushes held-back bytes (lossily) at the end of the stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Whether `bytes` is the start of a character that more bytes could complete.
fn is_cut_character(bytes: &[u8]) -> bool {
    !bytes.is_empty() && std::str::from_utf8(bytes).is_err_and(|err| err.error_len().is_none())
}

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data || !self.current.event.is_empty() {
                    let mut event = std::mem::take(&mut self.current);
                    if event.event.is_empty() {
                        event.event = "message".into();
                    }
                    events.push(event);
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => self.current.event = value,
                "id" => self.current.id = Some(value),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split point of multi-byte text decodes to exactly the original, never U+FFFD.
    #[test]
    fn split_characters_survive_every_boundary() {
        let text = "aé€😀b€é😀";
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut decoder = Utf8StreamDecoder::default();
                let mut out = decoder.feed(&bytes[..i]);
                out.push_str(&decoder.feed(&bytes[i..j]));
                out.push_str(&decoder.feed(&bytes[j..]));
                out.push_str(&decoder.finish());
                assert_eq!(out, text, "split at {i},{j}");
            }
        }
    }

    /// Invalid bytes still become replacement characters; a truncated tail is flushed lossily.
    #[test]
    fn invalid_bytes_are_replaced() {
        let mut decoder = Utf8StreamDecoder::default();
        assert_eq!(decoder.feed(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(decoder.feed(b"\xe2\x82"), "");
        assert_eq!(decoder.finish(), "\u{FFFD}");
    }

    /// Frames parse back to the same events, whatever the chunking.
    #[test]
    fn frames_round_trip_through_the_parser() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&event_frame(
            "stdout",
            Some(3),
            &serde_json::json!({"text": "hi", "seq": 3}),
        ));
        stream.extend_from_slice(KEEPALIVE_FRAME);
        stream.extend_from_slice(&event_frame(
            "phase",
            None,
            &serde_json::json!({"phase": "running"}),
        ));
        stream.extend_from_slice(b"event: x\r\ndata: a\r\ndata: b\r\n\r\n");
        for size in [1, 2, 7, stream.len()] {
            let mut parser = SseParser::default();
            let events: Vec<SseEvent> = stream.chunks(size).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(events.len(), 3);
            assert_eq!(
                events[0],
                SseEvent {
                    event: "stdout".into(),
                    id: Some("3".into()),
                    data: r#"{"seq":3,"text":"hi"}"#.into()
                }
            );
            assert_eq!(events[1].event, "phase");
            assert_eq!(events[1].id, None);
            assert_eq!(events[2].data, "a\nb");
        }
    }
}

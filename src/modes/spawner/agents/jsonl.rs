//! Line handling shared by every adapter (spec agents §5): the CLI's stdout arrives in chunks cut
//! anywhere; [`LineReassembler`] turns them into trimmed, non-empty lines, and [`AgentEventParser`]
//! maps each JSON-object line through the adapter's [`EventMapper`].
//!
//! A line is bounded by [`MAX_AGENT_LINE_BYTES`] so a runaway line (a CLI printing megabytes without
//! a newline) cannot grow memory without limit: past the cap the line's bytes are discarded up to
//! its newline and the parser reports one `error` event naming the dropped size.
use super::events::AgentEvent;
use serde_json::{Map, Value};

/// Longest stdout line a parser holds (4 MiB, the same bound as runnerd's NDJSON lines); a longer
/// line is dropped whole and becomes one `error` event.
pub const MAX_AGENT_LINE_BYTES: usize = 4 * 1024 * 1024;
/// How much of an unreadable line is logged.
pub const LOGGED_LINE_PREFIX_CHARS: usize = 120;

/// One unit out of the reassembler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reassembled {
    /// A complete line, trimmed, never empty.
    Line(String),
    /// A line longer than the cap was discarded; `bytes` is its length up to the newline.
    Dropped { bytes: usize },
}

/// Splits a text stream into lines whatever the chunking: complete lines are trimmed and empty ones
/// dropped; the unterminated tail is kept for the next chunk (or [`LineReassembler::flush`]).
#[derive(Debug)]
pub struct LineReassembler {
    partial: String,
    /// Bytes of the current line counted after it passed the cap (0: not overflowing).
    dropped: usize,
    max_line_bytes: usize,
}

impl Default for LineReassembler {
    fn default() -> Self {
        LineReassembler::with_max_line_bytes(MAX_AGENT_LINE_BYTES)
    }
}

impl LineReassembler {
    pub fn with_max_line_bytes(max_line_bytes: usize) -> LineReassembler {
        LineReassembler {
            partial: String::new(),
            dropped: 0,
            max_line_bytes,
        }
    }

    /// Feeds a chunk; returns the lines it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<Reassembled> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(newline) = rest.find('\n') {
            self.append(&rest[..newline]);
            out.extend(self.take_line());
            rest = &rest[newline + 1..];
        }
        self.append(rest);
        out
    }

    /// The unterminated tail at the end of the stream, if it holds anything but whitespace.
    pub fn flush(&mut self) -> Option<Reassembled> {
        self.take_line()
    }

    /// Forgets the unterminated tail (the bytes after it are not its continuation: output was lost).
    pub fn discard_partial(&mut self) {
        self.partial = String::new();
        self.dropped = 0;
    }

    fn append(&mut self, piece: &str) {
        if self.dropped > 0 {
            self.dropped += piece.len();
        } else if self.partial.len() + piece.len() > self.max_line_bytes {
            self.dropped = self.partial.len() + piece.len();
            // Release the memory, not just the length.
            self.partial = String::new();
        } else {
            self.partial.push_str(piece);
        }
    }

    fn take_line(&mut self) -> Option<Reassembled> {
        if self.dropped > 0 {
            let bytes = std::mem::take(&mut self.dropped);
            return Some(Reassembled::Dropped { bytes });
        }
        let line = std::mem::take(&mut self.partial);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            None
        } else if trimmed.len() == line.len() {
            Some(Reassembled::Line(line))
        } else {
            Some(Reassembled::Line(trimmed.to_owned()))
        }
    }
}

/// A line as a JSON object; anything else (invalid JSON, an array, a scalar) is `None` and is
/// skipped by the parser (logged with its length and first characters).
pub fn parse_json_line(line: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => Some(object),
        _ => {
            let prefix: String = line.chars().take(LOGGED_LINE_PREFIX_CHARS).collect();
            tracing::debug!(
                len = line.len(),
                prefix,
                "agent output line is not a JSON object; skipped"
            );
            None
        }
    }
}

/// An adapter's mapping from one native JSON event to normalized events. Stateful (e.g. Claude
/// Code's seen message ids), one per stream.
pub trait EventMapper: Send {
    fn map(&mut self, event: Map<String, Value>) -> Vec<AgentEvent>;
}

/// Native JSONL text in, normalized events out, for any chunking (spec `feed`/`end`).
pub struct AgentEventParser {
    lines: LineReassembler,
    mapper: Box<dyn EventMapper>,
}

impl AgentEventParser {
    pub fn new(mapper: Box<dyn EventMapper>) -> AgentEventParser {
        AgentEventParser {
            lines: LineReassembler::default(),
            mapper,
        }
    }

    /// Feeds decoded stdout text; returns the events of the lines it completed.
    pub fn feed(&mut self, chunk: &str) -> Vec<AgentEvent> {
        let lines = self.lines.push(chunk);
        self.map_all(lines)
    }

    /// The events of a final unterminated line.
    pub fn end(&mut self) -> Vec<AgentEvent> {
        let last = self.lines.flush();
        self.map_all(last.into_iter().collect())
    }

    /// Output was lost (a journal gap): the partial line before it cannot be completed.
    pub fn discard_partial_line(&mut self) {
        self.lines.discard_partial();
    }

    fn map_all(&mut self, lines: Vec<Reassembled>) -> Vec<AgentEvent> {
        let mut events = Vec::new();
        for line in lines {
            match line {
                Reassembled::Line(line) => {
                    if let Some(object) = parse_json_line(&line) {
                        events.extend(self.mapper.map(object));
                    }
                }
                Reassembled::Dropped { bytes } => events.push(AgentEvent::Error {
                    message: format!(
                        "an agent output line of {bytes} bytes exceeded the {MAX_AGENT_LINE_BYTES}-byte line cap and was dropped"
                    ),
                    raw: None,
                }),
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReassembler, chunk: &str) -> Vec<String> {
        r.push(chunk)
            .into_iter()
            .map(|l| match l {
                Reassembled::Line(l) => l,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Lines are trimmed, empty ones dropped, the tail kept until flushed.
    #[test]
    fn reassembles_trims_and_flushes() {
        let mut r = LineReassembler::default();
        assert_eq!(lines(&mut r, " a \r\n\n  \nb"), vec!["a"]);
        assert_eq!(lines(&mut r, "c"), Vec::<String>::new());
        assert_eq!(lines(&mut r, "\nd "), vec!["bc"]);
        assert_eq!(r.flush(), Some(Reassembled::Line("d".into())));
        assert_eq!(r.flush(), None);
        r.push("   ");
        assert_eq!(r.flush(), None, "a whitespace-only tail is nothing");
    }

    /// Every chunking of the same text gives the same lines.
    #[test]
    fn any_chunking_gives_the_same_lines() {
        let text = "{\"a\":1}\n\n é€😀 \r\nlast";
        let whole = {
            let mut r = LineReassembler::default();
            let mut out = r.push(text);
            out.extend(r.flush());
            out
        };
        assert_eq!(whole.len(), 3);
        let chars: Vec<char> = text.chars().collect();
        for size in 1..chars.len() {
            let mut r = LineReassembler::default();
            let mut out = Vec::new();
            for piece in chars.chunks(size) {
                out.extend(r.push(&piece.iter().collect::<String>()));
            }
            out.extend(r.flush());
            assert_eq!(out, whole, "chunks of {size} chars");
        }
    }

    /// A line past the cap is dropped whole (memory stays bounded) and reported once with its size;
    /// the lines around it survive.
    #[test]
    fn oversized_line_is_dropped_and_reported() {
        let mut r = LineReassembler::with_max_line_bytes(8);
        let mut out = r.push("ok\n0123");
        out.extend(r.push("45678"));
        assert!(r.partial.capacity() < 8, "the overflowing line is not held");
        out.extend(r.push("9abc\nfine\n"));
        assert_eq!(
            out,
            vec![
                Reassembled::Line("ok".into()),
                Reassembled::Dropped { bytes: 13 },
                Reassembled::Line("fine".into()),
            ]
        );
        assert_eq!(
            r.push("exactly8\n"),
            vec![Reassembled::Line("exactly8".into())]
        );
        r.push("0123456789");
        assert_eq!(r.flush(), Some(Reassembled::Dropped { bytes: 10 }));
    }

    /// Only JSON objects are events.
    #[test]
    fn only_objects_parse() {
        assert!(parse_json_line("{\"type\":\"x\"}").is_some());
        for line in ["[1]", "3", "\"s\"", "null", "{bad", "text"] {
            assert!(parse_json_line(line).is_none(), "{line}");
        }
    }

    struct Echo;
    impl EventMapper for Echo {
        fn map(&mut self, event: Map<String, Value>) -> Vec<AgentEvent> {
            vec![AgentEvent::Raw {
                agent: super::super::events::AgentSlug::ClaudeCode,
                payload: Value::Object(event),
            }]
        }
    }

    /// The parser skips unreadable lines, reports dropped ones as `error`, flushes the tail at end,
    /// and after a gap does not glue the lost line's head to what follows.
    #[test]
    fn parser_feed_end_and_gap() {
        let mut p = AgentEventParser::new(Box::new(Echo));
        assert_eq!(p.feed("not json\n{\"a\":1}\n{\"b\"").len(), 1);
        p.discard_partial_line();
        assert_eq!(p.feed(":2}\n").len(), 0, "the head before the gap is gone");
        assert_eq!(p.feed("{\"c\":3}").len(), 0);
        assert_eq!(p.end().len(), 1);
        let mut p = AgentEventParser::new(Box::new(Echo));
        p.lines = LineReassembler::with_max_line_bytes(4);
        let events = p.feed("{\"long\":1}\n");
        assert!(
            matches!(&events[..], [AgentEvent::Error { message, .. }] if message.contains("10 bytes")),
            "{events:?}"
        );
    }
}

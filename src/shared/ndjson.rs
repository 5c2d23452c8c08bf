//! Splitting a byte stream into NDJSON lines whatever its framing: bytes go in as they arrive,
//! complete non-blank lines come out without their `\n`.
//!
//! Linear in the bytes pushed: the search for a newline resumes where the last one stopped (a long
//! line arriving in many small frames is scanned once, not once per frame), and a finished line is
//! split off the front of the buffer ([`BytesMut::split_to`]) instead of copied out with the rest
//! of the buffer shifted down behind it.
use bytes::{Bytes, BytesMut};

/// The unterminated line in the buffer grew past the cap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a line grew past {max_line_bytes} bytes without a newline")]
pub struct LineTooLong {
    pub max_line_bytes: usize,
}

/// An NDJSON line splitter with a cap on the length of an unterminated line.
#[derive(Debug)]
pub struct NdjsonLines {
    buffer: BytesMut,
    /// How many leading bytes of `buffer` are known to hold no `\n`.
    scanned: usize,
    max_line_bytes: usize,
}

impl NdjsonLines {
    pub fn new(max_line_bytes: usize) -> NdjsonLines {
        NdjsonLines {
            buffer: BytesMut::new(),
            scanned: 0,
            max_line_bytes,
        }
    }

    /// Appends bytes as they arrived.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete line that is not blank (only ASCII whitespace), without its `\n`;
    /// `Ok(None)` when more bytes are needed. An error once the unterminated line is longer than
    /// the cap; a line whose newline arrives in the same push that crossed the cap is still given.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        while let Some(offset) = memchr::memchr(b'\n', &self.buffer[self.scanned..]) {
            let mut line = self.buffer.split_to(self.scanned + offset + 1);
            self.scanned = 0;
            line.truncate(line.len() - 1);
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line.freeze()));
            }
        }
        self.scanned = self.buffer.len();
        if self.buffer.len() > self.max_line_bytes {
            return Err(LineTooLong {
                max_line_bytes: self.max_line_bytes,
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line `lines` gives until it needs more bytes.
    fn drain(lines: &mut NdjsonLines) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            out.push(line);
        }
        out
    }

    /// Several lines in one push come out one by one, blank ones (spaces, `\r`) skipped, and the
    /// unterminated tail waits for its newline.
    #[test]
    fn several_lines_in_one_push() {
        let mut lines = NdjsonLines::new(1024);
        lines.push(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\"");
        assert_eq!(drain(&mut lines), ["{\"a\":1}", "{\"b\":2}\r"]);
        lines.push(b":3}\n");
        assert_eq!(drain(&mut lines), ["{\"c\":3}"]);
        assert_eq!(lines.next_line(), Ok(None));
    }

    /// Whatever byte the stream is cut at (and byte by byte), the same lines come out.
    #[test]
    fn lines_split_across_pushes_at_every_position() {
        let stream: &[u8] = b"{\"seq\":1}\n\n{\"seq\":2,\"b64\":\"aGk=\"}\n \n{\"seq\":3}\n";
        let expected = ["{\"seq\":1}", "{\"seq\":2,\"b64\":\"aGk=\"}", "{\"seq\":3}"];
        for cut in 0..=stream.len() {
            let mut lines = NdjsonLines::new(1024);
            lines.push(&stream[..cut]);
            let mut out = drain(&mut lines);
            lines.push(&stream[cut..]);
            out.extend(drain(&mut lines));
            assert_eq!(out, expected, "cut at {cut}");
        }
        let mut lines = NdjsonLines::new(1024);
        let mut out = Vec::new();
        for byte in stream {
            lines.push(std::slice::from_ref(byte));
            out.extend(drain(&mut lines));
        }
        assert_eq!(out, expected, "byte by byte");
    }

    /// An unterminated line past the cap is an error; one at the cap, or whose newline came with
    /// the push that crossed it, is a line.
    #[test]
    fn over_long_line_is_an_error() {
        let mut lines = NdjsonLines::new(8);
        lines.push(b"12345678");
        assert_eq!(lines.next_line(), Ok(None), "at the cap");
        lines.push(b"9");
        assert_eq!(lines.next_line(), Err(LineTooLong { max_line_bytes: 8 }));

        let mut lines = NdjsonLines::new(8);
        lines.push(b"123456789\nab");
        assert_eq!(drain(&mut lines), ["123456789"]);
        lines.push(b"cdefghij");
        assert_eq!(lines.next_line(), Err(LineTooLong { max_line_bytes: 8 }));
    }
}

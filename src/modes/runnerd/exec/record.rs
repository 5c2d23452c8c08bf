//! What a journal holds, and the wire line of each record: the leaf module that the journal, its
//! disk spool and the output pumps all build on (it imports none of them).
use bytes::Bytes;
use std::io::Write;

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    fn line_head(self) -> &'static [u8] {
        match self {
            OutputStream::Stdout => b"{\"t\":\"stdout\",\"b64\":\"",
            OutputStream::Stderr => b"{\"t\":\"stderr\",\"b64\":\"",
        }
    }
}

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A whole NDJSON event line (`start`, `exit`, `fail`).
    Event,
    /// Raw bytes of one read from an output pipe, sent as a `stdout`/`stderr` line.
    Output(OutputStream),
}

/// One journal entry and its seq.
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: u64,
    pub kind: RecordKind,
    pub bytes: Bytes,
}

impl Record {
    /// Length of the record's wire line.
    pub fn wire_len(&self) -> usize {
        match self.kind {
            RecordKind::Event => self.bytes.len(),
            RecordKind::Output(_) => output_line_len(self.bytes.len(), self.seq),
        }
    }

    /// Appends the record's wire line to `out`.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        match self.kind {
            RecordKind::Event => out.extend_from_slice(&self.bytes),
            RecordKind::Output(stream) => write_output_line(stream, &self.bytes, self.seq, out),
        }
    }
}

/// The wire lines of `records`, in one buffer.
pub fn render(records: &[Record]) -> Bytes {
    let mut frame = Vec::with_capacity(records.iter().map(Record::wire_len).sum());
    for record in records {
        record.write_wire(&mut frame);
    }
    Bytes::from(frame)
}

/// How many of `records`, from the first, have wire lines that fit in `max_bytes` (always at
/// least one when there is one).
pub fn count_fitting<'a>(records: impl Iterator<Item = &'a Record>, max_bytes: usize) -> usize {
    let mut count = 0;
    let mut bytes = 0;
    for record in records {
        let len = record.wire_len();
        if count > 0 && bytes + len > max_bytes {
            break;
        }
        bytes += len;
        count += 1;
    }
    count
}

/// Bytes of the wire line around the base64 text and the seq digits.
const LINE_FRAMING_BYTES: usize = r#"{"t":"stdout","b64":"","seq":}"#.len() + 1;

/// Length of the wire line [`write_output_line`] writes for `chunk_len` bytes at `seq`.
pub fn output_line_len(chunk_len: usize, seq: u64) -> usize {
    LINE_FRAMING_BYTES + chunk_len.div_ceil(3) * 4 + decimal_digits(seq)
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Appends the `stdout`/`stderr` event line for `chunk` to `out`, written directly (it is the hot
/// path) but byte-equal to serializing `ExecEvent::Stdout`/`Stderr`.
pub fn write_output_line(stream: OutputStream, chunk: &[u8], seq: u64, out: &mut Vec<u8>) {
    out.reserve(output_line_len(chunk.len(), seq));
    out.extend_from_slice(stream.line_head());
    base64_simd::STANDARD.encode_append(chunk, out);
    out.extend_from_slice(b"\",\"seq\":");
    let _ = write!(out, "{seq}");
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::protocol::runnerd::ExecEvent;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    /// The hand-written line equals the serde one, and its length is known in advance.
    #[test]
    fn output_line_matches_serde() {
        for chunk in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff binary \n"] {
            for seq in [1, 7, 9, 10, 42, 999_999, u64::MAX] {
                let serde = ExecEvent::Stdout {
                    b64: STANDARD.encode(chunk),
                    seq,
                }
                .to_line();
                let mut line = Vec::new();
                write_output_line(OutputStream::Stdout, chunk, seq, &mut line);
                assert_eq!(line, serde);
                assert_eq!(output_line_len(chunk.len(), seq), line.len());
                let serde = ExecEvent::Stderr {
                    b64: STANDARD.encode(chunk),
                    seq,
                }
                .to_line();
                line.clear();
                write_output_line(OutputStream::Stderr, chunk, seq, &mut line);
                assert_eq!(line, serde);
            }
        }
    }

    /// A run of records is cut at the frame size, but never below one record.
    #[test]
    fn count_fitting_keeps_at_least_one() {
        let record = |seq| Record {
            seq,
            kind: RecordKind::Event,
            bytes: Bytes::from_static(b"0123456789"),
        };
        let records: Vec<Record> = (1..=5).map(record).collect();
        assert_eq!(count_fitting(records.iter(), 25), 2);
        assert_eq!(count_fitting(records.iter(), 3), 1);
        assert_eq!(count_fitting(records.iter(), 1000), 5);
        assert_eq!(render(&records[..2]).len(), 20);
    }
}

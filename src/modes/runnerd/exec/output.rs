//! Pumps one output pipe of an exec into its journal, clipping at the stream's byte cap.
use super::super::limits::PIPE_READ_CHUNK_BYTES;
use super::journal::Journal;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::io::Write;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// First read buffer of each output pipe.
const INITIAL_READ_BYTES: usize = 512;

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The `stdout`/`stderr` event line for `chunk`, written directly (it is the hot path) but byte-equal
/// to serializing `ExecEvent::Stdout`/`Stderr`.
pub fn output_line(stream: OutputStream, chunk: &[u8], seq: u64) -> Vec<u8> {
    let head: &[u8] = match stream {
        OutputStream::Stdout => b"{\"t\":\"stdout\",\"b64\":\"",
        OutputStream::Stderr => b"{\"t\":\"stderr\",\"b64\":\"",
    };
    let encoded_len = chunk.len().div_ceil(3) * 4;
    let mut line = Vec::with_capacity(head.len() + encoded_len + 32);
    line.extend_from_slice(head);
    let start = line.len();
    line.resize(start + encoded_len, 0);
    let written = STANDARD
        .encode_slice(chunk, &mut line[start..])
        .expect("buffer sized for the encoding");
    line.truncate(start + written);
    line.extend_from_slice(b"\",\"seq\":");
    let _ = write!(line, "{seq}");
    line.extend_from_slice(b"}\n");
    line
}

/// Reads `pipe` to EOF, appending each chunk as an event. Past `cap` bytes the rest is read and
/// dropped (the process keeps running). Returns whether anything was dropped.
pub async fn pump(
    journal: Arc<Journal>,
    mut pipe: pipe::Receiver,
    stream: OutputStream,
    cap: Option<u64>,
) -> bool {
    // Small until the exec proves chatty: a quiet exec (an agent waiting on its model) holds 4 KiB,
    // a streaming one grows to full-size reads after its first full buffer.
    let mut buf = bytes::BytesMut::with_capacity(INITIAL_READ_BYTES);
    let mut emitted: u64 = 0;
    let mut truncated = false;
    loop {
        if buf.len() == buf.capacity() && buf.capacity() < PIPE_READ_CHUNK_BYTES {
            buf = bytes::BytesMut::with_capacity(PIPE_READ_CHUNK_BYTES);
        }
        buf.clear();
        let n = match pipe.read_buf(&mut buf).await {
            Ok(0) => return truncated,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(%err, ?stream, "reading exec output failed");
                return truncated;
            }
        };
        let keep = match cap {
            Some(cap) => (cap - emitted).min(n as u64) as usize,
            None => n,
        };
        if keep < n {
            if !truncated {
                tracing::info!(
                    ?stream,
                    cap,
                    "exec output reached its cap; the rest is dropped"
                );
            }
            truncated = true;
        }
        if keep > 0 {
            emitted += keep as u64;
            let chunk = &buf[..keep];
            journal.append_with(|seq| output_line(stream, chunk, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::protocol::runnerd::ExecEvent;

    /// The hand-written line equals the serde one.
    #[test]
    fn output_line_matches_serde() {
        for chunk in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff binary \n"] {
            let serde = ExecEvent::Stdout {
                b64: STANDARD.encode(chunk),
                seq: 42,
            }
            .to_line();
            assert_eq!(output_line(OutputStream::Stdout, chunk, 42), serde);
            let serde = ExecEvent::Stderr {
                b64: STANDARD.encode(chunk),
                seq: 7,
            }
            .to_line();
            assert_eq!(output_line(OutputStream::Stderr, chunk, 7), serde);
        }
    }
}

//! An exec's stdin: the initial bytes, and in hold mode the lines `POST /execs/:id/stdin` adds.
use super::super::limits::{MAX_STDIN_LINE_BYTES, STDIN_WRITE_TIMEOUT};
use crate::shared::protocol::runnerd::decode_lenient_base64;
use crate::shared::protocol::runnerd::{StdinRefusal, MAX_STDIN_RAW_BYTES};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// The write end of an exec's stdin, or nothing once closed.
#[derive(Default)]
pub enum StdinState {
    /// Close mode after the initial bytes, EOF already sent, or the exec ended.
    #[default]
    Closed,
    /// Hold mode: the pipe stays open for `/stdin`.
    Held(pipe::Sender),
}

/// A `/stdin` payload must be exactly one JSON line: 1..=64 KiB, ending in `\n`, no other `\n`.
pub fn parse_line(b64: &str) -> Result<Vec<u8>, StdinRefusal> {
    let bytes = decode_lenient_base64(b64).map_err(|_| StdinRefusal::BadLine)?;
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_STDIN_LINE_BYTES
        && bytes.last() == Some(&b'\n')
        && !bytes[..bytes.len() - 1].contains(&b'\n')
        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
    if valid {
        Ok(bytes)
    } else {
        Err(StdinRefusal::BadLine)
    }
}

/// A `/stdin` payload for an exec with raw stdin: any bytes, up to [`MAX_STDIN_RAW_BYTES`]
/// decoded (`TOO_LARGE` beyond); text that is not base64 is `BAD_LINE`, as for lines.
pub fn parse_raw(b64: &str) -> Result<Vec<u8>, StdinRefusal> {
    // Checked before decoding: base64 carries 3 bytes in every 4 characters.
    if b64.len() / 4 * 3 > MAX_STDIN_RAW_BYTES + 3 {
        return Err(StdinRefusal::TooLarge);
    }
    let bytes = decode_lenient_base64(b64).map_err(|_| StdinRefusal::BadLine)?;
    if bytes.len() > MAX_STDIN_RAW_BYTES {
        return Err(StdinRefusal::TooLarge);
    }
    Ok(bytes)
}

/// Writes `bytes`, bounded by [`STDIN_WRITE_TIMEOUT`] so a process that never reads cannot hang us.
pub async fn write_bounded(sender: &mut pipe::Sender, bytes: &[u8]) -> Result<(), StdinRefusal> {
    match tokio::time::timeout(STDIN_WRITE_TIMEOUT, sender.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(StdinRefusal::WriteFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64_simd::STANDARD;

    /// Only single JSON lines pass.
    #[test]
    fn line_rules() {
        let ok = |s: &str| parse_line(&STANDARD.encode_to_string(s));
        assert_eq!(ok("{\"a\":1}\n").unwrap(), b"{\"a\":1}\n");
        assert_eq!(ok("{\"a\":1}"), Err(StdinRefusal::BadLine));
        assert_eq!(ok("{}\n{}\n"), Err(StdinRefusal::BadLine));
        assert_eq!(ok("not json\n"), Err(StdinRefusal::BadLine));
        assert_eq!(ok(""), Err(StdinRefusal::BadLine));
        let big = format!("\"{}\"\n", "x".repeat(MAX_STDIN_LINE_BYTES));
        assert_eq!(ok(&big), Err(StdinRefusal::BadLine));
        assert_eq!(parse_line("***"), Err(StdinRefusal::BadLine));
    }

    /// Raw stdin takes any bytes (no newline, not JSON, control keys) up to its cap.
    #[test]
    fn raw_rules() {
        let raw = |bytes: &[u8]| parse_raw(&STANDARD.encode_to_string(bytes));
        assert_eq!(raw(b"\x03").unwrap(), b"\x03");
        assert_eq!(raw(b"hello").unwrap(), b"hello");
        assert_eq!(raw(b"a\nb\n\xff").unwrap(), b"a\nb\n\xff");
        let max = vec![7u8; MAX_STDIN_RAW_BYTES];
        assert_eq!(raw(&max).unwrap().len(), MAX_STDIN_RAW_BYTES);
        let over = vec![7u8; MAX_STDIN_RAW_BYTES + 1];
        assert_eq!(raw(&over), Err(StdinRefusal::TooLarge));
        assert_eq!(parse_raw("***"), Err(StdinRefusal::BadLine));
    }
}

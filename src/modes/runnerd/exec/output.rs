//! Pumps one output pipe of an exec into its journal, clipping at the stream's byte cap. A pump
//! reads only when the journal has room: while readers that keep reading lag too far behind, the
//! bytes stay in the pipe and the process blocks on write (see the journal's module doc).
use super::super::limits::PIPE_READ_CHUNK_BYTES;
use super::journal::Journal;
pub use super::record::OutputStream;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// First read buffer of each output pipe.
const INITIAL_READ_BYTES: usize = 512;

/// Reads `pipe` to EOF, appending each chunk to the journal as raw bytes. Past `cap` bytes the rest
/// is read and dropped (the process keeps running). Returns whether anything was dropped.
pub async fn pump(
    journal: Arc<Journal>,
    mut pipe: pipe::Receiver,
    stream: OutputStream,
    cap: Option<u64>,
) -> bool {
    // Small until the exec proves chatty: a quiet exec (an agent waiting on its model) holds 512 B,
    // a streaming one grows to full-size reads after its first full buffer.
    let mut buf = BytesMut::with_capacity(INITIAL_READ_BYTES);
    let mut emitted: u64 = 0;
    let mut truncated = false;
    loop {
        journal.wait_for_room().await;
        buf.clear();
        let read = match pipe.try_read_buf(&mut buf) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                journal.pipe_caught_up();
                pipe.read_buf(&mut buf).await
            }
            read => read,
        };
        let n = match read {
            Ok(0) => return truncated,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty master reports the end of output (every slave descriptor closed) as EIO.
            Err(err) if err.raw_os_error() == Some(libc::EIO) => return truncated,
            Err(err) => {
                tracing::warn!(%err, ?stream, "reading exec output failed");
                return truncated;
            }
        };
        let next_capacity = if n == buf.capacity() {
            PIPE_READ_CHUNK_BYTES
        } else {
            buf.capacity()
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
            journal.append_output(stream, take_chunk(&mut buf, keep, next_capacity));
            // Let the readers run before the next read: a producer faster than its readers would
            // otherwise fill many chunks in a row (tokio's budget allows over a hundred), pushing
            // them through the disk spool instead of straight from memory (measured: a third less
            // system time on the 256 MiB stream). Other execs' pumps get their turn too.
            tokio::task::yield_now().await;
        }
        if buf.capacity() < next_capacity {
            buf = BytesMut::with_capacity(next_capacity);
        }
    }
}

/// The first `len` bytes of `buf` as a journal chunk. A read that filled most of the buffer gives
/// the buffer itself away (no copy; the next read gets a fresh one of `next_capacity`); a small one
/// is copied, so that a 100-byte chunk never pins a full-size read buffer while the journal keeps it.
fn take_chunk(buf: &mut BytesMut, len: usize, next_capacity: usize) -> Bytes {
    if len * 2 >= buf.capacity() {
        let chunk = buf.split_to(len).freeze();
        *buf = BytesMut::with_capacity(next_capacity);
        chunk
    } else {
        Bytes::copy_from_slice(&buf[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::protocol::runnerd::ExecEvent;
    use base64_simd::STANDARD;

    /// A chatty pipe is read in full-size chunks after its first full small read, and every byte
    /// arrives in order.
    #[tokio::test]
    async fn reads_grow_to_full_chunks() {
        use super::super::journal::JournalBudget;
        use super::super::spool::SpoolBudget;
        use tokio::io::AsyncWriteExt;
        let budget = JournalBudget::new(SpoolBudget::new(
            std::env::temp_dir(),
            u64::MAX,
            u64::MAX,
            1 << 20,
        ));
        let journal = Journal::new(&budget, 16 << 20);
        let (mut tx, rx) = pipe::pipe().unwrap();
        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move { tx.write_all(&data).await.unwrap() })
        };
        let truncated = pump(journal.clone(), rx, OutputStream::Stdout, None).await;
        writer.await.unwrap();
        journal.finish();
        assert!(!truncated);
        let mut cursor = journal.cursor(0);
        let (mut got, mut sizes) = (Vec::new(), Vec::new());
        while let Some(frame) = cursor.next_batch(1 << 20).await {
            for line in frame.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let ExecEvent::Stdout { b64, .. } = serde_json::from_slice(line).unwrap() else {
                    panic!("only stdout was written");
                };
                let chunk = STANDARD.decode_to_vec(b64).unwrap();
                sizes.push(chunk.len());
                got.extend(chunk);
            }
        }
        assert_eq!(got, data);
        assert!(
            sizes
                .iter()
                .skip(2)
                .filter(|&&n| n > INITIAL_READ_BYTES)
                .count()
                > 0,
            "reads grew past the initial buffer: {sizes:?}"
        );
        assert!(sizes.iter().all(|&n| n <= PIPE_READ_CHUNK_BYTES));
    }

    /// Small reads are copied out of the read buffer; full ones hand the buffer over.
    #[test]
    fn chunks_never_pin_a_large_buffer() {
        let mut buf = BytesMut::with_capacity(1024);
        buf.extend_from_slice(&[7u8; 100]);
        let small = take_chunk(&mut buf, 100, 1024);
        assert_eq!(small.len(), 100);
        assert_eq!(buf.capacity(), 1024, "the buffer is kept for the next read");
        buf.clear();
        buf.extend_from_slice(&[9u8; 1000]);
        let big = take_chunk(&mut buf, 1000, 1024);
        assert_eq!(&big[..], &[9u8; 1000][..]);
        assert!(buf.is_empty() && buf.capacity() >= 1024, "a fresh buffer");
    }
}

//! The disk half of a journal: append-only segment files holding the lines that fell out of the
//! in-memory tail, and the daemon-wide budget that bounds them all.
//!
//! Segment files are anonymous (`O_TMPFILE`, or created and unlinked at once), mode 0600, owned by
//! runnerd: no exec can open them, and they vanish with the last handle. Each record is
//! `seq: u64 LE | len: u32 LE | line bytes`, so a reader can find lines by seq without parsing JSON.
//! Eviction drops whole segments, oldest first.
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of the record header before each line.
pub const RECORD_HEADER_BYTES: usize = 12;

/// Where segment files go, and how many bytes all of them may hold together.
pub struct SpoolBudget {
    dir: PathBuf,
    total_cap_bytes: u64,
    per_exec_cap_bytes: u64,
    segment_bytes: u64,
    used_bytes: AtomicU64,
}

impl SpoolBudget {
    pub fn new(
        dir: PathBuf,
        total_cap_bytes: u64,
        per_exec_cap_bytes: u64,
        segment_bytes: u64,
    ) -> Self {
        SpoolBudget {
            dir,
            total_cap_bytes,
            per_exec_cap_bytes,
            segment_bytes,
            used_bytes: AtomicU64::new(0),
        }
    }

    /// Bytes currently held by all segments.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn per_exec_cap_bytes(&self) -> u64 {
        self.per_exec_cap_bytes
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    pub fn is_over(&self) -> bool {
        self.used_bytes() > self.total_cap_bytes
    }

    fn charge(&self, bytes: u64) {
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn refund(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn create_file(&self) -> std::io::Result<File> {
        create_anonymous_file(&self.dir)
    }
}

/// Opens a file in `dir` that has no name: `O_TMPFILE` where the filesystem supports it, else a
/// uniquely named file unlinked right after it is opened.
fn create_anonymous_file(dir: &Path) -> std::io::Result<File> {
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(file) => Ok(file),
        Err(_) => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let name = dir.join(format!(
                ".spool-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&name)?;
            std::fs::remove_file(&name)?;
            Ok(file)
        }
    }
}

/// One segment file and the seq range it holds.
pub struct Segment {
    file: Arc<File>,
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last record.
    pub last_seq: u64,
    /// Bytes written.
    pub len: u64,
    /// `(seq, offset)` of the first record of every write batch, for seeking.
    checkpoints: Vec<(u64, u64)>,
}

/// Where to read the records at or after a seq: a file handle that stays valid even if the segment
/// is evicted meanwhile, and the byte range to read.
pub struct SpoolRead {
    pub file: Arc<File>,
    pub offset: u64,
    pub end: u64,
}

/// The segments of one journal, oldest first.
#[derive(Default)]
pub struct Spool {
    segments: std::collections::VecDeque<Segment>,
    bytes: u64,
}

impl Spool {
    /// Bytes held on disk by this spool.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Seq of the oldest record still on disk.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments.front().map(|s| s.first_seq)
    }

    /// Appends records `(seq, line)` as one write. Blocking, but bounded to one batch of lines from
    /// the memory tail, written to the page cache.
    pub fn append<'a>(
        &mut self,
        budget: &SpoolBudget,
        records: impl Iterator<Item = (u64, &'a [u8])>,
    ) -> std::io::Result<()> {
        let records: Vec<(u64, &[u8])> = records.collect();
        let (Some(first), Some(last)) = (records.first().map(|r| r.0), records.last().map(|r| r.0))
        else {
            return Ok(());
        };
        let headers: Vec<[u8; RECORD_HEADER_BYTES]> = records
            .iter()
            .map(|(seq, line)| {
                let mut header = [0u8; RECORD_HEADER_BYTES];
                header[..8].copy_from_slice(&seq.to_le_bytes());
                header[8..].copy_from_slice(&(line.len() as u32).to_le_bytes());
                header
            })
            .collect();
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(records.len() * 2);
        for (header, (_, line)) in headers.iter().zip(&records) {
            slices.push(std::io::IoSlice::new(header));
            slices.push(std::io::IoSlice::new(line));
        }
        let total: u64 = records
            .iter()
            .map(|(_, l)| (RECORD_HEADER_BYTES + l.len()) as u64)
            .sum();
        let needs_new = self
            .segments
            .back()
            .is_none_or(|s| s.len >= budget.segment_bytes());
        if needs_new {
            self.segments.push_back(Segment {
                file: Arc::new(budget.create_file()?),
                first_seq: first,
                last_seq: first,
                len: 0,
                checkpoints: Vec::new(),
            });
        }
        let segment = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        // One writev per batch: the lines go to the page cache without an intermediate copy.
        let mut remaining: &mut [std::io::IoSlice<'_>] = &mut slices;
        while !remaining.is_empty() {
            let written = (&*segment.file).write_vectored(remaining)?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut remaining, written);
        }
        segment.checkpoints.push((first, segment.len));
        segment.len += total;
        segment.last_seq = last;
        self.bytes += total;
        budget.charge(total);
        Ok(())
    }

    /// Drops the oldest segment; returns the last seq it held.
    pub fn evict_oldest(&mut self, budget: &SpoolBudget) -> Option<u64> {
        let segment = self.segments.pop_front()?;
        self.bytes -= segment.len;
        budget.refund(segment.len);
        Some(segment.last_seq)
    }

    /// Drops every segment; returns the last seq any of them held.
    pub fn evict_all(&mut self, budget: &SpoolBudget) -> Option<u64> {
        let mut last = None;
        while let Some(seq) = self.evict_oldest(budget) {
            last = Some(seq);
        }
        last
    }

    /// Where to start reading for the first record with seq ≥ `seq`, if the spool holds it.
    pub fn locate(&self, seq: u64) -> Option<SpoolRead> {
        let segment = self
            .segments
            .iter()
            .find(|s| s.first_seq <= seq && seq <= s.last_seq)
            .or_else(|| self.segments.iter().find(|s| s.first_seq > seq))?;
        let index = segment
            .checkpoints
            .partition_point(|(first, _)| *first <= seq);
        let offset = if index == 0 {
            0
        } else {
            segment.checkpoints[index - 1].1
        };
        Some(SpoolRead {
            file: segment.file.clone(),
            offset,
            end: segment.len,
        })
    }
}

/// Reads whole records from `read`, skipping those before `from_seq`, until about `max_bytes` of
/// lines are gathered or the range ends. Returns the lines (slices of one buffer, no copy) and the seq
/// after the last one returned. Blocking.
pub fn read_records(
    read: &SpoolRead,
    from_seq: u64,
    max_bytes: usize,
) -> std::io::Result<(Vec<bytes::Bytes>, Option<u64>)> {
    let mut lines = Vec::new();
    let mut gathered = 0usize;
    let mut last_seq = None;
    let mut offset = read.offset;
    while offset < read.end && gathered < max_bytes {
        let want =
            ((read.end - offset) as usize).min(max_bytes.max(64 * 1024) + RECORD_HEADER_BYTES);
        let mut buffer = vec![0u8; want];
        read.file.read_exact_at(&mut buffer, offset)?;
        let header_len =
            |b: &[u8]| u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
        if header_len(&buffer) + RECORD_HEADER_BYTES > buffer.len() {
            // A record larger than the chunk: read exactly it.
            buffer.resize(RECORD_HEADER_BYTES + header_len(&buffer), 0);
            read.file.read_exact_at(&mut buffer, offset)?;
        }
        let chunk = bytes::Bytes::from(buffer);
        let mut pos = 0;
        while pos + RECORD_HEADER_BYTES <= chunk.len() {
            let seq = u64::from_le_bytes(chunk[pos..pos + 8].try_into().expect("8 bytes"));
            let len = header_len(&chunk[pos..]);
            let end = pos + RECORD_HEADER_BYTES + len;
            if end > chunk.len() || (gathered > 0 && gathered + len > max_bytes) {
                break;
            }
            if seq >= from_seq {
                lines.push(chunk.slice(pos + RECORD_HEADER_BYTES..end));
                gathered += len;
                last_seq = Some(seq);
            }
            pos = end;
        }
        if pos == 0 {
            break;
        }
        offset += pos as u64;
    }
    Ok((lines, last_seq.map(|s| s + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(segment_bytes: u64) -> SpoolBudget {
        SpoolBudget::new(std::env::temp_dir(), u64::MAX, u64::MAX, segment_bytes)
    }

    /// Records written in batches come back by seq, from any starting seq.
    #[test]
    fn records_round_trip_from_any_seq() {
        let budget = budget(100);
        let mut spool = Spool::default();
        let lines: Vec<Vec<u8>> = (1..=30u64)
            .map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for batch in lines.chunks(4).enumerate() {
            let base = batch.0 as u64 * 4 + 1;
            spool
                .append(
                    &budget,
                    batch
                        .1
                        .iter()
                        .enumerate()
                        .map(|(i, l)| (base + i as u64, l.as_slice())),
                )
                .unwrap();
        }
        for from in 1..=30u64 {
            let mut got = Vec::new();
            let mut next = from;
            while let Some(read) = spool.locate(next) {
                let (lines, after) = read_records(&read, next, 1 << 20).unwrap();
                got.extend(lines.iter().flat_map(|l| l.iter().copied()));
                match after {
                    Some(after) => next = after,
                    None => break,
                }
                if next > 30 {
                    break;
                }
            }
            let want: Vec<u8> = lines[(from - 1) as usize..].concat();
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want).unwrap(),
                "from {from}"
            );
        }
        assert!(spool.segments.len() > 1, "small segments roll over");
    }

    /// Eviction drops whole segments and refunds the budget.
    #[test]
    fn eviction_refunds_the_budget() {
        let budget = budget(10);
        let mut spool = Spool::default();
        spool
            .append(&budget, [(1u64, &b"aaaaaaaaaa"[..])].into_iter())
            .unwrap();
        spool
            .append(&budget, [(2u64, &b"bbbbbbbbbb"[..])].into_iter())
            .unwrap();
        assert_eq!(budget.used_bytes(), 44);
        assert_eq!(spool.evict_oldest(&budget), Some(1));
        assert_eq!(spool.first_seq(), Some(2));
        assert_eq!(budget.used_bytes(), 22);
        assert_eq!(spool.evict_all(&budget), Some(2));
        assert_eq!(budget.used_bytes(), 0);
    }
}

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

    pub fn total_cap_bytes(&self) -> u64 {
        self.total_cap_bytes
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
    batch: Vec<u8>,
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
        self.batch.clear();
        let mut first = None;
        let mut last = 0;
        for (seq, line) in records {
            first.get_or_insert(seq);
            last = seq;
            self.batch.extend_from_slice(&seq.to_le_bytes());
            self.batch
                .extend_from_slice(&(line.len() as u32).to_le_bytes());
            self.batch.extend_from_slice(line);
        }
        let Some(first) = first else { return Ok(()) };
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
        (&*segment.file).write_all(&self.batch)?;
        segment.checkpoints.push((first, segment.len));
        segment.len += self.batch.len() as u64;
        segment.last_seq = last;
        self.bytes += self.batch.len() as u64;
        budget.charge(self.batch.len() as u64);
        if self.batch.capacity() > 1024 * 1024 {
            self.batch = Vec::new();
        }
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

/// Reads whole records from `read`, skipping those before `from_seq`, until `max_bytes` of lines are
/// gathered or the range ends. Returns the lines and the seq after the last one returned. Blocking.
pub fn read_records(
    read: &SpoolRead,
    from_seq: u64,
    max_bytes: usize,
) -> std::io::Result<(Vec<u8>, Option<u64>)> {
    let mut out = Vec::new();
    let mut last_seq = None;
    let mut offset = read.offset;
    let mut chunk = Vec::new();
    while offset < read.end && out.len() < max_bytes {
        let want =
            ((read.end - offset) as usize).min(max_bytes.max(64 * 1024) + RECORD_HEADER_BYTES);
        chunk.resize(want, 0);
        read.file.read_exact_at(&mut chunk, offset)?;
        let mut pos = 0;
        while pos + RECORD_HEADER_BYTES <= chunk.len() {
            let seq = u64::from_le_bytes(chunk[pos..pos + 8].try_into().expect("8 bytes"));
            let len =
                u32::from_le_bytes(chunk[pos + 8..pos + 12].try_into().expect("4 bytes")) as usize;
            let end = pos + RECORD_HEADER_BYTES + len;
            if end > chunk.len() {
                break;
            }
            if seq >= from_seq {
                if !out.is_empty() && out.len() + len > max_bytes {
                    return Ok((out, last_seq.map(|s| s + 1)));
                }
                out.extend_from_slice(&chunk[pos + RECORD_HEADER_BYTES..end]);
                last_seq = Some(seq);
            }
            pos = end;
        }
        if pos == 0 {
            // A record larger than the chunk: read exactly it next time round.
            let len = u32::from_le_bytes(chunk[8..12].try_into().expect("4 bytes")) as usize;
            chunk.resize(RECORD_HEADER_BYTES + len, 0);
            read.file.read_exact_at(&mut chunk, offset)?;
            let seq = u64::from_le_bytes(chunk[0..8].try_into().expect("8 bytes"));
            if seq >= from_seq {
                out.extend_from_slice(&chunk[RECORD_HEADER_BYTES..]);
                last_seq = Some(seq);
            }
            pos = chunk.len();
        }
        offset += pos as u64;
    }
    Ok((out, last_seq.map(|s| s + 1)))
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
                let (bytes, after) = read_records(&read, next, 1 << 20).unwrap();
                got.extend_from_slice(&bytes);
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

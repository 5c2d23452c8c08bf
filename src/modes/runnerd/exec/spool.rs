//! The disk half of a journal: append-only segment files holding the records that fell out of the
//! in-memory tail, and the daemon-wide budget that bounds them all.
//!
//! Segment files are anonymous (`O_TMPFILE`, or created and unlinked at once), mode 0600, owned by
//! runnerd: no exec can open them, and they vanish with the last handle. Each record is
//! `seq: u64 LE | len: u32 LE | kind: u32 LE | bytes` (kind 0: an event line, 1/2: raw stdout/stderr
//! bytes), so a reader finds records by seq without parsing anything. Eviction drops whole
//! segments, oldest first.
use super::journal::{Record, RecordKind};
use super::output::OutputStream;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of the record header before each line.
pub const RECORD_HEADER_BYTES: usize = 16;

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

    /// Appends `records` as one write. Blocking, but bounded to one batch of records from the
    /// memory tail, written to the page cache.
    pub fn append<'a>(
        &mut self,
        budget: &SpoolBudget,
        records: impl Iterator<Item = &'a Record>,
    ) -> std::io::Result<()> {
        let records: Vec<&Record> = records.collect();
        let (Some(first), Some(last)) = (
            records.first().map(|r| r.seq),
            records.last().map(|r| r.seq),
        ) else {
            return Ok(());
        };
        let headers: Vec<[u8; RECORD_HEADER_BYTES]> = records.iter().map(|r| header(r)).collect();
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(records.len() * 2);
        for (header, record) in headers.iter().zip(&records) {
            slices.push(std::io::IoSlice::new(header));
            slices.push(std::io::IoSlice::new(&record.bytes));
        }
        let total: u64 = records
            .iter()
            .map(|r| (RECORD_HEADER_BYTES + r.bytes.len()) as u64)
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
        // One writev per batch: the records go to the page cache without an intermediate copy.
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

/// The on-disk code of each record kind (the one table writer and reader share).
const KIND_CODES: [(RecordKind, u32); 3] = [
    (RecordKind::Event, 0),
    (RecordKind::Output(OutputStream::Stdout), 1),
    (RecordKind::Output(OutputStream::Stderr), 2),
];

fn header(record: &Record) -> [u8; RECORD_HEADER_BYTES] {
    let kind = KIND_CODES
        .iter()
        .find(|(k, _)| *k == record.kind)
        .map(|(_, code)| *code)
        .expect("every kind has a code");
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[..8].copy_from_slice(&record.seq.to_le_bytes());
    header[8..12].copy_from_slice(&(record.bytes.len() as u32).to_le_bytes());
    header[12..].copy_from_slice(&kind.to_le_bytes());
    header
}

/// The seq, length and kind a record header holds; `None` for a kind this build never writes.
fn parse_header(bytes: &[u8]) -> Option<(u64, usize, RecordKind)> {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let code = word(12);
    let kind = KIND_CODES.iter().find(|(_, c)| *c == code)?.0;
    Some((
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        word(8) as usize,
        kind,
    ))
}

/// Reads whole records from `read`, skipping those before `from_seq`, until about `max_bytes` of
/// record bytes are gathered or the range ends. Returns the records (their bytes are slices of one
/// read buffer, no copy) and the seq after the last one returned. Blocking.
pub fn read_records(
    read: &SpoolRead,
    from_seq: u64,
    max_bytes: usize,
) -> std::io::Result<(Vec<Record>, Option<u64>)> {
    let corrupt = || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt spool record");
    let mut records = Vec::new();
    let mut gathered = 0usize;
    let mut last_seq = None;
    let mut offset = read.offset;
    while offset < read.end && gathered < max_bytes {
        let want =
            ((read.end - offset) as usize).min(max_bytes.max(64 * 1024) + RECORD_HEADER_BYTES);
        let mut chunk = crate::shared::sys::read_exact_at(&read.file, want, offset)?;
        let (_, first_len, _) = parse_header(&chunk).ok_or_else(corrupt)?;
        if first_len + RECORD_HEADER_BYTES > chunk.len() {
            // A record larger than the chunk: read exactly it.
            chunk = crate::shared::sys::read_exact_at(
                &read.file,
                RECORD_HEADER_BYTES + first_len,
                offset,
            )?;
        }
        let mut pos = 0;
        while pos + RECORD_HEADER_BYTES <= chunk.len() {
            let (seq, len, kind) = parse_header(&chunk[pos..]).ok_or_else(corrupt)?;
            let end = pos + RECORD_HEADER_BYTES + len;
            if end > chunk.len() || (gathered > 0 && gathered + len > max_bytes) {
                break;
            }
            if seq >= from_seq {
                records.push(Record {
                    seq,
                    kind,
                    bytes: chunk.slice(pos + RECORD_HEADER_BYTES..end),
                });
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
    Ok((records, last_seq.map(|s| s + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(segment_bytes: u64) -> SpoolBudget {
        SpoolBudget::new(std::env::temp_dir(), u64::MAX, u64::MAX, segment_bytes)
    }

    fn record(seq: u64, kind: RecordKind, bytes: &[u8]) -> Record {
        Record {
            seq,
            kind,
            bytes: bytes::Bytes::copy_from_slice(bytes),
        }
    }

    /// Records written in batches come back by seq, with their kind, from any starting seq.
    #[test]
    fn records_round_trip_from_any_seq() {
        let budget = budget(100);
        let mut spool = Spool::default();
        let kinds = [
            RecordKind::Event,
            RecordKind::Output(OutputStream::Stdout),
            RecordKind::Output(OutputStream::Stderr),
        ];
        let records: Vec<Record> = (1..=30u64)
            .map(|i| record(i, kinds[i as usize % 3], format!("line {i}\n").as_bytes()))
            .collect();
        for batch in records.chunks(4) {
            spool.append(&budget, batch.iter()).unwrap();
        }
        for from in 1..=30u64 {
            let mut got = Vec::new();
            let mut next = from;
            while let Some(read) = spool.locate(next) {
                let (read, after) = read_records(&read, next, 1 << 20).unwrap();
                got.extend(read.into_iter().map(|r| (r.seq, r.kind, r.bytes)));
                match after {
                    Some(after) => next = after,
                    None => break,
                }
                if next > 30 {
                    break;
                }
            }
            let want: Vec<_> = records[(from - 1) as usize..]
                .iter()
                .map(|r| (r.seq, r.kind, r.bytes.clone()))
                .collect();
            assert_eq!(got, want, "from {from}");
        }
        assert!(spool.segments.len() > 1, "small segments roll over");
    }

    /// Eviction drops whole segments and refunds the budget.
    #[test]
    fn eviction_refunds_the_budget() {
        let budget = budget(10);
        let mut spool = Spool::default();
        spool
            .append(
                &budget,
                [record(1, RecordKind::Event, b"aaaaaaaaaa")].iter(),
            )
            .unwrap();
        spool
            .append(
                &budget,
                [record(2, RecordKind::Event, b"bbbbbbbbbb")].iter(),
            )
            .unwrap();
        assert_eq!(budget.used_bytes(), 52);
        assert_eq!(spool.evict_oldest(&budget), Some(1));
        assert_eq!(spool.first_seq(), Some(2));
        assert_eq!(budget.used_bytes(), 26);
        assert_eq!(spool.evict_all(&budget), Some(2));
        assert_eq!(budget.used_bytes(), 0);
    }
}

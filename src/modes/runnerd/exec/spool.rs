//! The disk half of a journal: append-only segment files holding the records that fell out of the
//! in-memory tail, and the daemon-wide budget that bounds them all.
//!
//! Segment files are anonymous (`O_TMPFILE`, or created and unlinked at once), mode 0600, owned by
//! runnerd: no exec can open them, and they vanish with the last handle. Each record is
//! `seq: u64 LE | len: u32 LE | kind: u32 LE | bytes` (kind 0: an event line, 1/2: raw stdout/stderr
//! bytes), so a reader finds records by seq without parsing anything. Eviction drops whole
//! segments, oldest first.
//!
//! Space is reserved before a batch is handed to the spool writer thread
//! ([`super::spool_writer`]): the budget and a segment's length count a batch from the moment it
//! is queued, so the caps hold even while the disk lags; a segment's `written` length says how much
//! of it readers may read.
use super::record::{OutputStream, Record, RecordKind};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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

    /// Bytes currently reserved by all segments (written or queued for writing).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn per_exec_cap_bytes(&self) -> u64 {
        self.per_exec_cap_bytes
    }

    /// Size at which a segment is closed: the configured size, or a quarter of the per-exec cap
    /// when that is smaller, so eviction can free part of an exec's spool while a reader still
    /// needs the rest.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.min((self.per_exec_cap_bytes / 4).max(1))
    }

    /// Whether `more` bytes fit in the daemon-wide cap now.
    pub fn has_room_for(&self, more: u64) -> bool {
        self.used_bytes().saturating_add(more) <= self.total_cap_bytes
    }

    /// Reserves `bytes` if they fit in the daemon-wide cap; the total never exceeds it.
    pub fn try_charge(&self, bytes: u64) -> bool {
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.total_cap_bytes).then_some(after)
            })
            .is_ok()
    }

    fn refund(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

/// A segment's file, created by the spool writer with the segment's first write (so that opening
/// it never happens on the runtime thread either).
#[derive(Default)]
pub struct SegmentFile {
    file: OnceLock<File>,
}

impl SegmentFile {
    /// The file, once its first write created it.
    pub fn get(&self) -> Option<&File> {
        self.file.get()
    }

    /// Appends `records` with one `writev` per batch (no intermediate copy), creating the file in
    /// `dir` first if needed. Blocking: only the spool writer thread calls it. Batches of one
    /// segment arrive in order, so appending puts each at the offset reserved for it.
    pub fn append(&self, dir: &Path, records: &[Record]) -> std::io::Result<()> {
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let created = create_anonymous_file(dir)?;
                self.file.get_or_init(|| created)
            }
        };
        let headers: Vec<[u8; RECORD_HEADER_BYTES]> = records.iter().map(header).collect();
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(records.len() * 2);
        for (header, record) in headers.iter().zip(records) {
            slices.push(std::io::IoSlice::new(header));
            slices.push(std::io::IoSlice::new(&record.bytes));
        }
        let mut remaining: &mut [std::io::IoSlice<'_>] = &mut slices;
        while !remaining.is_empty() {
            let written = match (&*file).write_vectored(remaining) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            std::io::IoSlice::advance_slices(&mut remaining, written);
        }
        Ok(())
    }
}

/// Bytes a batch of records takes on disk.
pub fn spooled_len(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| (RECORD_HEADER_BYTES + r.bytes.len()) as u64)
        .sum()
}

/// One segment file and the seq range it holds.
pub struct Segment {
    file: Arc<SegmentFile>,
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last record.
    pub last_seq: u64,
    /// Bytes reserved (written or queued).
    pub len: u64,
    /// Bytes the writer has put on disk: readers read below this.
    written: u64,
    /// `(seq, offset)` of the first record of every write batch, for seeking.
    checkpoints: Vec<(u64, u64)>,
}

/// Where to read the records at or after a seq: a file handle that stays valid even if the segment
/// is evicted meanwhile, and the byte range to read.
pub struct SpoolRead {
    pub file: Arc<SegmentFile>,
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
    /// Bytes reserved on disk by this spool.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Last seq of the oldest segment, if any.
    pub fn oldest_last_seq(&self) -> Option<u64> {
        self.segments.front().map(|s| s.last_seq)
    }

    /// Places a batch of `len` bytes (records `first..=last`) at the end of the newest segment, or
    /// of a new one once the newest reached `segment_bytes`; the caller already charged the budget.
    /// Returns the file to hand to the writer and the offset the batch will end at.
    pub fn reserve(
        &mut self,
        segment_bytes: u64,
        first: u64,
        last: u64,
        len: u64,
    ) -> (Arc<SegmentFile>, u64) {
        if self.segments.back().is_none_or(|s| s.len >= segment_bytes) {
            self.segments.push_back(Segment {
                file: Arc::new(SegmentFile::default()),
                first_seq: first,
                last_seq: first,
                len: 0,
                written: 0,
                checkpoints: Vec::new(),
            });
        }
        let segment = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        segment.checkpoints.push((first, segment.len));
        segment.len += len;
        segment.last_seq = last;
        self.bytes += len;
        (segment.file.clone(), segment.len)
    }

    /// The writer put `file`'s bytes up to `end` on disk (a no-op when the segment was evicted).
    pub fn mark_written(&mut self, file: &Arc<SegmentFile>, end: u64) {
        if let Some(segment) = self
            .segments
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.file, file))
        {
            segment.written = segment.written.max(end);
        }
    }

    /// Drops the oldest segment and refunds it; returns the last seq it held and its file (whose
    /// last handle the caller should let the writer thread close).
    pub fn evict_oldest(&mut self, budget: &SpoolBudget) -> Option<(u64, Arc<SegmentFile>)> {
        let segment = self.segments.pop_front()?;
        self.bytes -= segment.len;
        budget.refund(segment.len);
        Some((segment.last_seq, segment.file))
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
            end: segment.written,
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
    if read.end <= offset {
        return Ok((records, None));
    }
    let file = read
        .file
        .get()
        .ok_or_else(|| std::io::Error::other("spool segment has no file"))?;
    while offset < read.end && gathered < max_bytes {
        let want =
            ((read.end - offset) as usize).min(max_bytes.max(64 * 1024) + RECORD_HEADER_BYTES);
        let mut chunk = crate::shared::sys::read_exact_at(file, want, offset)?;
        let (_, first_len, _) = parse_header(&chunk).ok_or_else(corrupt)?;
        if first_len + RECORD_HEADER_BYTES > chunk.len() {
            // A record larger than the chunk: read exactly it.
            chunk =
                crate::shared::sys::read_exact_at(file, RECORD_HEADER_BYTES + first_len, offset)?;
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

    /// Reserves and writes a batch the way the journal and the writer thread do together.
    fn spool_batch(spool: &mut Spool, budget: &SpoolBudget, batch: &[Record]) {
        let len = spooled_len(batch);
        assert!(budget.try_charge(len));
        let (file, end) = spool.reserve(
            budget.segment_bytes(),
            batch[0].seq,
            batch.last().unwrap().seq,
            len,
        );
        file.append(budget.dir(), batch).unwrap();
        spool.mark_written(&file, end);
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
            spool_batch(&mut spool, &budget, batch);
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

    /// Reserved but unwritten bytes are invisible to readers.
    #[test]
    fn readers_see_only_written_bytes() {
        let budget = budget(1 << 20);
        let mut spool = Spool::default();
        let batch = [record(1, RecordKind::Event, b"queued")];
        assert!(budget.try_charge(spooled_len(&batch)));
        spool.reserve(budget.segment_bytes(), 1, 1, spooled_len(&batch));
        let read = spool.locate(1).unwrap();
        assert_eq!(read.end, 0);
        assert_eq!(read_records(&read, 1, 1024).unwrap().0.len(), 0);
    }

    /// Eviction drops whole segments and refunds the budget; the daemon-wide cap is never passed.
    #[test]
    fn eviction_refunds_the_budget() {
        let budget = SpoolBudget::new(std::env::temp_dir(), 60, u64::MAX, 10);
        let mut spool = Spool::default();
        spool_batch(
            &mut spool,
            &budget,
            &[record(1, RecordKind::Event, b"aaaaaaaaaa")],
        );
        spool_batch(
            &mut spool,
            &budget,
            &[record(2, RecordKind::Event, b"bbbbbbbbbb")],
        );
        assert_eq!(budget.used_bytes(), 52);
        assert!(!budget.try_charge(26), "over the total cap");
        assert_eq!(spool.evict_oldest(&budget).map(|(last, _)| last), Some(1));
        assert_eq!(spool.oldest_last_seq(), Some(2));
        assert_eq!(budget.used_bytes(), 26);
        assert_eq!(spool.evict_oldest(&budget).map(|(last, _)| last), Some(2));
        assert_eq!(budget.used_bytes(), 0);
    }
}

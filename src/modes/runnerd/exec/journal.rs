//! The journal is the stream: every event of an exec is appended here, and the primary `POST /execs`
//! response and every attach are [`JournalCursor`]s reading it by seq and waiting for more.
//!
//! Ownership story. One `Journal` per exec, shared (`Arc`) by the exec's driver and output pumps
//! (the writers) and any number of cursors. Appends never wait for readers: the newest records sit
//! in an in-memory tail; when it grows past its cap the oldest records move to the disk [`Spool`];
//! when the spool passes its per-exec cap (or the daemon-wide [`JournalBudget`] needs room) the
//! oldest segments are dropped and `evicted_through` records it. A cursor that falls behind
//! eviction gets one `gap` line naming the lost range, then continues — never silent loss, never an
//! unbounded buffer. The state lock is a std mutex held only for bookkeeping; spool reads happen
//! outside it, on a blocking thread, and so does turning records into wire lines.
//!
//! Output is kept as the raw bytes the pipe gave, not as its base64 line: memory and spool hold a
//! quarter less, and each reader writes the wire lines straight into the frame it sends.
use super::output::{output_line_len, write_output_line, OutputStream};
use super::spool::{read_records, Spool, SpoolBudget};
use crate::shared::protocol::runnerd::ExecEvent;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::watch;

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
    fn wire_len(&self) -> usize {
        match self.kind {
            RecordKind::Event => self.bytes.len(),
            RecordKind::Output(_) => output_line_len(self.bytes.len(), self.seq),
        }
    }

    /// Appends the record's wire line to `out`.
    fn write_wire(&self, out: &mut Vec<u8>) {
        match self.kind {
            RecordKind::Event => out.extend_from_slice(&self.bytes),
            RecordKind::Output(stream) => write_output_line(stream, &self.bytes, self.seq, out),
        }
    }
}

/// The wire lines of `records`, in one buffer.
fn render(records: &[Record]) -> Bytes {
    let mut frame = Vec::with_capacity(records.iter().map(Record::wire_len).sum());
    for record in records {
        record.write_wire(&mut frame);
    }
    Bytes::from(frame)
}

struct JournalState {
    tail: VecDeque<Record>,
    tail_bytes: usize,
    spool: Spool,
    /// Seq the next appended event gets.
    next_seq: u64,
    /// Every seq ≤ this was dropped from the journal.
    evicted_through: u64,
    finished: bool,
    spool_failed: bool,
}

/// How far the journal has got: the last seq appended, and whether the exec ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    last_seq: u64,
    finished: bool,
}

/// The event log of one exec.
pub struct Journal {
    state: Mutex<JournalState>,
    progress: watch::Sender<Progress>,
    budget: Arc<JournalBudget>,
    memory_cap_bytes: usize,
}

impl Journal {
    /// A new, empty journal registered with `budget`.
    pub fn new(budget: &Arc<JournalBudget>, memory_cap_bytes: usize) -> Arc<Journal> {
        let journal = Arc::new(Journal {
            state: Mutex::new(JournalState {
                tail: VecDeque::new(),
                tail_bytes: 0,
                spool: Spool::default(),
                next_seq: 1,
                evicted_through: 0,
                finished: false,
                spool_failed: false,
            }),
            progress: watch::Sender::new(Progress {
                last_seq: 0,
                finished: false,
            }),
            budget: budget.clone(),
            memory_cap_bytes,
        });
        budget.register(&journal);
        journal
    }

    fn lock(&self) -> MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record of `kind` whose bytes `make(seq)` builds for the next seq; returns the seq.
    fn push(&self, kind: RecordKind, make: impl FnOnce(u64) -> Bytes) -> u64 {
        let (seq, spilled) = {
            let mut state = self.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let bytes = make(seq);
            state.tail_bytes += bytes.len();
            state.tail.push_back(Record { seq, kind, bytes });
            let spilled = self.spill_if_needed(&mut state);
            (seq, spilled)
        };
        self.progress.send_modify(|p| p.last_seq = seq);
        if spilled && self.budget.spool.is_over() {
            self.budget.enforce();
        }
        seq
    }

    /// Appends raw output bytes (a `stdout`/`stderr` event on the wire); returns their seq.
    pub fn append_output(&self, stream: OutputStream, chunk: Bytes) -> u64 {
        self.push(RecordKind::Output(stream), |_| chunk)
    }

    /// Appends a typed event (stamping it with the next seq when it carries one).
    pub fn append(&self, event: impl FnOnce(u64) -> ExecEvent) -> u64 {
        self.push(RecordKind::Event, |seq| Bytes::from(event(seq).to_line()))
    }

    /// Marks the journal complete: cursors that have read everything end.
    pub fn finish(self: &Arc<Self>) {
        self.lock().finished = true;
        self.progress.send_modify(|p| p.finished = true);
        self.budget.mark_finished(self);
    }

    /// A reader of every event with seq > `since_seq`, following live appends until finished.
    pub fn cursor(self: &Arc<Self>, since_seq: u64) -> JournalCursor {
        JournalCursor {
            journal: self.clone(),
            next_seq: since_seq.saturating_add(1),
            progress: self.progress.subscribe(),
            pending: VecDeque::new(),
        }
    }

    /// Moves the oldest tail records to disk once the tail passes its cap, down to three quarters
    /// of it (so spills are batches, not one write per record). Returns whether anything was
    /// spilled.
    fn spill_if_needed(&self, state: &mut JournalState) -> bool {
        if state.tail_bytes <= self.memory_cap_bytes || state.tail.len() <= 1 {
            return false;
        }
        let target = self.memory_cap_bytes * 3 / 4;
        let mut count = 0;
        let mut remaining = state.tail_bytes;
        for record in &state.tail {
            if remaining <= target || count + 1 == state.tail.len() {
                break;
            }
            remaining -= record.bytes.len();
            count += 1;
        }
        let JournalState {
            tail,
            spool,
            spool_failed,
            evicted_through,
            ..
        } = state;
        let last_moved = tail[count - 1].seq;
        if !*spool_failed {
            if let Err(err) = spool.append(&self.budget.spool, tail.range(..count)) {
                tracing::warn!(%err, "journal spool write failed; older output of this exec will be reported as a gap");
                *spool_failed = true;
            }
        }
        if *spool_failed {
            *evicted_through = (*evicted_through).max(last_moved);
        }
        for record in tail.drain(..count) {
            state.tail_bytes -= record.bytes.len();
        }
        while state.spool.bytes() > self.budget.spool.per_exec_cap_bytes() {
            match state.spool.evict_oldest(&self.budget.spool) {
                Some(last) => state.evicted_through = state.evicted_through.max(last),
                None => break,
            }
        }
        true
    }

    /// Drops this journal's whole spool (budget pressure from elsewhere). Returns bytes freed.
    fn evict_spool(&self, whole: bool) -> u64 {
        let mut state = self.lock();
        let before = state.spool.bytes();
        let last = if whole {
            state.spool.evict_all(&self.budget.spool)
        } else {
            state.spool.evict_oldest(&self.budget.spool)
        };
        if let Some(last) = last {
            state.evicted_through = state.evicted_through.max(last);
        }
        before - state.spool.bytes()
    }

    fn spool_bytes(&self) -> u64 {
        self.lock().spool.bytes()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.spool.evict_all(&self.budget.spool);
    }
}

/// What a cursor does next, decided under the lock and carried out outside it.
enum Step {
    /// Send these records (cheap clones of the tail's); the cursor moves past the last.
    Render(Vec<Record>),
    /// Send this line (a gap); the cursor moves to the seq given.
    Deliver(Bytes, u64),
    ReadSpool(super::spool::SpoolRead),
    Wait,
    End,
}

/// Reads a journal by seq. Dropping it is all it takes to stop reading.
pub struct JournalCursor {
    journal: Arc<Journal>,
    next_seq: u64,
    progress: watch::Receiver<Progress>,
    /// Records read from the spool and not yet sent (all before `next_seq`).
    pending: VecDeque<Record>,
}

/// How many of `records`, from the first, have wire lines that fit in `max_bytes` (always at
/// least one when there is one).
fn count_fitting<'a>(records: impl Iterator<Item = &'a Record>, max_bytes: usize) -> usize {
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

impl JournalCursor {
    /// The next run of whole lines, at most about `max_bytes` (always at least one line); `None` once
    /// the journal is finished and everything was delivered.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Option<Bytes> {
        loop {
            if !self.pending.is_empty() {
                let count = count_fitting(self.pending.iter(), max_bytes);
                let batch: Vec<Record> = self.pending.drain(..count).collect();
                return Some(render(&batch));
            }
            // Mark the current progress as seen before looking, so an append racing with this look
            // still wakes `changed()` below.
            self.progress.borrow_and_update();
            match self.plan(max_bytes) {
                Step::Render(records) => {
                    self.next_seq = records.last().map_or(self.next_seq, |r| r.seq + 1);
                    return Some(render(&records));
                }
                Step::Deliver(bytes, next_seq) => {
                    self.next_seq = next_seq;
                    return Some(bytes);
                }
                Step::ReadSpool(read) => {
                    let from = self.next_seq;
                    // Output lines are 4/3 of the bytes they carry: read about one frame's worth.
                    let budget = max_bytes / 4 * 3;
                    let result =
                        tokio::task::spawn_blocking(move || read_records(&read, from, budget))
                            .await;
                    match result {
                        Ok(Ok((records, Some(next)))) if !records.is_empty() => {
                            self.next_seq = next;
                            self.pending = records.into();
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(%err, "journal spool read failed");
                            return Some(self.skip_unreadable_spool());
                        }
                        // Nothing at or after our seq in that segment: it was evicted meanwhile;
                        // plan again and the gap will show.
                        _ => continue,
                    }
                }
                Step::Wait => {
                    if self.progress.changed().await.is_err() {
                        return None;
                    }
                }
                Step::End => return None,
            }
        }
    }

    fn plan(&self, max_bytes: usize) -> Step {
        let state = self.journal.lock();
        if self.next_seq <= state.evicted_through {
            let gap = ExecEvent::Gap {
                from_seq: self.next_seq,
                to_seq: state.evicted_through,
            };
            return Step::Deliver(Bytes::from(gap.to_line()), state.evicted_through + 1);
        }
        let tail_first = state.tail.front().map(|r| r.seq);
        match tail_first {
            Some(first) if first <= self.next_seq => {
                let start = (self.next_seq - first) as usize;
                if start >= state.tail.len() {
                    return if state.finished {
                        Step::End
                    } else {
                        Step::Wait
                    };
                }
                let count = count_fitting(state.tail.range(start..), max_bytes);
                Step::Render(state.tail.range(start..start + count).cloned().collect())
            }
            _ => match state.spool.locate(self.next_seq) {
                Some(read) => Step::ReadSpool(read),
                None if state.next_seq > self.next_seq => {
                    // Neither tail nor spool holds it any more, yet it was appended: evicted.
                    let to_seq = tail_first.map_or(state.next_seq - 1, |f| f - 1);
                    let gap = ExecEvent::Gap {
                        from_seq: self.next_seq,
                        to_seq,
                    };
                    Step::Deliver(Bytes::from(gap.to_line()), to_seq + 1)
                }
                None if state.finished => Step::End,
                None => Step::Wait,
            },
        }
    }

    /// After a failed spool read, everything up to the tail is reported lost.
    fn skip_unreadable_spool(&mut self) -> Bytes {
        let state = self.journal.lock();
        let to_seq = state
            .tail
            .front()
            .map_or(state.next_seq - 1, |r| r.seq - 1)
            .max(self.next_seq);
        let gap = ExecEvent::Gap {
            from_seq: self.next_seq,
            to_seq,
        };
        self.next_seq = to_seq + 1;
        Bytes::from(gap.to_line())
    }
}

/// The daemon-wide spool budget and the journals that draw on it. When the total passes its cap,
/// finished journals lose their spools first (oldest finished first), then the oldest segments of
/// live ones.
pub struct JournalBudget {
    pub spool: SpoolBudget,
    journals: Mutex<BudgetLists>,
}

#[derive(Default)]
struct BudgetLists {
    live: Vec<Weak<Journal>>,
    finished: VecDeque<Weak<Journal>>,
}

impl JournalBudget {
    pub fn new(spool: SpoolBudget) -> Arc<JournalBudget> {
        Arc::new(JournalBudget {
            spool,
            journals: Mutex::new(BudgetLists::default()),
        })
    }

    fn lists(&self) -> MutexGuard<'_, BudgetLists> {
        self.journals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, journal: &Arc<Journal>) {
        let mut lists = self.lists();
        lists.live.retain(|j| j.strong_count() > 0);
        lists.live.push(Arc::downgrade(journal));
    }

    fn mark_finished(&self, journal: &Arc<Journal>) {
        let mut lists = self.lists();
        let weak = Arc::downgrade(journal);
        lists
            .live
            .retain(|j| j.strong_count() > 0 && !j.ptr_eq(&weak));
        lists.finished.retain(|j| j.strong_count() > 0);
        lists.finished.push_back(weak);
    }

    /// Frees spool space until the total is within its cap. Never called with a journal lock held.
    fn enforce(&self) {
        let lists = self.lists();
        for journal in lists.finished.iter().filter_map(Weak::upgrade) {
            if !self.spool.is_over() {
                return;
            }
            journal.evict_spool(true);
        }
        while self.spool.is_over() {
            let oldest_with_spool = lists
                .live
                .iter()
                .filter_map(Weak::upgrade)
                .find(|j| j.spool_bytes() > 0);
            match oldest_with_spool {
                Some(journal) => {
                    journal.evict_spool(false);
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::protocol::runnerd::ExecEvent;

    fn budget(total: u64, per_exec: u64, segment: u64) -> Arc<JournalBudget> {
        JournalBudget::new(SpoolBudget::new(
            std::env::temp_dir(),
            total,
            per_exec,
            segment,
        ))
    }

    /// Appends `text` as stdout; on the wire it is the base64 of `text`.
    fn out(journal: &Journal, text: &str) -> u64 {
        journal.append_output(
            OutputStream::Stdout,
            Bytes::copy_from_slice(text.as_bytes()),
        )
    }

    async fn read_all(cursor: &mut JournalCursor) -> Vec<ExecEvent> {
        let mut events = Vec::new();
        while let Some(batch) = cursor.next_batch(4096).await {
            for line in batch.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                events.push(serde_json::from_slice(line).unwrap());
            }
        }
        events
    }

    fn payloads(events: &[ExecEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ExecEvent::Stdout { b64, seq } => {
                    let text = base64_simd::STANDARD.decode_to_vec(b64).unwrap();
                    format!("{seq}:{}", String::from_utf8(text).unwrap())
                }
                ExecEvent::Gap { from_seq, to_seq } => format!("gap {from_seq}-{to_seq}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A cursor from any seq sees every later event exactly once, whether it sits in memory or on disk.
    #[tokio::test]
    async fn replay_from_any_seq_is_lossless_across_memory_and_disk() {
        let budget = budget(u64::MAX, u64::MAX, 2048);
        let journal = Journal::new(&budget, 512);
        for i in 1..=200 {
            out(&journal, &format!("chunk-{i:04}"));
        }
        journal.finish();
        assert!(budget.spool.used_bytes() > 0, "most lines went to disk");
        for since in [0u64, 1, 57, 150, 199, 200] {
            let events = read_all(&mut journal.cursor(since)).await;
            let want: Vec<String> = (since + 1..=200)
                .map(|i| format!("{i}:chunk-{i:04}"))
                .collect();
            assert_eq!(payloads(&events), want, "since {since}");
        }
    }

    /// A live cursor waits for appends and ends when the journal finishes.
    #[tokio::test]
    async fn cursor_follows_live_appends() {
        let budget = budget(u64::MAX, u64::MAX, 1 << 20);
        let journal = Journal::new(&budget, 1 << 20);
        let mut cursor = journal.cursor(0);
        let writer = {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 1..=50 {
                    out(&journal, &i.to_string());
                    tokio::task::yield_now().await;
                }
                journal.finish();
            })
        };
        let events = read_all(&mut cursor).await;
        writer.await.unwrap();
        assert_eq!(events.len(), 50);
        assert_eq!(events.last().unwrap().seq(), Some(50));
    }

    /// Past the per-exec spool cap, a lagging reader gets one gap naming exactly the lost range.
    #[tokio::test]
    async fn eviction_shows_as_an_explicit_gap() {
        let budget = budget(u64::MAX, 1024, 256);
        let journal = Journal::new(&budget, 256);
        for i in 1..=300 {
            out(&journal, &format!("{i:08}"));
        }
        journal.finish();
        let events = read_all(&mut journal.cursor(0)).await;
        let ExecEvent::Gap { from_seq, to_seq } = events[0] else {
            panic!("first event should be a gap: {:?}", events[0]);
        };
        assert_eq!(from_seq, 1);
        assert_eq!(events[1].seq(), Some(to_seq + 1));
        let seqs: Vec<u64> = events[1..].iter().filter_map(ExecEvent::seq).collect();
        assert_eq!(
            seqs,
            (to_seq + 1..=300).collect::<Vec<_>>(),
            "contiguous after the gap"
        );
        assert!(budget.spool.used_bytes() <= 1024 + 256);
    }

    /// The daemon-wide cap takes spool space from finished journals before live ones.
    #[tokio::test]
    async fn total_budget_evicts_finished_journals_first() {
        let budget = budget(4096, u64::MAX, 512);
        let finished = Journal::new(&budget, 128);
        for i in 0..100 {
            out(&finished, &format!("old-{i:04}-{}", "x".repeat(40)));
        }
        finished.finish();
        let live = Journal::new(&budget, 128);
        for i in 0..60 {
            out(&live, &format!("new-{i:04}"));
        }
        assert!(budget.spool.used_bytes() <= 4096);
        let live_events = read_all(&mut {
            live.finish();
            live.cursor(0)
        })
        .await;
        assert!(
            !matches!(live_events[0], ExecEvent::Gap { .. }),
            "the live journal kept its spool"
        );
        let old_events = read_all(&mut finished.cursor(0)).await;
        assert!(matches!(old_events[0], ExecEvent::Gap { .. }));
    }

    /// Dropping a journal returns its spool bytes to the budget.
    #[test]
    fn dropping_a_journal_refunds_its_spool() {
        let budget = budget(u64::MAX, u64::MAX, 512);
        let journal = Journal::new(&budget, 64);
        for i in 0..50 {
            out(&journal, &format!("x{i}"));
        }
        assert!(budget.spool.used_bytes() > 0);
        drop(journal);
        assert_eq!(budget.spool.used_bytes(), 0);
    }
}

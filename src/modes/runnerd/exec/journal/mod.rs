//! The journal is the stream: every event of an exec is appended here, and the primary `POST /execs`
//! response and every attach are [`JournalCursor`]s reading it by seq and waiting for more.
//!
//! Ownership story. One `Journal` per exec, shared (`Arc`) by the exec's driver and output pumps
//! (the writers), any number of cursors, and the spool writer thread while a batch of it is queued
//! there. The newest records sit in an in-memory tail; when it grows past its cap the oldest
//! records are queued for the disk [`Spool`] ([`SpoolWriter`], a thread: the runtime thread never
//! waits on the disk) and stay in the tail, readable, until the writer says they are on disk. The
//! state lock is a std mutex held only for bookkeeping; spool reads and writes happen outside it,
//! on other threads, and so does turning records into wire lines.
//!
//! Backpressure instead of eviction. Every cursor is registered in [`Readers`]. While a reader
//! keeps reading (it asked for more within the stall window), nothing it has not been handed is
//! ever evicted: when the spool would have to drop such bytes — the per-exec cap is reached, or the
//! daemon-wide budget is full and nothing unheld is left to evict anywhere — the journal takes no
//! more: [`Journal::wait_for_room`] keeps the output pumps from reading the exec's pipes, so the
//! process blocks on write as it would on a slow terminal, until the readers catch up. The same wait
//! covers a disk slower than the exec (at most a memory-tail's worth queued per journal). A reader
//! that asked for nothing for the stall window stops holding the exec back; from then on eviction
//! applies to it as to a reader that is gone: the oldest segments are dropped, `evicted_through`
//! records it, and the cursor gets one `gap` line naming the lost range — never silent loss, never
//! an unbounded buffer. With no reader holding, nothing ever waits (the exec is never blocked by
//! nobody). Memory per journal stays within two tail caps plus a chunk per pump (the tail, and
//! the batches queued for the writer); disk within the per-exec and daemon-wide caps, which are
//! charged when a batch is queued.
//!
//! Output is kept as the raw bytes the pipe gave, not as its base64 line: memory and spool hold a
//! quarter less, and each reader writes the wire lines straight into the frame it sends.
mod budget;
mod cursor;
mod readers;
#[cfg(test)]
mod tests;

pub use budget::JournalBudget;
pub use cursor::JournalCursor;

use super::record::{OutputStream, Record, RecordKind};
use super::spool::{spooled_len, SegmentFile, Spool};
use crate::shared::protocol::runnerd::ExecEvent;
use bytes::Bytes;
use readers::Readers;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

/// How often the drain grace looks whether the journal still holds output back.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);

struct JournalState {
    tail: VecDeque<Record>,
    tail_bytes: usize,
    /// How many records at the front of the tail are queued for the spool writer (kept readable
    /// in memory until they are on disk), and their bytes.
    queued_count: usize,
    queued_bytes: usize,
    spool: Spool,
    /// Seq the next appended event gets.
    next_seq: u64,
    /// Every seq ≤ this was dropped from the journal.
    evicted_through: u64,
    finished: bool,
    spool_failed: bool,
    readers: Readers,
    pressure: PressureClock,
}

/// How long the journal has kept its pumps from reading, so that the drain grace after the exit
/// does not count time the readers took. An episode runs from a pump's first wait until a pump
/// finds its pipe empty (the backlog is drained): the moments between two waits, when the pump
/// reads its chunk and the runtime serves other work, belong to it too, however busy the machine.
#[derive(Default)]
struct PressureClock {
    since: Option<Instant>,
    total: Duration,
}

impl PressureClock {
    fn waits(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    fn keeps_up(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.total += now.saturating_duration_since(since);
        }
    }

    fn held_back(&self, now: Instant) -> Duration {
        self.total
            + self
                .since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

/// How far the journal has got: the last seq appended, and whether the exec ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    last_seq: u64,
    finished: bool,
}

/// Whether the pumps may read more.
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    Yes,
    /// Not now; a reader that keeps holding stalls at `wake_at` (if any), else wait for a wake-up.
    No {
        wake_at: Option<Instant>,
    },
}

/// What one spill step did.
enum Spill {
    /// Nothing (more) to spill.
    Done,
    /// A batch was queued for the disk or dropped; look again.
    Moved,
    /// The tail cannot shed its oldest batch now (a holding reader needs it, or the writer lags).
    Blocked,
    /// The batch fits the per-exec cap but not the daemon-wide one: free that much elsewhere first.
    NeedBudget(u64),
}

/// The event log of one exec.
pub struct Journal {
    state: Mutex<JournalState>,
    progress: watch::Sender<Progress>,
    budget: Arc<JournalBudget>,
    memory_cap_bytes: usize,
    /// For the spool writer's completions.
    me: Weak<Journal>,
}

impl Journal {
    /// A new, empty journal registered with `budget`.
    pub fn new(budget: &Arc<JournalBudget>, memory_cap_bytes: usize) -> Arc<Journal> {
        let journal = Arc::new_cyclic(|me| Journal {
            state: Mutex::new(JournalState {
                tail: VecDeque::new(),
                tail_bytes: 0,
                queued_count: 0,
                queued_bytes: 0,
                spool: Spool::default(),
                next_seq: 1,
                evicted_through: 0,
                finished: false,
                spool_failed: false,
                readers: Readers::default(),
                pressure: PressureClock::default(),
            }),
            progress: watch::Sender::new(Progress {
                last_seq: 0,
                finished: false,
            }),
            budget: budget.clone(),
            memory_cap_bytes,
            me: me.clone(),
        });
        budget.register(&journal);
        journal
    }

    fn lock(&self) -> MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record of `kind` whose bytes `make(seq)` builds for the next seq; returns the seq.
    /// Never waits: the pumps ask [`Journal::wait_for_room`] before they read.
    fn push(&self, kind: RecordKind, make: impl FnOnce(u64) -> Bytes) -> u64 {
        let seq = {
            let mut state = self.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let bytes = make(seq);
            state.tail_bytes += bytes.len();
            state.tail.push_back(Record { seq, kind, bytes });
            seq
        };
        self.progress.send_modify(|p| p.last_seq = seq);
        self.relieve();
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
    /// From now on it holds the exec back while it keeps reading.
    pub fn cursor(self: &Arc<Self>, since_seq: u64) -> JournalCursor {
        let position = since_seq.saturating_add(1);
        let id = self.lock().readers.add(position, Instant::now());
        JournalCursor::new(self.clone(), id, position, self.progress.subscribe())
    }

    /// Waits until the journal may take more output: until the tail can shed its oldest records
    /// to the spool (or drop them, when no reader that keeps reading needs them). Output pumps call
    /// this before each read, so a full journal leaves the bytes in the exec's pipe.
    pub async fn wait_for_room(&self) {
        let mut waiting = false;
        loop {
            let notified = self.budget.room_changed();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = match self.relieve() {
                Room::Yes if !waiting => return,
                Room::Yes => break,
                Room::No { wake_at } => wake_at,
            };
            if !waiting {
                // Announce the wait first, then look once more with a fresh registration: a change
                // made between the look above and the announcement is then never missed.
                waiting = true;
                self.budget.pump_waits(true);
                self.lock().pressure.waits(Instant::now());
                continue;
            }
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
        self.budget.pump_waits(false);
    }

    /// A pump found its pipe empty: whatever backlog the journal held back is drained.
    pub fn pipe_caught_up(&self) {
        self.lock().pressure.keeps_up(Instant::now());
    }

    /// Runs `drain` for up to `grace`, counting only time in which the journal held nothing back:
    /// after the process exited its pipes still hold output, and readers connected at the exit
    /// drain to the end. So the grace does not run while the pumps wait for room, nor while a
    /// reader that keeps reading has not been handed everything yet. `None` when the grace ran
    /// out.
    pub async fn within_drain_grace<F: Future>(
        &self,
        grace: Duration,
        drain: F,
    ) -> Option<F::Output> {
        tokio::pin!(drain);
        let mut counted = Duration::ZERO;
        let mut last = Instant::now();
        let mut held_before = self.lock().pressure.held_back(last);
        loop {
            let now = Instant::now();
            let (held, reader_behind) = {
                let mut state = self.lock();
                let held = state.pressure.held_back(now);
                let hold = state.readers.hold(now, self.budget.stall_window());
                (held, hold.is_some_and(|h| h < state.next_seq))
            };
            let held_now = held.saturating_sub(held_before);
            if !reader_behind {
                counted += now.saturating_duration_since(last).saturating_sub(held_now);
            }
            (last, held_before) = (now, held);
            if counted >= grace {
                tracing::info!(
                    "the exec's pipes stayed open past the drain grace; what they still hold is dropped"
                );
                return None;
            }
            let step = (grace - counted).min(DRAIN_CHECK_INTERVAL);
            tokio::select! {
                output = &mut drain => return Some(output),
                _ = tokio::time::sleep(step) => {}
            }
        }
    }

    /// Spills what can be spilled; says whether the pumps may read more.
    fn relieve(&self) -> Room {
        let now = Instant::now();
        let mut budget_tries = 0;
        loop {
            let mut state = self.lock();
            match self.spill_step(&mut state, now, budget_tries >= 2) {
                Spill::Moved => continue,
                Spill::Done | Spill::Blocked => return self.room(&mut state, now),
                Spill::NeedBudget(bytes) => {
                    drop(state);
                    budget_tries += 1;
                    self.budget.make_room(bytes, now);
                }
            }
        }
    }

    fn room(&self, state: &mut JournalState, now: Instant) -> Room {
        let unqueued_bytes = state.tail_bytes - state.queued_bytes;
        let unqueued_count = state.tail.len() - state.queued_count;
        if unqueued_bytes <= self.memory_cap_bytes || unqueued_count <= 1 {
            Room::Yes
        } else {
            Room::No {
                wake_at: state.readers.next_stall(now, self.budget.stall_window()),
            }
        }
    }

    /// Moves one batch of the oldest unqueued tail records towards the disk, once the tail passes
    /// its cap, down to three quarters of it (so spills are batches, not one write per record).
    fn spill_step(&self, state: &mut JournalState, now: Instant, budget_exhausted: bool) -> Spill {
        let unqueued_bytes = state.tail_bytes - state.queued_bytes;
        let unqueued_count = state.tail.len() - state.queued_count;
        if unqueued_bytes <= self.memory_cap_bytes || unqueued_count <= 1 {
            return Spill::Done;
        }
        let target = self.memory_cap_bytes * 3 / 4;
        let (mut count, mut batch_bytes, mut remaining) = (0, 0, unqueued_bytes);
        for record in state.tail.range(state.queued_count..) {
            if remaining <= target || count + 1 == unqueued_count {
                break;
            }
            remaining -= record.bytes.len();
            batch_bytes += record.bytes.len();
            count += 1;
        }
        let range = state.queued_count..state.queued_count + count;
        let last = state.tail[range.end - 1].seq;
        let hold = state.readers.hold(now, self.budget.stall_window());
        let held = hold.is_some_and(|h| h <= last);
        let batch: Vec<Record> = state.tail.range(range.clone()).cloned().collect();
        let need = spooled_len(&batch);
        let per_exec_cap = self.budget.spool.per_exec_cap_bytes();
        let mut fits = !state.spool_failed && need <= per_exec_cap;
        if fits {
            // Make room within this exec's cap from its own oldest segments nobody holds.
            while state.spool.bytes() + need > per_exec_cap && self.evict_oldest_unheld(state, hold)
            {
            }
            fits = state.spool.bytes() + need <= per_exec_cap;
        }
        if fits
            && state.queued_bytes > 0
            && state.queued_bytes + batch_bytes > self.memory_cap_bytes
        {
            // The disk lags: a tail's worth is queued already.
            return Spill::Blocked;
        }
        if fits && !self.budget.spool.try_charge(need) {
            if !budget_exhausted {
                return Spill::NeedBudget(need);
            }
            fits = false;
        }
        if fits {
            let (file, end) =
                state
                    .spool
                    .reserve(self.budget.spool.segment_bytes(), batch[0].seq, last, need);
            state.queued_count += count;
            state.queued_bytes += batch_bytes;
            let me = self.me.clone();
            let done_file = file.clone();
            self.budget.writer().append(
                file,
                batch,
                Box::new(move |result| {
                    if let Some(journal) = me.upgrade() {
                        journal.spool_written(&done_file, end, count, batch_bytes, result);
                    }
                }),
            );
            return Spill::Moved;
        }
        if held || state.queued_count > 0 {
            // Needed by a reader that keeps reading: keep it and take no more. (With batches still
            // queued, wait for them too: the tail must stay one run of seqs.)
            return Spill::Blocked;
        }
        // Nobody holds it and the spool cannot take it: it and everything older is evicted.
        while self.evict_oldest_unheld(state, None) {}
        let dropped: usize = state.tail.drain(range).map(|r| r.bytes.len()).sum();
        state.tail_bytes -= dropped;
        state.evicted_through = state.evicted_through.max(last);
        Spill::Moved
    }

    /// Evicts this journal's oldest segment if no holding reader needs any of it.
    fn evict_oldest_unheld(&self, state: &mut JournalState, hold: Option<u64>) -> bool {
        match state.spool.oldest_last_seq() {
            Some(last) if hold.is_none_or(|h| last < h) => {
                if let Some((last, file)) = state.spool.evict_oldest(&self.budget.spool) {
                    state.evicted_through = state.evicted_through.max(last);
                    self.budget.writer().release(file);
                }
                true
            }
            _ => false,
        }
    }

    /// The spool writer finished a batch: it is on disk (readers now find it there) or lost.
    fn spool_written(
        &self,
        file: &Arc<SegmentFile>,
        end: u64,
        count: usize,
        bytes: usize,
        result: std::io::Result<()>,
    ) {
        {
            let mut state = self.lock();
            if let Err(err) = &result {
                if !state.spool_failed {
                    tracing::warn!(%err, "journal spool write failed; output of this exec that leaves the memory tail is dropped from now on (reported as a gap)");
                }
                state.spool_failed = true;
            }
            if state.spool_failed {
                while self.evict_oldest_unheld(&mut state, None) {}
                let last = state.tail[count - 1].seq;
                state.evicted_through = state.evicted_through.max(last);
            } else {
                state.spool.mark_written(file, end);
            }
            let drained: usize = state.tail.drain(..count).map(|r| r.bytes.len()).sum();
            state.tail_bytes -= drained;
            state.queued_count -= count;
            state.queued_bytes -= bytes;
        }
        self.budget.notify_room();
    }

    /// Evicts this journal's oldest unheld segment (daemon-wide budget pressure). Returns whether
    /// it freed anything.
    fn evict_for_budget(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let hold = state.readers.hold(now, self.budget.stall_window());
        self.evict_oldest_unheld(&mut state, hold)
    }

    fn reader_asking(&self, id: u64, position: u64) {
        self.lock().readers.asking(id, position);
    }

    fn reader_handed(&self, id: u64, position: u64) {
        self.lock().readers.handed(id, position, Instant::now());
        self.budget.notify_room();
    }

    fn reader_gone(&self, id: u64) {
        self.lock().readers.remove(id);
        self.budget.notify_room();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        while let Some((_, file)) = state.spool.evict_oldest(&self.budget.spool) {
            self.budget.writer().release(file);
        }
        self.budget.notify_room();
    }
}

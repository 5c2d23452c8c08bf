//! A reader of a journal by seq: the primary `POST /execs` response and every attach.
use super::super::record::{count_fitting, render, Record};
use super::super::spool::{read_records, SpoolRead};
use super::{Journal, Progress};
use crate::shared::protocol::runnerd::ExecEvent;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// What a cursor does next, decided under the lock and carried out outside it.
enum Step {
    /// Send these records (cheap clones of the tail's); the cursor moves past the last.
    Render(Vec<Record>),
    /// Send this line (a gap); the cursor moves to the seq given.
    Deliver(Bytes, u64),
    ReadSpool(SpoolRead),
    Wait,
    End,
}

/// Reads a journal by seq. Dropping it is all it takes to stop reading (and to stop holding the
/// exec back).
pub struct JournalCursor {
    journal: Arc<Journal>,
    /// This reader in the journal's [`super::Readers`].
    id: u64,
    next_seq: u64,
    progress: watch::Receiver<Progress>,
    /// Records read from the spool and not yet sent (all before `next_seq`).
    pending: VecDeque<Record>,
}

impl JournalCursor {
    pub(super) fn new(
        journal: Arc<Journal>,
        id: u64,
        next_seq: u64,
        progress: watch::Receiver<Progress>,
    ) -> JournalCursor {
        JournalCursor {
            journal,
            id,
            next_seq,
            progress,
            pending: VecDeque::new(),
        }
    }

    /// First seq this reader has not been handed yet.
    fn position(&self) -> u64 {
        self.pending.front().map_or(self.next_seq, |r| r.seq)
    }

    /// The next run of whole lines, at most about `max_bytes` (always at least one line); `None` once
    /// the journal is finished and everything was delivered. Calling it is what tells the journal
    /// that this reader keeps reading.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Option<Bytes> {
        self.journal.reader_asking(self.id, self.position());
        let batch = self.read_batch(max_bytes).await;
        self.journal.reader_handed(self.id, self.position());
        batch
    }

    async fn read_batch(&mut self, max_bytes: usize) -> Option<Bytes> {
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

impl Drop for JournalCursor {
    fn drop(&mut self) {
        self.journal.reader_gone(self.id);
    }
}

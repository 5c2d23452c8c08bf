//! The daemon-wide spool budget, the journals that draw on it, and the one spool writer thread.
//!
//! When a journal's batch does not fit the daemon-wide cap, space is taken from segments no holding
//! reader needs: finished journals first (oldest finished first), then the oldest segments of live
//! ones (oldest exec first, the asking journal included). If everything on disk is still needed by
//! readers that keep reading, the asking journal takes no more output until one of them catches up,
//! stalls or leaves; each of those, and every batch the writer finishes, wakes the waiting pumps.
use super::super::super::limits::DEFAULT_JOURNAL_STALL_WINDOW;
use super::super::spool::SpoolBudget;
use super::super::spool_writer::SpoolWriter;
use super::Journal;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// The spool budget shared by every journal of the daemon.
pub struct JournalBudget {
    pub spool: SpoolBudget,
    writer: SpoolWriter,
    stall_window: Duration,
    journals: Mutex<BudgetLists>,
    /// Woken when a journal may have room again (a reader moved or left, space was freed, a
    /// batch reached the disk); only while some pump waits.
    room: Notify,
    pumps_waiting: AtomicUsize,
}

#[derive(Default)]
struct BudgetLists {
    live: Vec<Weak<Journal>>,
    finished: VecDeque<Weak<Journal>>,
}

impl JournalBudget {
    /// A budget with the default stall window.
    pub fn new(spool: SpoolBudget) -> Arc<JournalBudget> {
        Self::with_stall_window(spool, DEFAULT_JOURNAL_STALL_WINDOW)
    }

    /// A budget whose readers stop holding their exec back after `stall_window` without reading.
    /// Starts the spool writer thread.
    pub fn with_stall_window(spool: SpoolBudget, stall_window: Duration) -> Arc<JournalBudget> {
        Arc::new(JournalBudget {
            writer: SpoolWriter::start(spool.dir().to_path_buf()),
            spool,
            stall_window,
            journals: Mutex::new(BudgetLists::default()),
            room: Notify::new(),
            pumps_waiting: AtomicUsize::new(0),
        })
    }

    pub fn stall_window(&self) -> Duration {
        self.stall_window
    }

    pub(super) fn writer(&self) -> &SpoolWriter {
        &self.writer
    }

    pub(super) fn room_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    pub(super) fn pump_waits(&self, waits: bool) {
        if waits {
            self.pumps_waiting.fetch_add(1, Ordering::SeqCst);
        } else {
            self.pumps_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wakes waiting pumps to look again. Cheap when none waits (the common case).
    pub(super) fn notify_room(&self) {
        if self.pumps_waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    fn lists(&self) -> MutexGuard<'_, BudgetLists> {
        self.journals.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn register(&self, journal: &Arc<Journal>) {
        let mut lists = self.lists();
        lists.live.retain(|j| j.strong_count() > 0);
        lists.live.push(Arc::downgrade(journal));
    }

    pub(super) fn mark_finished(&self, journal: &Arc<Journal>) {
        let mut lists = self.lists();
        let weak = Arc::downgrade(journal);
        lists
            .live
            .retain(|j| j.strong_count() > 0 && !j.ptr_eq(&weak));
        lists.finished.retain(|j| j.strong_count() > 0);
        lists.finished.push_back(weak);
    }

    /// Evicts unheld segments until `needed` more bytes fit the daemon-wide cap; returns whether
    /// they do. Never called with a journal lock held (it takes each journal's in turn).
    pub(super) fn make_room(&self, needed: u64, now: Instant) -> bool {
        let journals: Vec<Arc<Journal>> = {
            let lists = self.lists();
            lists
                .finished
                .iter()
                .chain(lists.live.iter())
                .filter_map(Weak::upgrade)
                .collect()
        };
        let mut freed = false;
        for journal in &journals {
            while !self.spool.has_room_for(needed) {
                if !journal.evict_for_budget(now) {
                    break;
                }
                freed = true;
            }
            if self.spool.has_room_for(needed) {
                break;
            }
        }
        // The upgraded handles are dropped here, outside every lock (a drop may run a journal's Drop).
        drop(journals);
        if freed {
            self.notify_room();
        }
        self.spool.has_room_for(needed)
    }
}

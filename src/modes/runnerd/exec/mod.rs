//! Execs: spawn, stream into the journal, deadlines, cancel, stdin, retention.
//!
//! An [`Exec`] is shared by its driver task (which owns the process from spawn to `exit`), the
//! [`ExecTable`] (live, then retained once finished), and request handlers (cancel, stdin, attach,
//! status). Handlers never touch the process directly: they flip flags under the exec's lock and
//! start the ending of its process tree ([`tree`]), and the driver reports what happened.
pub mod driver;
pub mod journal;
pub mod launcher;
pub mod output;
pub mod record;
pub mod spec;
pub mod spool;
pub mod spool_writer;
pub mod stdin;
pub mod tree;

use super::activity::Activity;
use super::limits::KILL_GRACE;
use crate::shared::protocol::runnerd::{
    ExecStatusState, PtySize, ResizeRefusal, StdinMode, StdinRefusal,
};
use journal::Journal;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use stdin::StdinState;
use tokio::sync::watch;
use tokio::time::Instant;
use tree::{ExecMark, Trees};

/// Where an exec is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Ended; `None` when it never ran (spawn failed).
    Exited(Option<i32>),
}

#[derive(Debug)]
struct Control {
    phase: Phase,
    /// How its processes are found, known once spawned.
    mark: Option<ExecMark>,
    cancelled: bool,
    timed_out: bool,
    /// The ending of its process tree (cancel, deadline), once started.
    ending: Option<tokio::task::JoinHandle<()>>,
}

/// One exec.
pub struct Exec {
    pub id: String,
    pub journal: Arc<Journal>,
    pub started_at_ms: u64,
    timeout: Duration,
    deadline: watch::Sender<Instant>,
    control: Mutex<Control>,
    stdin: Arc<tokio::sync::Mutex<StdinState>>,
    /// What `/stdin` accepts: one JSON line per request (`hold`) or any bytes (`raw`).
    stdin_mode: StdinMode,
    /// The master side of the exec's pty while it runs (resizes go through it); `None` for an
    /// exec on pipes and once the exec ended.
    terminal: Mutex<Option<OwnedFd>>,
    is_pty: bool,
}

impl Exec {
    pub fn new(
        id: String,
        journal: Arc<Journal>,
        started_at_ms: u64,
        timeout: Duration,
        stdin_mode: StdinMode,
        terminal: Option<OwnedFd>,
    ) -> Arc<Exec> {
        Arc::new(Exec {
            stdin_mode,
            is_pty: terminal.is_some(),
            terminal: Mutex::new(terminal),
            id,
            journal,
            started_at_ms,
            timeout,
            deadline: watch::Sender::new(Instant::now() + timeout),
            control: Mutex::new(Control {
                phase: Phase::Running,
                mark: None,
                cancelled: false,
                timed_out: false,
                ending: None,
            }),
            stdin: Arc::new(tokio::sync::Mutex::new(StdinState::Closed)),
        })
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.control().phase
    }

    pub fn is_live(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// `GET /execs/:id` state.
    pub fn status(&self) -> ExecStatusState {
        match self.phase() {
            Phase::Running => ExecStatusState::Running {
                started_at_ms: self.started_at_ms,
            },
            Phase::Exited(exit_code) => ExecStatusState::Exited { exit_code },
        }
    }

    /// Whether `/stdin` takes any bytes rather than one JSON line per request.
    pub fn has_raw_stdin(&self) -> bool {
        self.stdin_mode == StdinMode::Raw
    }

    /// Whether the exec runs on a pty.
    pub fn is_pty(&self) -> bool {
        self.is_pty
    }

    /// Sets the window size of a running pty exec (its foreground processes get SIGWINCH).
    pub fn resize(&self, size: PtySize, activity: &Activity) -> Result<(), ResizeRefusal> {
        if !self.is_live() {
            return Err(ResizeRefusal::NotFound);
        }
        if !self.is_pty {
            return Err(ResizeRefusal::NotATerminal);
        }
        let terminal = self.terminal.lock().unwrap_or_else(|e| e.into_inner());
        let Some(master) = terminal.as_ref() else {
            return Err(ResizeRefusal::NotFound);
        };
        let size = crate::shared::sys::pty::WindowSize {
            cols: size.cols,
            rows: size.rows,
        };
        // The only failure of TIOCSWINSZ on a pty master we hold is a closed terminal.
        crate::shared::sys::pty::set_window_size(master.as_fd(), size)
            .map_err(|_| ResizeRefusal::NotFound)?;
        activity.touch();
        Ok(())
    }

    /// Lets go of the pty once the exec ended (a retained exec holds no descriptor).
    fn release_terminal(&self) {
        self.terminal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Sliding deadline: an attach to a live exec gives it its full `timeoutMs` again.
    pub fn rearm_deadline(&self) {
        if self.is_live() {
            self.deadline.send_replace(Instant::now() + self.timeout);
        }
    }

    /// Cancels a running exec: SIGTERM to every process it started, SIGKILL after [`KILL_GRACE`].
    /// Returns whether it was running. Once its first process exited, the exec is over and what it
    /// left running in the background is left alone.
    pub fn cancel(&self, trees: &Arc<Trees>) -> bool {
        let mut control = self.control();
        if control.phase != Phase::Running {
            return false;
        }
        if let Some(mark) = control.mark {
            if !trees.is_running(mark.leader) {
                return false;
            }
        }
        if !control.cancelled {
            control.cancelled = true;
            if let Some(mark) = control.mark {
                start_ending(&mut control, trees, mark);
            }
        }
        true
    }

    /// The deadline fired: same ladder as cancel, reported as `timedOut`.
    fn expire(&self, trees: &Arc<Trees>) {
        let mut control = self.control();
        let Some(mark) = control.mark else { return };
        if control.phase == Phase::Running
            && !control.timed_out
            && !control.cancelled
            && trees.is_running(mark.leader)
        {
            control.timed_out = true;
            start_ending(&mut control, trees, mark);
        }
    }

    /// Records how to find the exec's processes; a cancel that came before the spawn takes effect
    /// now.
    fn set_mark(&self, mark: ExecMark, trees: &Arc<Trees>) {
        let mut control = self.control();
        control.mark = Some(mark);
        if control.cancelled {
            start_ending(&mut control, trees, mark);
        }
    }

    /// The first process of a running exec (shutdown without a usable `/proc`).
    pub fn leader(&self) -> Option<i32> {
        let control = self.control();
        match control.phase {
            Phase::Running => control.mark.map(|m| m.leader),
            Phase::Exited(_) => None,
        }
    }

    /// The ending of the process tree, if one was started; the driver waits for it so `exit` comes
    /// after the last process of a cancelled or timed-out exec is gone.
    fn take_ending(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.control().ending.take()
    }

    /// Writes one line (and/or EOF) to a held stdin.
    pub async fn write_stdin(
        &self,
        line: Option<Vec<u8>>,
        eof: bool,
        activity: &Activity,
    ) -> Result<(), StdinRefusal> {
        if !self.is_live() {
            return Err(StdinRefusal::NotFound);
        }
        let mut state = self.stdin.lock().await;
        let StdinState::Held(sender) = &mut *state else {
            return Err(StdinRefusal::StdinClosed);
        };
        if let Some(line) = line {
            stdin::write_bounded(sender, &line).await?;
        }
        if eof {
            *state = StdinState::Closed;
        }
        // Keys typed into a terminal show a person at it, as an attach does: the sliding deadline
        // starts again (a shell someone is using is not ended mid-session).
        if self.is_pty {
            self.rearm_deadline();
        }
        activity.touch();
        Ok(())
    }
}

/// Starts ending the exec's tree (once).
fn start_ending(control: &mut Control, trees: &Arc<Trees>, mark: ExecMark) {
    if control.ending.is_none() {
        control.ending = Some(tokio::spawn(trees.clone().end_exec(mark, KILL_GRACE)));
    }
}

/// Why an exec could not be registered.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterRefusal {
    /// The live-exec cap is reached.
    Limit(usize),
    /// An exec with this id is live.
    Duplicate,
    /// The daemon is shutting down.
    ShuttingDown,
}

struct Tables {
    live: HashMap<String, Arc<Exec>>,
    /// Finished execs, oldest first.
    retained: VecDeque<Arc<Exec>>,
    accepting: bool,
}

/// Live execs and the most recent finished ones.
pub struct ExecTable {
    tables: Mutex<Tables>,
    /// Woken whenever an exec retires, so shutdown can wait for the last one without polling.
    retired: tokio::sync::Notify,
    max_live: usize,
    max_retained: usize,
}

impl ExecTable {
    pub fn new(max_live: usize, max_retained: usize) -> ExecTable {
        ExecTable {
            tables: Mutex::new(Tables {
                live: HashMap::new(),
                retained: VecDeque::new(),
                accepting: true,
            }),
            retired: tokio::sync::Notify::new(),
            max_live,
            max_retained,
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn live_count(&self) -> usize {
        self.tables().live.len()
    }

    /// Checked before validation, as the original does.
    pub fn check_capacity(&self) -> Result<(), RegisterRefusal> {
        let tables = self.tables();
        if !tables.accepting {
            return Err(RegisterRefusal::ShuttingDown);
        }
        if tables.live.len() >= self.max_live {
            return Err(RegisterRefusal::Limit(self.max_live));
        }
        Ok(())
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.tables().live.contains_key(id)
    }

    /// Adds a live exec, re-checking the cap and duplicates under the same lock.
    pub fn register(&self, exec: Arc<Exec>) -> Result<(), RegisterRefusal> {
        let mut tables = self.tables();
        if !tables.accepting {
            return Err(RegisterRefusal::ShuttingDown);
        }
        if tables.live.contains_key(&exec.id) {
            return Err(RegisterRefusal::Duplicate);
        }
        if tables.live.len() >= self.max_live {
            return Err(RegisterRefusal::Limit(self.max_live));
        }
        tables.live.insert(exec.id.clone(), exec);
        Ok(())
    }

    /// Moves a finished exec to the retained list, evicting the oldest beyond the cap.
    pub fn retire(&self, exec: &Arc<Exec>) {
        let mut tables = self.tables();
        if tables
            .live
            .get(&exec.id)
            .is_some_and(|e| Arc::ptr_eq(e, exec))
        {
            tables.live.remove(&exec.id);
        }
        tables.retained.retain(|e| e.id != exec.id);
        tables.retained.push_back(exec.clone());
        while tables.retained.len() > self.max_retained {
            tables.retained.pop_front();
        }
        drop(tables);
        self.retired.notify_waiters();
    }

    /// Resolves once no exec is live.
    pub async fn all_ended(&self) {
        loop {
            // Registered before the check, so a retire between the check and the await still wakes.
            let retired = self.retired.notified();
            tokio::pin!(retired);
            retired.as_mut().enable();
            if self.live_count() == 0 {
                return;
            }
            retired.await;
        }
    }

    /// The live exec with this id, else the retained one.
    pub fn get(&self, id: &str) -> Option<Arc<Exec>> {
        let tables = self.tables();
        tables
            .live
            .get(id)
            .cloned()
            .or_else(|| tables.retained.iter().rev().find(|e| e.id == id).cloned())
    }

    /// Every live and retained exec, oldest start first (`GET /execs`).
    pub fn all(&self) -> Vec<Arc<Exec>> {
        let tables = self.tables();
        let mut all: Vec<Arc<Exec>> = tables.live.values().cloned().collect();
        all.extend(
            tables
                .retained
                .iter()
                .filter(|e| !tables.live.contains_key(&e.id))
                .cloned(),
        );
        all.sort_by_key(|e| e.started_at_ms);
        all
    }

    /// Stops accepting execs and returns the live ones (shutdown).
    pub fn close(&self) -> Vec<Arc<Exec>> {
        let mut tables = self.tables();
        tables.accepting = false;
        tables.live.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::JournalBudget;
    use spool::SpoolBudget;

    fn exec(id: &str) -> Arc<Exec> {
        let budget = JournalBudget::new(SpoolBudget::new(
            std::env::temp_dir(),
            1 << 20,
            1 << 20,
            1 << 16,
        ));
        Exec::new(
            id.into(),
            Journal::new(&budget, 1024),
            1,
            Duration::from_secs(1),
            StdinMode::Close,
            None,
        )
    }

    /// Live cap, duplicates among live execs, and FIFO retention of finished ones.
    #[tokio::test]
    async fn table_rules() {
        let table = ExecTable::new(2, 2);
        let a = exec("a");
        table.register(a.clone()).unwrap();
        assert_eq!(table.register(exec("a")), Err(RegisterRefusal::Duplicate));
        let b = exec("b");
        table.register(b.clone()).unwrap();
        assert_eq!(table.register(exec("c")), Err(RegisterRefusal::Limit(2)));
        assert_eq!(table.check_capacity(), Err(RegisterRefusal::Limit(2)));
        table.retire(&a);
        assert_eq!(table.live_count(), 1);
        assert!(table.get("a").is_some());
        // A new exec may reuse the id of a finished one.
        let a2 = exec("a");
        table.register(a2.clone()).unwrap();
        assert!(Arc::ptr_eq(&table.get("a").unwrap(), &a2));
        table.retire(&b);
        for id in ["x", "y", "z"] {
            let e = exec(id);
            table.register(e.clone()).unwrap();
            table.retire(&e);
        }
        assert!(table.get("x").is_none(), "oldest retained evicted");
        assert!(table.get("z").is_some());
        assert_eq!(table.close().len(), 1);
        assert_eq!(
            table.register(exec("q")),
            Err(RegisterRefusal::ShuttingDown)
        );
    }
}

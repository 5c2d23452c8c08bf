//! PID-1 duties: the one reaper, and the signals that end the daemon.
//!
//! Ownership story. Exactly one thread owns `waitpid(-1)`: the reaper thread below, woken by SIGCHLD.
//! Every exec is spawned through [`Reaper::spawn`], which holds the process-table lock across
//! `Command::spawn` and the insertion of the child's pid; the reaper takes the same lock before it
//! calls `waitpid`, so it can never collect a child whose pid is not yet registered (and std's own
//! `waitpid` after a failed exec can never lose its child to us). A registered pid's status is sent
//! over its oneshot channel; any other pid is an orphan re-parented to us (we are PID 1 or a child
//! subreaper), reaped and counted. tokio's process module is never used: it would wait on its own
//! children and race this thread.
use super::limits::PIPE_DRAIN_GRACE;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessExit {
    /// Exited with this status code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ProcessExit {
    /// The shell convention: the exit status, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            ProcessExit::Exited(code) => code,
            ProcessExit::Signaled(signo) => 128 + signo,
        }
    }
}

/// The process table and the thread that reaps every child of this process.
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<ProcessExit>>>,
    orphans_reaped: AtomicU64,
}

impl Reaper {
    /// Registers the SIGCHLD handler and starts the reaper thread. Call once, before any spawn.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper {
            waiting: Mutex::new(HashMap::new()),
            orphans_reaped: AtomicU64::new(0),
        });
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
        let owner = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                // Children that exited before the handler was installed are collected here too.
                owner.reap_all();
                for _ in signals.forever() {
                    owner.reap_all();
                }
            })?;
        Ok(reaper)
    }

    /// Spawns `command` and registers its pid; the receiver yields its exit status. Blocking (fork +
    /// exec): call from `spawn_blocking`.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ProcessExit>)> {
        let mut waiting = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Runs `f` while `pid` (a child spawned here) is not yet reaped, holding the process table so
    /// it cannot be reaped meanwhile: until then its pid — and so the process group and session
    /// named after it — cannot be recycled. `None` when it was already reaped.
    pub fn while_unreaped<T>(&self, pid: i32, f: impl FnOnce() -> T) -> Option<T> {
        let waiting = self.lock();
        waiting.contains_key(&pid).then(f)
    }

    /// Processes re-parented to us and reaped since boot.
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<ProcessExit>>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Collects every child that has changed state; never blocks, never gives up on an error.
    fn reap_all(&self) {
        let mut waiting = self.lock();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ProcessExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ProcessExit::Signaled(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            };
            match waiting.remove(&pid.as_raw()) {
                // The receiver may be gone (driver aborted at shutdown); nothing else to do then.
                Some(tx) => drop(tx.send(exit)),
                None => {
                    self.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pid = pid.as_raw(), ?exit, "reaped orphan");
                }
            }
        }
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP. As PID 1 we have no default action for them, so without
/// these handlers `docker stop` would wait out its whole timeout.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    })
}

/// Ends the session's processes: stops accepting execs, SIGTERMs every process below runnerd (those
/// of running execs, and what finished execs left in the background), SIGKILLs what is left after
/// `grace`, then gives the drivers a moment to write their `exit` events.
pub async fn shut_down(daemon: &super::state::Daemon, grace: Duration) {
    let live = daemon.execs.close();
    tracing::info!(live_execs = live.len(), "terminating every process");
    let leaders = live.iter().filter_map(|exec| exec.leader()).collect();
    daemon.trees.end_everything(leaders, grace).await;
    let _ = tokio::time::timeout(
        PIPE_DRAIN_GRACE + Duration::from_millis(500),
        daemon.execs.all_ended(),
    )
    .await;
}

/// When not PID 1, become a child subreaper so orphans still come to our reaper.
pub fn adopt_orphans() {
    if std::process::id() == 1 {
        return;
    }
    if let Err(err) = crate::shared::sys::become_child_subreaper() {
        tracing::warn!(%err, "could not become a child subreaper; orphans will not be reaped by runnerd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signals map to 128 + the signal number, exits to their status.
    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(ProcessExit::Exited(3).exit_code(), 3);
        assert_eq!(ProcessExit::Signaled(9).exit_code(), 137);
        assert_eq!(ProcessExit::Signaled(15).exit_code(), 143);
    }
}

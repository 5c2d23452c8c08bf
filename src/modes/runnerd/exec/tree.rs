//! Finding and ending every process an exec started — also those that left its process group or
//! session (`setsid`), double-forked daemons, and orphans re-parented to runnerd.
//!
//! Two marks identify an exec's processes:
//! - **The mark group** (runnerd as root): each exec gets one supplementary group id from a reserved
//!   range. Every descendant inherits it through fork and exec, and none can drop it (execs hold no
//!   CAP_SETGID) or take another exec's. Found in the `Groups:` line of `/proc/<pid>/status`.
//! - **Session, group and parent chain** (always; the only one when runnerd is not root): processes
//!   in the exec's session or process group, or below its first process, while that process has not
//!   been reaped (its pid names the session and group only until then).
//!
//! Both are searched only below runnerd itself: runnerd is PID 1 or a child subreaper, so nothing
//! an exec starts ever leaves its subtree, and processes of other sessions on the same host (the
//! local backend shares the mark range between sessions) are never candidates.
use super::super::init::Reaper;
use crate::shared::sys::proctree::{self, ProcessInfo, RoundAction, Selector, Snapshot};
use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default first gid of the reserved mark range (`--exec-mark-gid-base`).
pub const DEFAULT_MARK_GID_BASE: u32 = 1_900_000_000;
/// Default number of gids in the range (`--exec-mark-gids`; 0 turns marks off).
pub const DEFAULT_MARK_GIDS: u32 = 65_536;
/// How often a SIGTERMed tree is looked at during the grace, to end the ladder early.
pub const TREE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Checks that runnerd can give execs the mark range `base .. base + count`: it holds CAP_SETGID
/// and its user namespace maps every gid of the range. Returns the range, or why not.
pub fn usable_marks(base: u32, count: u32) -> Result<(u32, u32), String> {
    if count == 0 {
        return Err("TALE_EXEC_MARK_GIDS is 0".into());
    }
    let end = u64::from(base) + u64::from(count);
    // (uid_t)-1 is "no change" to the kernel, never a group.
    if end > u64::from(u32::MAX) {
        return Err(format!("{base} + {count} passes the largest gid"));
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SETGID: u32 = 6;
    if cap_eff & (1 << CAP_SETGID) == 0 {
        return Err("no CAP_SETGID".into());
    }
    let map = std::fs::read_to_string("/proc/self/gid_map").map_err(|e| e.to_string())?;
    if !gid_map_covers(&map, u64::from(base), end) {
        return Err(format!(
            "gids {base}..{end} are not all mapped in this user namespace"
        ));
    }
    Ok((base, count))
}

/// Whether one line of a `gid_map` (`inside outside length`) covers `start..end`.
fn gid_map_covers(map: &str, start: u64, end: u64) -> bool {
    map.lines().any(|line| {
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(numbers[..], [inside, _, length] if inside <= start && end <= inside + length)
    })
}

/// Hands out mark gids: in order, and after the range wrapped, only gids no living process below
/// runnerd carries (a finished exec's background processes keep theirs).
struct MarkAllocator {
    base: u32,
    count: u32,
    /// Next offset, and whether the range has been used up once.
    next: Mutex<(u32, bool)>,
}

impl MarkAllocator {
    fn allocate(&self, own_pid: i32) -> Option<u32> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let in_use: HashSet<u32> = if next.1 {
            let snapshot = Snapshot::take();
            snapshot
                .descendants_of(own_pid)
                .iter()
                .flat_map(|p| p.groups.iter().copied())
                .collect()
        } else {
            HashSet::new()
        };
        for _ in 0..self.count {
            let gid = self.base + next.0;
            next.0 += 1;
            if next.0 == self.count {
                *next = (0, true);
            }
            if !in_use.contains(&gid) {
                return Some(gid);
            }
        }
        None
    }
}

/// runnerd's view of process trees.
pub struct Trees {
    reaper: Arc<Reaper>,
    /// runnerd's pid as `/proc` shows it.
    own_pid: i32,
    /// `/proc` shows runnerd's own PID namespace; without it only process groups are signalled.
    proc_usable: bool,
    marks: Option<MarkAllocator>,
}

/// How an exec's processes are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecMark {
    /// Its first process (leader of its session and group).
    pub leader: i32,
    /// Its mark group, when runnerd could give it one.
    pub gid: Option<u32>,
}

impl Trees {
    /// `marks` is `(base, count)` of the reserved gid range; pass `None` (or a count of 0) when
    /// runnerd cannot set supplementary groups.
    pub fn new(reaper: Arc<Reaper>, marks: Option<(u32, u32)>) -> Trees {
        let proc_usable = proctree::proc_matches_own_namespace();
        if !proc_usable {
            tracing::warn!("/proc does not show runnerd's PID namespace: cancel reaches only an exec's process group");
        }
        let marks = marks
            .filter(|(_, count)| *count > 0 && proc_usable)
            .map(|(base, count)| MarkAllocator {
                base,
                count,
                next: Mutex::new((0, false)),
            });
        Trees {
            reaper,
            own_pid: std::process::id() as i32,
            proc_usable,
            marks,
        }
    }

    /// Whether execs get a mark group.
    pub fn marks_enabled(&self) -> bool {
        self.marks.is_some()
    }

    /// A mark gid for a new exec (blocking after the range wrapped: it scans `/proc`).
    pub fn allocate_mark(&self) -> Option<u32> {
        let gid = self.marks.as_ref()?.allocate(self.own_pid);
        if gid.is_none() {
            tracing::warn!(
                "every exec mark gid is carried by a living process; this exec runs unmarked"
            );
        }
        gid
    }

    /// Whether the exec's first process has not been reaped yet (the exec is still running).
    pub fn is_running(&self, leader: i32) -> bool {
        self.reaper.while_unreaped(leader, || ()).is_some()
    }

    /// SIGTERM to every process of the exec, SIGKILL rounds for what is left after `grace`.
    /// Returns once nothing of it is left (or the kill rounds gave up).
    pub async fn end_exec(self: Arc<Self>, mark: ExecMark, grace: Duration) {
        if !self.proc_usable {
            return end_group(mark.leader, grace).await;
        }
        let selector = Arc::new(ExecMembers::new(self, mark));
        terminate(selector, grace).await;
    }

    /// Shutdown: SIGTERM to every process below runnerd, SIGKILL rounds for what is left after
    /// `grace` (ending early once nothing is left).
    /// Without a usable `/proc`, the process groups of `leaders` (the running execs) instead.
    pub async fn end_everything(&self, leaders: Vec<i32>, grace: Duration) {
        if !self.proc_usable {
            let mut groups = tokio::task::JoinSet::new();
            for leader in leaders {
                groups.spawn(end_group(leader, grace));
            }
            groups.join_all().await;
            return;
        }
        terminate(Arc::new(proctree::DescendantsOf(self.own_pid)), grace).await;
    }

    /// Whether no process is left below runnerd.
    pub fn nothing_left(&self) -> bool {
        !self.proc_usable || proctree::is_empty(&proctree::DescendantsOf(self.own_pid))
    }
}

/// SIGTERM, then (polling for an early end) SIGKILL rounds after `grace`. Scans run on blocking
/// threads one at a time; the waiting is async, so many cancels do not hold threads.
async fn terminate<S: Selector + Send + Sync + 'static>(selector: Arc<S>, grace: Duration) {
    let blocking = |selector: &Arc<S>, job: fn(&S) -> bool| {
        let selector = selector.clone();
        async move {
            tokio::task::spawn_blocking(move || job(&selector))
                .await
                .unwrap_or(false)
        }
    };
    blocking(&selector, |s| {
        proctree::signal_round(s, &[Signal::SIGTERM, Signal::SIGCONT]);
        false
    })
    .await;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(TREE_POLL_INTERVAL.min(deadline - now)).await;
        if blocking(&selector, |s| proctree::is_empty(s)).await {
            return;
        }
    }
    blocking(&selector, |s| {
        proctree::kill_rounds(s, proctree::KILL_ROUNDS_LIMIT)
    })
    .await;
}

/// Without a usable `/proc`: the process group only, as before.
async fn end_group(leader: i32, grace: Duration) {
    use nix::sys::signal::killpg;
    let group = nix::unistd::Pid::from_raw(leader);
    let _ = killpg(group, Signal::SIGTERM);
    tokio::time::sleep(grace).await;
    let _ = killpg(group, Signal::SIGKILL);
}

/// The processes of one exec.
struct ExecMembers {
    trees: Arc<Trees>,
    mark: ExecMark,
    /// Processes found through the leader while it was unreaped, by pid and start time (the pair
    /// names one process even if the pid is recycled). Without a mark group they are how the
    /// later rounds still reach, say, a child ignoring SIGTERM after the leader died of it.
    known: Mutex<HashMap<i32, u64>>,
}

impl ExecMembers {
    fn new(trees: Arc<Trees>, mark: ExecMark) -> ExecMembers {
        ExecMembers {
            trees,
            mark,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn has_mark(&self, p: &ProcessInfo) -> bool {
        self.mark.gid.is_some_and(|gid| p.groups.contains(&gid))
    }

    /// Whether `p` belongs to the exec, judged with `snapshot`; `leader` only while unreaped.
    fn belongs(&self, p: &ProcessInfo, leader: Option<i32>, snapshot: &Snapshot) -> bool {
        self.has_mark(p)
            || leader.is_some_and(|l| {
                p.pid == l || p.pgid == l || p.sid == l || snapshot.is_under(p.ppid, l)
            })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u64>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `p` is a process seen in an earlier round (same pid, same start time).
    fn was_seen(&self, p: &ProcessInfo) -> bool {
        let started = self.known().get(&p.pid).copied();
        started.is_some() && started == proctree::start_time(p.pid)
    }
}

impl Selector for ExecMembers {
    fn round(&self, act: &mut RoundAction<'_>) {
        let own = self.trees.own_pid;
        let mut run = |leader: Option<i32>| {
            let snapshot = Snapshot::take();
            let members: Vec<i32> = snapshot
                .descendants_of(own)
                .into_iter()
                .filter(|p| self.belongs(p, leader, &snapshot) || self.was_seen(p))
                .map(|p| p.pid)
                .collect();
            if leader.is_some() {
                let mut known = self.known();
                for &pid in &members {
                    if let Some(started) = proctree::start_time(pid) {
                        known.insert(pid, started);
                    }
                }
            }
            act(&members, &|now| {
                (now.ppid == own || snapshot.is_under(now.ppid, own))
                    && (self.belongs(now, leader, &snapshot) || self.was_seen(now))
            });
        };
        // While the leader is unreaped its pid is ours: hold the reaper so it stays so all round.
        if self
            .trees
            .reaper
            .while_unreaped(self.mark.leader, || run(Some(self.mark.leader)))
            .is_none()
        {
            run(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mark range is usable only when one mapped extent holds all of it.
    #[test]
    fn gid_map_must_cover_the_range() {
        let full = "         0          0 4294967295\n";
        assert!(gid_map_covers(full, 1_900_000_000, 1_900_065_536));
        let remapped = "0 100000 65536\n";
        assert!(!gid_map_covers(remapped, 1_900_000_000, 1_900_065_536));
        assert!(gid_map_covers(remapped, 60_000, 65_536));
        assert!(!gid_map_covers(remapped, 60_000, 65_537));
    }

    /// Marks are handed out in order; after the range wrapped, a gid a living process below
    /// runnerd still carries is skipped (here none does, so the order simply restarts).
    #[test]
    fn marks_wrap_around() {
        let allocator = MarkAllocator {
            base: 1000,
            count: 3,
            next: Mutex::new((0, false)),
        };
        let me = std::process::id() as i32;
        let got: Vec<Option<u32>> = (0..4).map(|_| allocator.allocate(me)).collect();
        assert_eq!(got, vec![Some(1000), Some(1001), Some(1002), Some(1000)]);
    }
}

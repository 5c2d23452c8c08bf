//! The processes under one ancestor, read from `/proc`, and signalling them without hitting a
//! recycled pid.
//!
//! A snapshot is not atomic: processes fork and exit while it is read. Callers therefore work in
//! rounds (scan, signal, scan again) and, right before each signal, take a [`ProcessHandle`] and
//! re-read the process's status, so the check and the signal concern the same process.
use super::pidfd::ProcessHandle;
use nix::sys::signal::Signal;
use std::collections::HashMap;

/// What `/proc/<pid>/status` says about one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    /// Process group and session as seen from this `/proc`'s PID namespace (0 when unknown).
    pub pgid: i32,
    pub sid: i32,
    /// The state letter (`R`, `S`, `D`, `T`, `Z`, …).
    pub state: u8,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

impl ProcessInfo {
    /// Reads `/proc/<pid>/status`; `None` when the process is gone.
    pub fn read(pid: i32) -> Option<ProcessInfo> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Self::parse(pid, &text))
    }

    fn parse(pid: i32, text: &str) -> ProcessInfo {
        let mut info = ProcessInfo {
            pid,
            ppid: 0,
            pgid: 0,
            sid: 0,
            state: b'?',
            groups: Vec::new(),
        };
        // The first number of an `NS…` line is the id in the namespace of this `/proc` mount.
        let first = |value: &str| {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "State" => info.state = value.trim_start().bytes().next().unwrap_or(b'?'),
                "PPid" => info.ppid = first(value),
                "NSpgid" => info.pgid = first(value),
                "NSsid" => info.sid = first(value),
                "Groups" => {
                    info.groups = value
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                }
                _ => {}
            }
        }
        info
    }

    /// Exited and waiting to be reaped (or being torn down): no signal can reach it any more.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }

    /// Stopped by a signal or a tracer: it cannot fork until it is continued.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, b'T' | b't')
    }
}

/// When `pid` started, in clock ticks after boot (`/proc/<pid>/stat` field 22): with the pid, it
/// names one process even across pid reuse. `None` when the process is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces): state is field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Every process `/proc` lists, read once.
#[derive(Debug, Default)]
pub struct Snapshot {
    processes: HashMap<i32, ProcessInfo>,
}

impl Snapshot {
    /// Reads every `/proc/<pid>/status`; processes that exit meanwhile are simply missing.
    pub fn take() -> Snapshot {
        let mut processes = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if let Some(info) = ProcessInfo::read(pid) {
                    processes.insert(pid, info);
                }
            }
        }
        Snapshot { processes }
    }

    #[cfg(test)]
    fn from_list(list: Vec<ProcessInfo>) -> Snapshot {
        Snapshot {
            processes: list.into_iter().map(|p| (p.pid, p)).collect(),
        }
    }

    pub fn get(&self, pid: i32) -> Option<&ProcessInfo> {
        self.processes.get(&pid)
    }

    /// Living (not dead) processes whose parent chain reaches `ancestor`, `ancestor` excluded.
    pub fn descendants_of(&self, ancestor: i32) -> Vec<&ProcessInfo> {
        let mut known: HashMap<i32, bool> = HashMap::new();
        known.insert(ancestor, true);
        let mut found = Vec::new();
        for info in self.processes.values() {
            if info.pid != ancestor
                && !info.is_dead()
                && self.reaches(info.pid, ancestor, &mut known)
            {
                found.push(info);
            }
        }
        found
    }

    /// Whether `pid`'s parent chain reaches `ancestor` (memoised in `known`; a chain that leaves the
    /// snapshot or loops is "no").
    fn reaches(&self, pid: i32, ancestor: i32, known: &mut HashMap<i32, bool>) -> bool {
        let mut chain = Vec::new();
        let mut at = pid;
        let answer = loop {
            if let Some(&answer) = known.get(&at) {
                break answer;
            }
            let Some(info) = self.processes.get(&at) else {
                break false;
            };
            if at == ancestor {
                break true;
            }
            if info.ppid <= 0 || chain.len() > self.processes.len() {
                break false;
            }
            chain.push(at);
            at = info.ppid;
        };
        for pid in chain {
            known.insert(pid, answer);
        }
        answer
    }

    /// Whether `pid` is `ancestor` or below it.
    pub fn is_under(&self, pid: i32, ancestor: i32) -> bool {
        let mut known = HashMap::new();
        known.insert(ancestor, true);
        self.reaches(pid, ancestor, &mut known)
    }
}

/// Takes a handle on `pid`, re-reads its status, and sends `signal` only if `still_wanted` accepts
/// what it reads now. Returns whether the signal was delivered.
pub fn signal_if(pid: i32, signal: Signal, still_wanted: impl Fn(&ProcessInfo) -> bool) -> bool {
    // Handle first, status second: if the pid was recycled in between, the handle refers to the
    // old (gone) process and the signal fails instead of reaching the newcomer.
    let Ok(handle) = ProcessHandle::open(pid) else {
        return false;
    };
    match ProcessInfo::read(pid) {
        Some(now) if !now.is_dead() && still_wanted(&now) => handle.signal(signal).is_ok(),
        _ => false,
    }
}

/// Whether this process's `/proc` shows its own PID namespace (`/proc/self` is our pid). When it
/// does not (a PID namespace without its own `/proc` mount), pids read there mean other processes.
pub fn proc_matches_own_namespace() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id())
}

/// What a round does with its members: given their pids and the check to re-apply to each right
/// before signalling it.
pub type RoundAction<'a> = dyn FnMut(&[i32], &dyn Fn(&ProcessInfo) -> bool) + 'a;

/// Which processes a cancel or shutdown is about. Each round takes a fresh snapshot.
pub trait Selector {
    /// Finds the members now and runs `act` on them, with the check to re-apply to each process
    /// right before it is signalled (the finding and the signals happen under whatever lock the
    /// selector needs to keep its criteria valid).
    fn round(&self, act: &mut RoundAction<'_>);
}

/// Every living process below one ancestor (runnerd itself at shutdown).
pub struct DescendantsOf(pub i32);

impl Selector for DescendantsOf {
    fn round(&self, act: &mut RoundAction<'_>) {
        let ancestor = self.0;
        let snapshot = Snapshot::take();
        let members: Vec<i32> = snapshot
            .descendants_of(ancestor)
            .iter()
            .map(|p| p.pid)
            .collect();
        // A recycled pid is wanted only if its parent is below the ancestor too (then it is one
        // of ours as well).
        act(&members, &|now| {
            now.ppid == ancestor || snapshot.is_under(now.ppid, ancestor)
        });
    }
}

/// Sends each of `signals` (in order) to every member; returns how many members there were.
pub fn signal_round(selector: &dyn Selector, signals: &[Signal]) -> usize {
    let mut count = 0;
    selector.round(&mut |members, still_wanted| {
        count = members.len();
        for &pid in members {
            for &signal in signals {
                signal_if(pid, signal, still_wanted);
            }
        }
    });
    count
}

/// Whether the selector finds no living member.
pub fn is_empty(selector: &dyn Selector) -> bool {
    let mut empty = false;
    selector.round(&mut |members, _| empty = members.is_empty());
    empty
}

/// SIGTERM (and SIGCONT, so a stopped process sees it) to every member; after `grace` (polled
/// every `poll`, ending early once nothing is left), [`kill_rounds`]. Blocking: run it on a
/// blocking thread. Returns whether nothing was left.
pub fn terminate(
    selector: &dyn Selector,
    grace: std::time::Duration,
    poll: std::time::Duration,
) -> bool {
    signal_round(selector, &[Signal::SIGTERM, Signal::SIGCONT]);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if is_empty(selector) {
            return true;
        }
        std::thread::sleep(poll.min(deadline - std::time::Instant::now()));
    }
    kill_rounds(selector, KILL_ROUNDS_LIMIT)
}

/// How long [`kill_rounds`] keeps going before it gives up on what is left (processes stuck in
/// uninterruptible sleep, say).
pub const KILL_ROUNDS_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Freezes, then kills, the selector's members in rounds until none is left or `limit` passes.
/// Freezing first (SIGSTOP) is what ends fork bombs: a stopped process cannot fork, so once every
/// member is stopped the set can only shrink, and SIGKILL takes them all. Processes that do not
/// stop within a quarter of `limit` (uninterruptible sleep) are killed as they are. Returns whether
/// nothing was left.
pub fn kill_rounds(selector: &dyn Selector, limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let freeze_until = start + limit / 4;
    loop {
        let mut left = 0;
        selector.round(&mut |members, still_wanted| {
            left = members.len();
            let freezing = std::time::Instant::now() < freeze_until;
            let mut all_stopped = true;
            if freezing {
                for &pid in members {
                    let stopped =
                        ProcessInfo::read(pid).is_none_or(|p| p.is_stopped() || p.is_dead());
                    if !stopped {
                        all_stopped = false;
                        signal_if(pid, Signal::SIGSTOP, still_wanted);
                    }
                }
            }
            if all_stopped || !freezing {
                for &pid in members {
                    signal_if(pid, Signal::SIGKILL, still_wanted);
                }
            }
        });
        if left == 0 {
            return true;
        }
        if start.elapsed() >= limit {
            tracing::warn!(left, "processes survived SIGKILL rounds");
            return false;
        }
        // A moment for stops to land and the killed to be torn down before the next scan.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: i32, ppid: i32, state: u8) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            state,
            groups: Vec::new(),
        }
    }

    /// The status fields runnerd relies on are parsed, `NS…` ids taken from this `/proc`'s view.
    #[test]
    fn parses_status() {
        let text = "Name:\tsleep\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t7\n\
                    Groups:\t10001 1900000003 \nNSpid:\t42\t3\nNSpgid:\t40\t1\nNSsid:\t39\t1\n";
        let parsed = ProcessInfo::parse(42, text);
        assert_eq!(
            parsed,
            ProcessInfo {
                pid: 42,
                ppid: 7,
                pgid: 40,
                sid: 39,
                state: b'S',
                groups: vec![10001, 1_900_000_003],
            }
        );
        assert!(ProcessInfo::parse(1, "State:\tZ (zombie)\nGroups:\t\n").is_dead());
        assert!(ProcessInfo::parse(1, "State:\tT (stopped)\n").is_stopped());
    }

    /// Descendants follow parent chains; zombies, strangers and the ancestor itself are left out.
    #[test]
    fn descendants_follow_parent_chains() {
        let snapshot = Snapshot::from_list(vec![
            info(1, 0, b'S'),
            info(10, 1, b'S'),
            info(11, 10, b'S'),
            info(12, 11, b'R'),
            info(13, 11, b'Z'),
            info(20, 1, b'S'),
            info(21, 99, b'S'), // parent not in the snapshot
        ]);
        let mut found: Vec<i32> = snapshot.descendants_of(10).iter().map(|p| p.pid).collect();
        found.sort();
        assert_eq!(found, vec![11, 12]);
        assert!(snapshot.is_under(12, 10));
        assert!(!snapshot.is_under(20, 10));
        assert!(!snapshot.is_under(21, 10));
    }

    /// Start times tell processes apart and stay put for one process.
    #[test]
    fn start_time_names_a_process() {
        let me = std::process::id() as i32;
        let first = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(first));
        assert!(start_time(1).is_some_and(|init| init <= first));
        assert_eq!(start_time(i32::MAX), None);
    }

    /// This test process's own children are found in a real `/proc`.
    #[test]
    fn finds_real_children() {
        assert!(proc_matches_own_namespace());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let found = Snapshot::take()
            .descendants_of(me)
            .iter()
            .any(|p| p.pid == child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found);
    }
}

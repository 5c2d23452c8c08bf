//! Connections waiting for a pre-authentication slot of their source address.
//!
//! A source may hold only so many connections that have not yet sent an authenticated request
//! (see [`super::listener`]). A spawner that opens a burst of fresh connections at once has all of
//! them "pre-auth" for the instant before their request heads are read, so refusing the ones over
//! the cap would reset a legitimate burst. Instead such a connection is parked: accepted, nothing
//! read from it, held here first in, first out per source until one of its source's pre-auth slots
//! frees (a connection authenticated or closed) or its wait runs out.
//!
//! Parked connections count against the total connection cap (each is a descriptor). So that one
//! address cannot fill that cap with parked connections and lock everyone else out, a newcomer
//! that finds the total cap reached may take the place of the newest parked connection of the
//! address parking the most, as long as that address parks more than the newcomer's would: the
//! parked places are shared fairly between the addresses that want them.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use tokio::time::Instant;

struct Parked<S> {
    item: S,
    until: Instant,
}

/// Parked items per source address, each queue oldest first.
pub struct ParkingLot<S> {
    queues: HashMap<IpAddr, VecDeque<Parked<S>>>,
}

impl<S> Default for ParkingLot<S> {
    fn default() -> Self {
        ParkingLot {
            queues: HashMap::new(),
        }
    }
}

impl<S> ParkingLot<S> {
    /// Items parked for `source`.
    pub fn len_of(&self, source: IpAddr) -> usize {
        self.queues.get(&source).map_or(0, VecDeque::len)
    }

    /// Parks `item` for `source` until `until`.
    pub fn push(&mut self, source: IpAddr, item: S, until: Instant) {
        self.queues
            .entry(source)
            .or_default()
            .push_back(Parked { item, until });
    }

    /// The oldest item of `source` still within its wait, dropping those past it (returned in
    /// `expired` for the caller to count).
    pub fn pop_oldest(&mut self, source: IpAddr, now: Instant, expired: &mut Vec<S>) -> Option<S> {
        let queue = self.queues.get_mut(&source)?;
        let mut found = None;
        while let Some(parked) = queue.pop_front() {
            if parked.until > now {
                found = Some(parked.item);
                break;
            }
            expired.push(parked.item);
        }
        if queue.is_empty() {
            self.queues.remove(&source);
        }
        found
    }

    /// Takes the newest item of the source parking the most, if that source parks more than
    /// `keep`: the place a newcomer parking `keep` items (after it) may take.
    pub fn evict_for(&mut self, keep: usize) -> Option<S> {
        let (&source, queue) = self.queues.iter_mut().max_by_key(|(_, q)| q.len())?;
        if queue.len() <= keep {
            return None;
        }
        let parked = queue.pop_back()?;
        if queue.is_empty() {
            self.queues.remove(&source);
        }
        Some(parked.item)
    }

    /// Removes every item past its wait; returns them and when the next wait ends.
    pub fn expire(&mut self, now: Instant) -> (Vec<(IpAddr, S)>, Option<Instant>) {
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        self.queues.retain(|&source, queue| {
            // Waits are all the same length, so each queue's oldest ends first.
            while queue.front().is_some_and(|p| p.until <= now) {
                let parked = queue.pop_front().expect("front checked");
                expired.push((source, parked.item));
            }
            if let Some(front) = queue.front() {
                next = Some(next.map_or(front.until, |n| n.min(front.until)));
            }
            !queue.is_empty()
        });
        (expired, next)
    }

    /// Removes everything.
    pub fn drain(&mut self) -> Vec<(IpAddr, S)> {
        self.queues
            .drain()
            .flat_map(|(source, queue)| queue.into_iter().map(move |p| (source, p.item)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Each source's queue is first in, first out; items past their wait are skipped and
    /// reported, never handed out.
    #[test]
    fn oldest_first_and_expired_skipped() {
        let now = Instant::now();
        let mut lot = ParkingLot::default();
        lot.push(ip(1), "stale", now + Duration::from_secs(1));
        lot.push(ip(1), "a", now + Duration::from_secs(5));
        lot.push(ip(1), "b", now + Duration::from_secs(6));
        lot.push(ip(2), "other", now + Duration::from_secs(5));
        let later = now + Duration::from_secs(2);
        let mut expired = Vec::new();
        assert_eq!(lot.pop_oldest(ip(1), later, &mut expired), Some("a"));
        assert_eq!(expired, ["stale"]);
        assert_eq!(lot.pop_oldest(ip(1), later, &mut expired), Some("b"));
        assert_eq!(lot.pop_oldest(ip(1), later, &mut expired), None);
        assert_eq!((lot.len_of(ip(1)), lot.len_of(ip(2))), (0, 1));
    }

    /// Eviction takes the newest item of the source parking the most, and only when that source
    /// parks more than the newcomer would.
    #[test]
    fn eviction_is_fair_between_sources() {
        let until = Instant::now() + Duration::from_secs(10);
        let mut lot = ParkingLot::default();
        for n in 0..3 {
            lot.push(ip(1), (1, n), until);
        }
        lot.push(ip(2), (2, 0), until);
        assert_eq!(lot.evict_for(3), None);
        assert_eq!(lot.evict_for(2), Some((1, 2)));
        assert_eq!(lot.evict_for(1), Some((1, 1)));
        assert_eq!(lot.evict_for(1), None, "both park one now");
        assert_eq!(lot.evict_for(0).map(|(_, n)| n), Some(0));
        assert_eq!(lot.len_of(ip(1)) + lot.len_of(ip(2)), 1);
    }

    /// `expire` removes exactly the items past their wait and names the next wait's end.
    #[test]
    fn expire_reports_the_next_deadline() {
        let now = Instant::now();
        let mut lot = ParkingLot::default();
        lot.push(ip(1), 1, now + Duration::from_secs(1));
        lot.push(ip(1), 2, now + Duration::from_secs(4));
        lot.push(ip(2), 3, now + Duration::from_secs(3));
        let (expired, next) = lot.expire(now + Duration::from_secs(2));
        assert_eq!(expired, [(ip(1), 1)]);
        assert_eq!(next, Some(now + Duration::from_secs(3)));
        assert_eq!((lot.len_of(ip(1)), lot.len_of(ip(2))), (1, 1));
        let (expired, next) = lot.expire(now + Duration::from_secs(5));
        assert_eq!(expired.len(), 2);
        assert_eq!(next, None);
        assert!(lot.queues.is_empty());
    }
}

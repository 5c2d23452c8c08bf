//! Who reads a journal, and which of those readers hold their exec back.
//!
//! A reader is *asking* while it waits inside `next_batch` (its HTTP body was polled: the bytes it
//! was handed before are written or buffered, and it wants more). Once handed a batch it is not
//! asking until its connection wants the next one. A reader that has not asked again for the
//! stall window is *stalled*: it stops holding anything back. Asking again makes it a holding
//! reader once more (from wherever it stands, a gap first if it lost something meanwhile).
use tokio::time::{Duration, Instant};

struct Slot {
    id: u64,
    /// First seq the reader has not been handed yet.
    position: u64,
    asking: bool,
    /// When the reader was last handed a batch (or registered).
    handed_at: Instant,
    /// Whether the stall was already reported (logged once per stall).
    stall_reported: bool,
}

impl Slot {
    fn stalled(&self, now: Instant, window: Duration) -> bool {
        !self.asking && now.saturating_duration_since(self.handed_at) >= window
    }
}

/// The readers of one journal.
#[derive(Default)]
pub struct Readers {
    slots: Vec<Slot>,
    next_id: u64,
}

impl Readers {
    /// Registers a reader that needs everything from `position` on; returns its id.
    pub fn add(&mut self, position: u64, now: Instant) -> u64 {
        self.next_id += 1;
        self.slots.push(Slot {
            id: self.next_id,
            position,
            asking: false,
            handed_at: now,
            stall_reported: false,
        });
        self.next_id
    }

    pub fn remove(&mut self, id: u64) {
        self.slots.retain(|s| s.id != id);
    }

    /// The reader wants more, from `position`.
    pub fn asking(&mut self, id: u64, position: u64) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
            slot.asking = true;
            slot.position = position;
            slot.stall_reported = false;
        }
    }

    /// The reader was handed everything before `position`.
    pub fn handed(&mut self, id: u64, position: u64, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
            slot.asking = false;
            slot.position = position;
            slot.handed_at = now;
        }
    }

    /// The lowest seq a reader that keeps reading has not been handed: nothing at or after it
    /// may be evicted. `None` when no reader holds anything.
    pub fn hold(&mut self, now: Instant, window: Duration) -> Option<u64> {
        let mut hold = None::<u64>;
        for slot in &mut self.slots {
            if slot.stalled(now, window) {
                if !slot.stall_reported {
                    slot.stall_reported = true;
                    tracing::info!(
                        from_seq = slot.position,
                        "a reader consumed nothing for the stall window; it no longer holds its exec back"
                    );
                }
                continue;
            }
            hold = Some(hold.map_or(slot.position, |h| h.min(slot.position)));
        }
        hold
    }

    /// When the next holding reader that is not asking would become stalled.
    pub fn next_stall(&self, now: Instant, window: Duration) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| !s.stalled(now, window) && !s.asking)
            .map(|s| s.handed_at + window)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hold is the slowest non-stalled reader; a reader that stops asking stalls after the
    /// window and holds nothing; asking again restores its hold.
    #[test]
    fn hold_follows_the_slowest_reader_that_keeps_reading() {
        let window = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut readers = Readers::default();
        assert_eq!(readers.hold(t0, window), None);
        let fast = readers.add(1, t0);
        let slow = readers.add(1, t0);
        readers.handed(fast, 500, t0);
        readers.handed(slow, 10, t0);
        assert_eq!(readers.hold(t0, window), Some(10));
        assert_eq!(readers.next_stall(t0, window), Some(t0 + window));
        let later = t0 + window;
        readers.asking(fast, 500);
        assert_eq!(
            readers.hold(later, window),
            Some(500),
            "the slow one stalled"
        );
        assert_eq!(readers.next_stall(later, window), None);
        readers.asking(slow, 10);
        assert_eq!(
            readers.hold(later, window),
            Some(10),
            "asking again holds again"
        );
        readers.remove(slow);
        readers.remove(fast);
        assert_eq!(readers.hold(later, window), None);
    }
}

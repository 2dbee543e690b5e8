//! The shard's timer structure: the next deadline of every connection, and the earliest of
//! them, in O(log n) per change.
//!
//! A connection's deadline moves on almost every packet (the idle timer restarts), and
//! nearly always later. A binary heap with one entry per change would grow by one entry per
//! packet; so the heap is *lazy*: each slot keeps its real deadline (`due`) and the time of
//! its one live heap entry (`queued`, never later than `due`). Moving a deadline later only
//! updates `due`; when the early entry reaches the top it is re-pushed at the real deadline
//! ([`TimerHeap::next`] does this, so the driver never wakes for nothing). Moving it earlier
//! pushes a new entry and leaves the old one to be skipped as stale. When stale entries
//! outnumber the live slots the heap is rebuilt from the slots, so it stays O(slots).
//!
//! Slots are connection indices (quinn-proto's `ConnectionHandle.0`). The structure knows
//! nothing of connections or clocks: times are passed in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Stale entries tolerated beyond twice the live slots before a rebuild.
const REBUILD_SLACK: usize = 1024;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// The real deadline.
    due: Option<Instant>,
    /// The time of this slot's live heap entry (`<= due` whenever both are set).
    queued: Option<Instant>,
}

/// Deadlines by slot, with the earliest found cheaply.
#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    slots: Vec<Slot>,
    /// Slots with a deadline.
    armed: usize,
}

impl TimerHeap {
    /// An empty structure.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets (or with `None` clears) the deadline of `slot`.
    pub(crate) fn set(&mut self, slot: usize, due: Option<Instant>) {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Slot::default());
        }
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        match (s.due.is_some(), due.is_some()) {
            (false, true) => self.armed += 1,
            (true, false) => self.armed -= 1,
            _ => {}
        }
        s.due = due;
        let Some(at) = due else {
            // The live entry, if any, is dropped as stale when it surfaces.
            return;
        };
        if s.queued.is_none_or(|q| at < q) {
            // Only an earlier deadline needs an entry; a later one is found when the
            // current entry surfaces.
            s.queued = Some(at);
            self.heap.push(Reverse((at, slot)));
            if self.heap.len() > 2 * self.armed + REBUILD_SLACK {
                self.rebuild();
            }
        }
    }

    /// The deadline of `slot`.
    #[cfg(test)]
    pub(crate) fn get(&self, slot: usize) -> Option<Instant> {
        self.slots.get(slot).and_then(|s| s.due)
    }

    /// The earliest deadline of any slot. Settles the top of the heap: stale entries are
    /// dropped and an entry whose slot's deadline moved later is moved to that deadline.
    pub(crate) fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, slot))) = self.heap.peek().copied() {
            let Some(s) = self.slots.get_mut(slot) else {
                self.heap.pop();
                continue;
            };
            if s.queued != Some(at) {
                self.heap.pop();
                continue;
            }
            match s.due {
                Some(t) if t > at => {
                    self.heap.pop();
                    s.queued = Some(t);
                    self.heap.push(Reverse((t, slot)));
                }
                Some(_) => return Some(at),
                None => {
                    self.heap.pop();
                    s.queued = None;
                }
            }
        }
        None
    }

    /// Takes one slot whose deadline is at or before `now`, earliest first, and clears its
    /// deadline. `None` when nothing is due.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let at = self.next()?;
        if at > now {
            return None;
        }
        let Reverse((_, slot)) = self.heap.pop()?;
        if let Some(s) = self.slots.get_mut(slot) {
            s.queued = None;
            if s.due.take().is_some() {
                self.armed -= 1;
            }
        }
        Some(slot)
    }

    /// Heap entries, live and stale (for tests of the bound).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }

    fn rebuild(&mut self) {
        self.heap.clear();
        for (i, s) in self.slots.iter_mut().enumerate() {
            s.queued = s.due;
            if let Some(t) = s.due {
                self.heap.push(Reverse((t, i)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// The trivially correct model: a map from slot to deadline, scanned for the minimum.
    #[derive(Default)]
    struct Model {
        due: BTreeMap<usize, Instant>,
    }

    impl Model {
        fn set(&mut self, slot: usize, due: Option<Instant>) {
            match due {
                Some(t) => self.due.insert(slot, t),
                None => self.due.remove(&slot),
            };
        }
        fn next(&self) -> Option<Instant> {
            self.due.values().min().copied()
        }
    }

    #[test]
    fn matches_model_under_random_operations() {
        let base = Instant::now();
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut real = TimerHeap::new();
            let mut model = Model::default();
            let slots = rng.random_range(1..40usize);
            let mut now = base;
            for step in 0..2_000 {
                match rng.random_range(0..10u32) {
                    // Mostly later deadlines (idle timers restarting), some earlier ones.
                    0..=5 => {
                        let slot = rng.random_range(0..slots);
                        let at = now + Duration::from_millis(rng.random_range(0..5_000));
                        real.set(slot, Some(at));
                        model.set(slot, Some(at));
                    }
                    6 => {
                        let slot = rng.random_range(0..slots);
                        real.set(slot, None);
                        model.set(slot, None);
                    }
                    7 => assert_eq!(real.next(), model.next(), "seed {seed} step {step}"),
                    _ => {
                        now += Duration::from_millis(rng.random_range(0..1_000));
                        let mut fired = Vec::new();
                        let mut last = None;
                        while let Some(slot) = real.pop_due(now) {
                            let at = model.due.remove(&slot);
                            let at = at.unwrap_or_else(|| {
                                panic!("seed {seed} step {step}: slot {slot} fired unarmed")
                            });
                            assert!(at <= now, "seed {seed} step {step}: fired early");
                            assert!(last <= Some(at), "seed {seed} step {step}: out of order");
                            last = Some(at);
                            fired.push(slot);
                        }
                        assert!(
                            model.due.values().all(|&t| t > now),
                            "seed {seed} step {step}: a due slot was not fired"
                        );
                    }
                }
                for slot in 0..slots {
                    assert_eq!(real.get(slot), model.due.get(&slot).copied());
                }
                assert!(real.entries() <= 2 * slots + REBUILD_SLACK + 1);
            }
        }
    }

    #[test]
    fn later_deadline_adds_no_entry() {
        let t0 = Instant::now();
        let mut h = TimerHeap::new();
        h.set(3, Some(t0 + Duration::from_secs(1)));
        for i in 2..1000 {
            h.set(3, Some(t0 + Duration::from_secs(i)));
        }
        assert_eq!(h.entries(), 1);
        assert_eq!(h.next(), Some(t0 + Duration::from_secs(999)));
        assert_eq!(h.pop_due(t0 + Duration::from_secs(998)), None);
        assert_eq!(h.pop_due(t0 + Duration::from_secs(999)), Some(3));
        assert_eq!(h.next(), None);
    }
}

//! The byte budget of cross-shard forwarding: how many bytes of datagrams may wait in a
//! shard's inbox, whichever shards sent them.
//!
//! A datagram whose connection lives on another shard waits in that shard's inbox until
//! its thread gets to it. The inbox's message count bounds nothing useful (a message is a
//! batch of up to 64 datagrams of up to 64 KiB each), so each shard has a budget in bytes,
//! shared by every shard forwarding to it: a sender reserves a batch's bytes before it
//! queues the batch, and the bytes come back when the batch is dropped, which is after the
//! owner has fed it to its endpoint (or when a full queue refuses it). Datagrams beyond the
//! budget are dropped and counted (`forward_dropped`), as a full socket buffer would drop
//! them: QUIC retransmits, and a flood aimed through one shard at another cannot grow the
//! owner's memory.
//!
//! This module does not route, queue or send; `state.rs` seals batches against the budget
//! and the driver moves them.

use crate::shard::Forwarded;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What one forwarded datagram costs its owner's budget besides its bytes: the
/// [`Forwarded`] record that carries it.
pub(crate) const PER_DATAGRAM: usize = std::mem::size_of::<Forwarded>();

/// One shard's count of bytes waiting, on a cache line of its own (its senders and its
/// receiver write it; other shards' counts stay off that line).
#[derive(Default)]
#[repr(align(128))]
struct Queued(AtomicUsize);

/// The inbox budgets of every shard of a process; cheap to clone, one per shard state.
#[derive(Clone)]
pub(crate) struct ForwardBudget {
    queued: Arc<[Queued]>,
    limit: usize,
}

impl ForwardBudget {
    /// Budgets of `limit` bytes for each of `shards` inboxes.
    pub(crate) fn new(shards: usize, limit: usize) -> Self {
        Self {
            queued: (0..shards).map(|_| Queued::default()).collect(),
            limit,
        }
    }

    /// Bytes of forwarded datagrams waiting for `owner` (reserved, not yet given back).
    #[cfg(test)]
    pub(crate) fn queued(&self, owner: usize) -> usize {
        self.queued
            .get(owner)
            .map_or(0, |q| q.0.load(Ordering::Relaxed))
    }

    /// The budget of each inbox, in bytes.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Reserves up to `want` bytes of `owner`'s budget; returns the bytes granted.
    ///
    /// Wait-free: the add claims a range, and the part of it past the limit is given back.
    /// Concurrent senders may each be granted less than is free (a sender sees the others'
    /// claims before they give back their excess), never more: granted bytes stay within
    /// the limit.
    fn reserve(&self, owner: usize, want: usize) -> usize {
        let Some(q) = self.queued.get(owner) else {
            return 0;
        };
        let before = q.0.fetch_add(want, Ordering::AcqRel);
        let granted = want.min(self.limit.saturating_sub(before));
        if granted < want {
            q.0.fetch_sub(want - granted, Ordering::AcqRel);
        }
        granted
    }

    fn release(&self, owner: usize, bytes: usize) {
        if let Some(q) = self.queued.get(owner) {
            q.0.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Reserves `datagrams` against `owner`'s budget: the datagrams that fit, in order,
    /// holding their bytes until the batch is dropped, and how many did not fit.
    pub(crate) fn seal(
        &self,
        owner: usize,
        mut datagrams: Vec<Forwarded>,
    ) -> (Option<ForwardBatch>, usize) {
        let want: usize = datagrams.iter().map(cost).sum();
        let granted = self.reserve(owner, want);
        let mut used = 0;
        let keep = datagrams
            .iter()
            .take_while(|d| {
                used += cost(d);
                used <= granted
            })
            .count();
        let kept: usize = datagrams.iter().take(keep).map(cost).sum();
        if kept < granted {
            self.release(owner, granted - kept);
        }
        let dropped = datagrams.len() - keep;
        datagrams.truncate(keep);
        if datagrams.is_empty() {
            return (None, dropped);
        }
        let batch = ForwardBatch {
            datagrams,
            credit: Some(Credit {
                budget: self.clone(),
                owner,
                bytes: kept,
            }),
        };
        (Some(batch), dropped)
    }
}

/// What a datagram costs its owner's budget.
fn cost(d: &Forwarded) -> usize {
    d.data.len() + PER_DATAGRAM
}

/// Datagrams handed from the shard that received them to the shard that owns their
/// connection. Their bytes count against the owner's inbox budget until the batch is
/// dropped.
#[derive(Default)]
pub struct ForwardBatch {
    datagrams: Vec<Forwarded>,
    credit: Option<Credit>,
}

impl std::fmt::Debug for ForwardBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardBatch")
            .field("datagrams", &self.datagrams.len())
            .field("bytes", &self.credit.as_ref().map_or(0, |c| c.bytes))
            .finish()
    }
}

impl ForwardBatch {
    /// How many datagrams the batch carries.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// True when the batch carries no datagram (a wake-up).
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Takes the datagrams out; the bytes stay reserved until the batch is dropped, so the
    /// owner gives them back once it has fed them to its endpoint.
    pub(crate) fn take(&mut self) -> Vec<Forwarded> {
        std::mem::take(&mut self.datagrams)
    }
}

/// A batch's share of its owner's budget, given back on drop however the batch ends
/// (handled, refused by a full queue, left in the queue of a shard that exited).
struct Credit {
    budget: ForwardBudget,
    owner: usize,
    bytes: usize,
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.budget.release(self.owner, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn datagram(len: usize) -> Forwarded {
        Forwarded {
            remote: "127.0.0.1:1".parse().unwrap(),
            local_ip: None,
            ecn: None,
            data: Bytes::from(vec![0; len]),
        }
    }

    #[test]
    fn batches_past_the_budget_are_trimmed_and_bytes_come_back_on_drop() {
        let unit = 1000 + PER_DATAGRAM;
        let budget = ForwardBudget::new(2, 3 * unit);
        let (a, dropped) = budget.seal(1, (0..2).map(|_| datagram(1000)).collect());
        assert_eq!((a.as_ref().map(ForwardBatch::len), dropped), (Some(2), 0));
        // Only one more datagram fits the 3-datagram budget.
        let (b, dropped) = budget.seal(1, (0..4).map(|_| datagram(1000)).collect());
        assert_eq!((b.as_ref().map(ForwardBatch::len), dropped), (Some(1), 3));
        assert_eq!(budget.queued(1), 3 * unit);
        // Full: nothing is granted, and the other shard's budget is untouched.
        let (c, dropped) = budget.seal(1, vec![datagram(1)]);
        assert!(c.is_none());
        assert_eq!(dropped, 1);
        assert_eq!(budget.queued(0), 0);
        drop(a);
        assert_eq!(budget.queued(1), unit);
        drop(b);
        assert_eq!(budget.queued(1), 0);
    }

    #[test]
    fn concurrent_senders_never_exceed_the_budget() {
        let budget = ForwardBudget::new(1, 100 * (100 + PER_DATAGRAM));
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let (b, _) = budget.seal(0, (0..3).map(|_| datagram(100)).collect());
                        if let Some(b) = b {
                            held.lock().unwrap().push(b);
                        }
                    }
                });
            }
        });
        let mut held = held.into_inner().unwrap();
        let total: usize = held.iter().map(ForwardBatch::len).sum();
        assert!(
            total <= 100,
            "{total} datagrams held within a 100-datagram budget"
        );
        // Racing senders may leave room unclaimed, never claim too much: alone, a sender
        // gets exactly the rest.
        let (rest, _) = budget.seal(0, (0..200).map(|_| datagram(100)).collect());
        assert_eq!(total + rest.as_ref().map_or(0, ForwardBatch::len), 100);
        assert_eq!(budget.queued(0), budget.limit());
        held.extend(rest);
        drop(held);
        assert_eq!(budget.queued(0), 0);
    }
}

//! What all shards of a process know about each source and each peer: handshakes in
//! flight per source, connections per anonymous source and per peer, Retry tokens already
//! used, and the penalties. One [`SharedAdmission`] per process, read and written by every
//! shard; the admission decision itself is `admit.rs`'s job.
//!
//! Everything a connection attempt touches is a fixed-size array of atomics indexed by a
//! keyed hash (SipHash with a per-process random key, so a sender cannot choose its slot):
//! no lock and no allocation per attempt. Two sources whose keys land in one slot share its
//! count, which only makes the cap stricter for that pair (with 16 384 slots, a given source
//! shares its slot with another active one with probability `active / 16 384`). Peers are
//! counted exactly, in a map locked once when a connection is established and once when it
//! ends (the session board is locked at the same moments).
//!
//! Every count taken is a [`Held`] guard that gives it back when dropped, so a connection
//! that completes, fails, times out or is dropped with its shard releases it exactly once.

use crate::shard::penalty::{Penalties, SourceKey};
use quinn_proto::ConnectionId;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Slots of the per-source tables (a power of two; 4 bytes each).
const SOURCE_SLOTS: usize = 16_384;
/// Slots of the used-token table (a power of two; 8 bytes each).
const TOKEN_SLOTS: usize = 16_384;

/// The process-wide admission state. See the module doc.
#[derive(Debug)]
pub(crate) struct SharedAdmission {
    /// Penalties for failed handshakes and authentication.
    pub(crate) penalties: Penalties,
    hasher: std::collections::hash_map::RandomState,
    handshakes: Box<[AtomicU32]>,
    anonymous: Box<[AtomicU32]>,
    tokens: Box<[AtomicU64]>,
    peers: Mutex<HashMap<String, u32>>,
}

/// A source's slot in the per-source tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SourceSlot(usize);

/// A Retry token's place in the used-token table and its tag there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenMark {
    slot: usize,
    tag: u64,
}

/// One count held in a [`SharedAdmission`] table, given back on drop.
#[derive(Debug)]
pub(crate) struct Held {
    shared: Arc<SharedAdmission>,
    what: HeldKind,
}

#[derive(Debug)]
enum HeldKind {
    Handshake(SourceSlot),
    Anonymous(SourceSlot),
    Peer(String),
}

impl Drop for Held {
    fn drop(&mut self) {
        let release = |t: &[AtomicU32], SourceSlot(i): SourceSlot| {
            if let Some(c) = t.get(i) {
                // Never below zero, whatever happens: saturate instead of wrapping.
                let _ = c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
            }
        };
        match &self.what {
            HeldKind::Handshake(s) => release(&self.shared.handshakes, *s),
            HeldKind::Anonymous(s) => release(&self.shared.anonymous, *s),
            HeldKind::Peer(p) => {
                let mut m = match self.shared.peers.lock() {
                    Ok(m) => m,
                    Err(e) => e.into_inner(),
                };
                if let Some(n) = m.get_mut(p.as_str()) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(p.as_str());
                    }
                }
            }
        }
    }
}

/// Takes one count in `t[slot]` if it is below `cap`; the count after taking it.
fn take(t: &[AtomicU32], SourceSlot(i): SourceSlot, cap: u32) -> Option<u32> {
    let c = t.get(i)?;
    c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        (v < cap).then_some(v + 1)
    })
    .ok()
    .map(|v| v + 1)
}

impl SharedAdmission {
    /// Empty tables; penalties after `free_failures` failures (see `penalty.rs`), `epoch`
    /// no later than the first `now` any shard passes in.
    pub(crate) fn new(epoch: Instant, free_failures: u32) -> Self {
        let table = |n| (0..n).map(|_| AtomicU32::new(0)).collect();
        Self {
            penalties: Penalties::new(epoch, free_failures),
            hasher: Default::default(),
            handshakes: table(SOURCE_SLOTS),
            anonymous: table(SOURCE_SLOTS),
            tokens: (0..TOKEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The slot of the source `addr` belongs to (IPv4 /32, IPv6 /64).
    pub(crate) fn source(&self, addr: SocketAddr) -> SourceSlot {
        let h = self.hasher.hash_one(SourceKey::of(addr.ip()));
        SourceSlot((h as usize) & (SOURCE_SLOTS - 1))
    }

    /// Handshakes in flight from the source of `slot` (and any source sharing it).
    pub(crate) fn handshakes(&self, SourceSlot(i): SourceSlot) -> u32 {
        self.handshakes
            .get(i)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Takes a handshake slot for the source unless it already has `cap` in flight; the
    /// guard and the source's count with it.
    pub(crate) fn begin_handshake(
        self: &Arc<Self>,
        slot: SourceSlot,
        cap: u32,
    ) -> Option<(Held, u32)> {
        let n = take(&self.handshakes, slot, cap)?;
        Some((
            Held {
                shared: self.clone(),
                what: HeldKind::Handshake(slot),
            },
            n,
        ))
    }

    /// Takes a connection of an anonymous source unless it already holds `cap`.
    pub(crate) fn hold_anonymous(self: &Arc<Self>, slot: SourceSlot, cap: u32) -> Option<Held> {
        take(&self.anonymous, slot, cap)?;
        Some(Held {
            shared: self.clone(),
            what: HeldKind::Anonymous(slot),
        })
    }

    /// Takes a connection of `peer` unless it already holds `cap` on all shards.
    pub(crate) fn hold_peer(self: &Arc<Self>, peer: &str, cap: u32) -> Option<Held> {
        {
            let mut m = match self.peers.lock() {
                Ok(m) => m,
                Err(e) => e.into_inner(),
            };
            let n = m.entry(peer.to_owned()).or_insert(0);
            if *n >= cap {
                return None;
            }
            *n += 1;
        }
        Some(Held {
            shared: self.clone(),
            what: HeldKind::Peer(peer.to_owned()),
        })
    }

    /// Connections `peer` holds on all shards.
    #[cfg(test)]
    pub(crate) fn peer_connections(&self, peer: &str) -> u32 {
        match self.peers.lock() {
            Ok(m) => m.get(peer).copied().unwrap_or(0),
            Err(e) => e.into_inner().get(peer).copied().unwrap_or(0),
        }
    }

    /// Where the Retry token that validated an attempt is remembered: by the original
    /// destination CID it carries (the same in every replay of one token, whatever DCID the
    /// replay uses) and the address it was issued to.
    pub(crate) fn token_mark(&self, orig_dst_cid: &ConnectionId, remote: SocketAddr) -> TokenMark {
        let h = self.hasher.hash_one((&orig_dst_cid[..], remote));
        TokenMark {
            slot: (h as usize) & (TOKEN_SLOTS - 1),
            // Zero marks an empty slot.
            tag: h.max(1),
        }
    }

    /// True when the token was already used to start a handshake. A token pushed out of its
    /// slot by a later one is forgotten (a false "unused"): a replay of it is then still
    /// held to the per-source handshake cap. A genuine token is never reported used.
    pub(crate) fn token_used(&self, m: TokenMark) -> bool {
        self.tokens
            .get(m.slot)
            .is_some_and(|s| s.load(Ordering::Acquire) == m.tag)
    }

    /// Marks the token used; false when another shard marked it first (a replay racing the
    /// original).
    pub(crate) fn use_token(&self, m: TokenMark) -> bool {
        self.tokens
            .get(m.slot)
            .is_some_and(|s| s.swap(m.tag, Ordering::AcqRel) != m.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn handshake_cap_is_per_source_and_given_back_on_drop() {
        let s = Arc::new(SharedAdmission::new(Instant::now(), 5));
        let a = s.source(addr("192.0.2.1:1000"));
        // Another port of the same host is the same source; a /64 neighbour too.
        assert_eq!(a, s.source(addr("192.0.2.1:2000")));
        assert_eq!(
            s.source(addr("[2001:db8::1]:1")),
            s.source(addr("[2001:db8::ffff:1]:2"))
        );
        let held: Vec<_> = (0..3).map(|_| s.begin_handshake(a, 3).unwrap()).collect();
        assert_eq!(held.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(
            s.begin_handshake(a, 3).is_none(),
            "max_handshakes_per_source"
        );
        assert_eq!(s.handshakes(a), 3);
        drop(held);
        assert_eq!(s.handshakes(a), 0);
        assert!(s.begin_handshake(a, 3).is_some());
    }

    #[test]
    fn peer_and_anonymous_caps() {
        let s = Arc::new(SharedAdmission::new(Instant::now(), 5));
        let p1 = s.hold_peer("alice", 2).unwrap();
        let _p2 = s.hold_peer("alice", 2).unwrap();
        assert!(
            s.hold_peer("alice", 2).is_none(),
            "max_connections_per_peer"
        );
        assert!(s.hold_peer("bob", 2).is_some());
        drop(p1);
        assert_eq!(s.peer_connections("alice"), 1);
        assert!(s.hold_peer("alice", 2).is_some());
        let a = s.source(addr("198.51.100.4:1"));
        let h = s.hold_anonymous(a, 1).unwrap();
        assert!(s.hold_anonymous(a, 1).is_none());
        drop(h);
        assert!(s.hold_anonymous(a, 1).is_some());
    }

    #[test]
    fn a_token_is_used_once() {
        let s = SharedAdmission::new(Instant::now(), 5);
        let odcid = ConnectionId::new(&[7; 8]);
        let m = s.token_mark(&odcid, addr("192.0.2.1:4000"));
        assert!(!s.token_used(m));
        assert!(s.use_token(m));
        assert!(s.token_used(m));
        assert!(!s.use_token(m), "a replay racing the original loses");
        // The same CID from another address is another token.
        let other = s.token_mark(&odcid, addr("192.0.2.1:4001"));
        assert!(!s.token_used(other));
    }
}

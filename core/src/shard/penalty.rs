//! Per-source penalties for failed handshakes and failed authentication.
//!
//! Repeated failures from one source are dropped before any TLS work, for a penalty that
//! starts at 15 s and doubles with each further offence up to 10 min. Sources are grouped
//! as IPv4 /32 and IPv6 /64 (one host usually owns a whole /64): [`SourceKey`].
//!
//! Two tables, so that the question every shard asks of every connection attempt ("is this
//! source penalised?") never takes a lock:
//!
//! * [`PenaltyBox`], the failure counts and offences, touched only when a failure is
//!   recorded (under the mutex in [`Penalties`]; each failure already cost the sender a
//!   TLS handshake). It is a fixed-size two-way set-associative table: a source has two
//!   candidate slots chosen by a keyed hash, and when both hold other sources the one whose
//!   penalty or window ended first is evicted, so a lookup and an insert are O(1) however
//!   full it is (a full table with a scan for the earliest expiry would make every new
//!   source's failure cost a 65 536-entry scan under the lock).
//! * The *blocked* table in [`Penalties`], one `AtomicU64` per slot holding a tag of the
//!   source and the end of its penalty: [`Penalties::is_blocked`] is one relaxed load.
//!   Two penalised sources in one slot keep only the later one (the other is let through
//!   early and earns its penalty again with its next failures); an innocent source is
//!   blocked only if it shares slot *and* the 24-bit tag with a penalised one. The hash is
//!   keyed per process, so a sender cannot choose its slot.
//!
//! Sans-IO: every call takes `now`; the shard supplies the clock.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures tolerated within [`WINDOW`] before the first penalty, by default.
pub const FREE_FAILURES: u32 = 5;
/// Window in which failures are counted.
pub const WINDOW: Duration = Duration::from_secs(60);
/// First penalty.
pub const FIRST_PENALTY: Duration = Duration::from_secs(15);
/// Longest penalty.
pub const MAX_PENALTY: Duration = Duration::from_secs(600);
/// Sources whose failures are tracked at most (a power of two).
pub const MAX_SOURCES: usize = 65_536;
/// Slots of the lock-free blocked table (a power of two; 8 bytes each).
const BLOCKED_SLOTS: usize = 65_536;
/// Bits of a blocked slot holding the penalty's end (milliseconds since the table's epoch:
/// 34 years); the rest hold the source's tag.
const UNTIL_BITS: u32 = 40;

/// The group an address is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 host.
    V4([u8; 4]),
    /// An IPv6 /64.
    V6([u8; 8]),
}

impl SourceKey {
    /// The group of `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&o[..8]);
                    Self::V6(p)
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: SourceKey,
    failures: u32,
    window_start: Instant,
    offences: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    /// When this entry last mattered: the end of its penalty or the start of its window.
    fn quiet_since(&self) -> Instant {
        self.blocked_until
            .map_or(self.window_start, |b| b.max(self.window_start))
    }
}

/// The failure table: counts, offences and penalties per source, bounded, O(1) per call.
#[derive(Debug)]
pub struct PenaltyBox {
    hasher: std::collections::hash_map::RandomState,
    free_failures: u32,
    capacity: usize,
    /// Allocated at the first failure (most servers never see one).
    slots: Vec<Option<Entry>>,
}

impl Default for PenaltyBox {
    fn default() -> Self {
        Self::new()
    }
}

impl PenaltyBox {
    /// An empty table of [`MAX_SOURCES`] sources, penalising after [`FREE_FAILURES`].
    pub fn new() -> Self {
        Self::with_limits(MAX_SOURCES, FREE_FAILURES)
    }

    /// An empty table of `capacity` sources (rounded up to a power of two), penalising
    /// after `free_failures` failures within [`WINDOW`].
    pub fn with_limits(capacity: usize, free_failures: u32) -> Self {
        Self {
            hasher: Default::default(),
            free_failures,
            capacity: capacity.max(2).next_power_of_two(),
            slots: Vec::new(),
        }
    }

    fn candidates(&self, key: &SourceKey) -> [usize; 2] {
        let h = self.hasher.hash_one(key);
        let mask = self.capacity - 1;
        [(h as usize) & mask, ((h >> 32) as usize) & mask]
    }

    fn find(&self, key: &SourceKey) -> Option<&Entry> {
        self.candidates(key)
            .into_iter()
            .filter_map(|i| self.slots.get(i).and_then(|s| s.as_ref()))
            .find(|e| e.key == *key)
    }

    /// The slot `key` lives in, or the one it takes (empty, or the staler of its two).
    fn slot_for(&mut self, key: &SourceKey) -> usize {
        if self.slots.is_empty() {
            self.slots = vec![None; self.capacity];
        }
        let [a, b] = self.candidates(key);
        let at = |i: usize| self.slots.get(i).copied().flatten();
        match (at(a), at(b)) {
            (Some(e), _) if e.key == *key => a,
            (_, Some(e)) if e.key == *key => b,
            (None, _) => a,
            (_, None) => b,
            (Some(x), Some(y)) => {
                if x.quiet_since() <= y.quiet_since() {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// True when packets from `ip` must be dropped now.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.find(&SourceKey::of(ip))
            .and_then(|e| e.blocked_until)
            .is_some_and(|t| t > now)
    }

    /// Records a failure; returns the penalty started by it, if any.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = SourceKey::of(ip);
        let i = self.slot_for(&key);
        let free = self.free_failures;
        let slot = self.slots.get_mut(i)?;
        let fresh = Entry {
            key,
            failures: 0,
            window_start: now,
            offences: 0,
            blocked_until: None,
        };
        let e = match slot {
            Some(e) if e.key == key => e,
            _ => slot.insert(fresh),
        };
        if now.saturating_duration_since(e.window_start) > WINDOW {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures <= free {
            return None;
        }
        let shift = e.offences.min(10);
        let penalty = FIRST_PENALTY.saturating_mul(1u32 << shift).min(MAX_PENALTY);
        e.offences = e.offences.saturating_add(1);
        e.failures = 0;
        e.window_start = now;
        e.blocked_until = Some(now + penalty);
        Some(penalty)
    }

    /// Sources tracked (a scan; for tests and diagnostics, not the hot path).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The penalties of one process, shared by every shard: a lock-free blocked table read on
/// every connection attempt, and the failure table behind a mutex taken only on failure.
#[derive(Debug)]
pub struct Penalties {
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    blocked: Box<[AtomicU64]>,
    table: Mutex<PenaltyBox>,
}

impl Penalties {
    /// Empty tables penalising after `free_failures` failures within [`WINDOW`]; `epoch`
    /// is any instant not after the first `now` passed in.
    pub fn new(epoch: Instant, free_failures: u32) -> Self {
        Self {
            hasher: Default::default(),
            epoch,
            blocked: (0..BLOCKED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            table: Mutex::new(PenaltyBox::with_limits(MAX_SOURCES, free_failures)),
        }
    }

    fn slot(&self, key: &SourceKey) -> (usize, u64) {
        let h = self.hasher.hash_one(key);
        // The tag is never zero, so an empty slot matches no source.
        let tag = (h >> UNTIL_BITS).max(1);
        ((h as usize) & (BLOCKED_SLOTS - 1), tag)
    }

    fn millis(&self, t: Instant) -> u64 {
        let ms = t.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms)
            .unwrap_or(u64::MAX)
            .min((1 << UNTIL_BITS) - 1)
    }

    /// True when connection attempts from `ip` must be dropped now. Lock-free: one load.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let (i, tag) = self.slot(&SourceKey::of(ip));
        let Some(v) = self.blocked.get(i).map(|s| s.load(Ordering::Relaxed)) else {
            return false;
        };
        v >> UNTIL_BITS == tag && v & ((1 << UNTIL_BITS) - 1) > self.millis(now)
    }

    /// Records a failed handshake or authentication; returns the penalty started by it.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let penalty = match self.table.lock() {
            Ok(mut t) => t.record_failure(ip, now),
            Err(p) => p.into_inner().record_failure(ip, now),
        }?;
        let (i, tag) = self.slot(&SourceKey::of(ip));
        if let Some(s) = self.blocked.get(i) {
            s.store(
                tag << UNTIL_BITS | self.millis(now + penalty),
                Ordering::Relaxed,
            );
        }
        Some(penalty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn penalty_grows_and_caps() {
        let mut b = PenaltyBox::new();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.record_failure(a, t0), None);
        }
        assert!(!b.is_blocked(a, t0));
        assert_eq!(b.record_failure(a, t0), Some(FIRST_PENALTY));
        assert!(b.is_blocked(a, t0 + Duration::from_secs(14)));
        assert!(!b.is_blocked(a, t0 + Duration::from_secs(15)));
        let mut t = t0 + Duration::from_secs(16);
        let mut last = FIRST_PENALTY;
        for _ in 0..12 {
            let mut got = None;
            for _ in 0..=FREE_FAILURES {
                got = b.record_failure(a, t);
            }
            let p = got.unwrap();
            assert!(p >= last && p <= MAX_PENALTY);
            last = p;
            t += p + Duration::from_secs(1);
        }
        assert_eq!(last, MAX_PENALTY);
    }

    #[test]
    fn other_sources_are_unaffected_and_v6_groups_by_64() {
        let p = Penalties::new(Instant::now(), FREE_FAILURES);
        let t = Instant::now();
        for _ in 0..=FREE_FAILURES {
            p.record_failure(ip("2001:db8:1:2::5"), t);
        }
        assert!(p.is_blocked(ip("2001:db8:1:2::9999"), t));
        assert!(!p.is_blocked(ip("2001:db8:1:3::5"), t));
        assert!(!p.is_blocked(ip("192.0.2.1"), t));
        assert!(!p.is_blocked(ip("2001:db8:1:2::5"), t + FIRST_PENALTY));
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn failures_outside_the_window_are_forgiven() {
        let mut b = PenaltyBox::new();
        let t = Instant::now();
        for i in 0..20u64 {
            assert_eq!(
                b.record_failure(
                    ip("192.0.2.7"),
                    t + WINDOW * (i as u32 + 1) + Duration::from_secs(i)
                ),
                None
            );
        }
    }

    #[test]
    fn table_is_bounded_and_a_full_table_still_penalises_new_sources() {
        let mut b = PenaltyBox::with_limits(1024, FREE_FAILURES);
        let t = Instant::now();
        for i in 0..(1024u32 * 4) {
            b.record_failure(IpAddr::V4(i.to_be_bytes().into()), t);
        }
        assert!(b.len() <= 1024);
        // A newcomer to a full table takes a slot and is penalised like anyone else.
        let late = ip("198.51.100.1");
        let later = t + Duration::from_secs(1);
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.record_failure(late, later), None);
        }
        assert_eq!(b.record_failure(late, later), Some(FIRST_PENALTY));
        assert!(b.is_blocked(late, later));
    }

    /// Model test: the table against a map with no bound, on random failures from a small
    /// population (which fits): both penalise the same sources at the same times.
    #[test]
    fn table_agrees_with_an_unbounded_model_when_it_fits() {
        use std::collections::HashMap;
        let mut b = PenaltyBox::with_limits(4096, 3);
        let mut model: HashMap<IpAddr, Vec<Instant>> = HashMap::new();
        let t0 = Instant::now();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut t = t0;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let src = IpAddr::V4([10, 0, 0, (seed % 16) as u8].into());
            t += Duration::from_millis(seed % 3000);
            let blocked = b.is_blocked(src, t);
            let fails = model.entry(src).or_default();
            let model_blocked = fails.last().is_some_and(|&until| until > t);
            assert_eq!(blocked, model_blocked, "{src} at {:?}", t - t0);
            if let Some(p) = b.record_failure(src, t) {
                fails.push(t + p);
            }
        }
    }

    #[test]
    fn blocked_table_read_without_the_lock_matches_the_failure_table() {
        let p = Penalties::new(Instant::now(), 2);
        let t = Instant::now();
        let a = ip("203.0.113.9");
        assert_eq!(p.record_failure(a, t), None);
        assert_eq!(p.record_failure(a, t), None);
        assert!(!p.is_blocked(a, t));
        assert_eq!(p.record_failure(a, t), Some(FIRST_PENALTY));
        assert!(p.is_blocked(a, t + FIRST_PENALTY - Duration::from_millis(1)));
        assert!(!p.is_blocked(a, t + FIRST_PENALTY));
    }
}

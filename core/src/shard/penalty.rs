//! Per-source penalties for failed authentication.
//!
//! Repeated failures from one address are dropped before any TLS work, for a penalty that
//! starts at 15 s and doubles with each further offence up to 10 min. Addresses are grouped
//! as IPv4 /32 and IPv6 /64 (one host usually owns a whole /64). The table is bounded: when
//! full, the entry that expires first is evicted.
//!
//! Sans-IO: every call takes `now`; the shard supplies the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures tolerated within [`WINDOW`] before the first penalty.
pub const FREE_FAILURES: u32 = 5;
/// Window in which failures are counted.
pub const WINDOW: Duration = Duration::from_secs(60);
/// First penalty.
pub const FIRST_PENALTY: Duration = Duration::from_secs(15);
/// Longest penalty.
pub const MAX_PENALTY: Duration = Duration::from_secs(600);
/// Sources tracked at most.
pub const MAX_SOURCES: usize = 65_536;

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
    failures: u32,
    window_start: Instant,
    offences: u32,
    blocked_until: Option<Instant>,
}

/// The penalty table.
#[derive(Debug, Default)]
pub struct PenaltyBox {
    entries: HashMap<SourceKey, Entry>,
}

impl PenaltyBox {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when packets from `ip` must be dropped now.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .get(&SourceKey::of(ip))
            .and_then(|e| e.blocked_until)
            .is_some_and(|t| t > now)
    }

    /// Records a failed authentication; returns the penalty started by it, if any.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = SourceKey::of(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_SOURCES {
            self.evict(now);
        }
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            window_start: now,
            offences: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.window_start) > WINDOW {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures <= FREE_FAILURES {
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

    /// Forgets sources whose penalty and failure window are long over.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            let quiet_since = e.blocked_until.unwrap_or(e.window_start);
            now.saturating_duration_since(quiet_since) < MAX_PENALTY * 2
        });
    }

    fn evict(&mut self, now: Instant) {
        self.expire(now);
        if self.entries.len() < MAX_SOURCES {
            return;
        }
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.blocked_until.unwrap_or(e.window_start))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.entries.remove(&k);
        }
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
        let mut b = PenaltyBox::new();
        let t = Instant::now();
        for _ in 0..=FREE_FAILURES {
            b.record_failure(ip("2001:db8:1:2::5"), t);
        }
        assert!(b.is_blocked(ip("2001:db8:1:2::9999"), t));
        assert!(!b.is_blocked(ip("2001:db8:1:3::5"), t));
        assert!(!b.is_blocked(ip("192.0.2.1"), t));
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
    fn table_is_bounded() {
        let mut b = PenaltyBox::new();
        let t = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            b.record_failure(IpAddr::V4(i.to_be_bytes().into()), t);
        }
        assert!(b.len() <= MAX_SOURCES);
    }
}

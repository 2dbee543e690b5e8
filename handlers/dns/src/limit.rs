//! Per-source query budgets: a token bucket per address (IPv6 per /64, since one host
//! holds a whole /64), shared by DoQ and DoH on every shard.
//!
//! A source within its rate is answered; one over it gets REFUSED while its debt is below
//! one burst; one that keeps sending anyway has its DoQ connection closed with
//! `DOQ_EXCESSIVE_LOAD` (DoH: 429). The table is bounded: when full, buckets that have
//! refilled (sources that went quiet) are dropped first, then the fullest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Sources tracked at once.
const MAX_SOURCES: usize = 65_536;

/// What a query from a source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within budget.
    Yes,
    /// Over budget: answer REFUSED.
    Refuse,
    /// Far over budget: close the connection.
    Excess,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets.
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

use alknet_core::net::source_of as source_key;

impl Limiter {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one query from `ip`'s budget of `rate` per second with `burst` at once.
    pub(crate) fn admit(&self, ip: IpAddr, rate: u32, burst: u32) -> Admit {
        let now = Instant::now();
        let (rate, burst) = (f64::from(rate), f64::from(burst));
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SOURCES && !map.contains_key(&source_key(ip)) {
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_SOURCES {
                // Every tracked source is busy: forget the one with the most tokens left.
                if let Some(k) = map
                    .iter()
                    .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                    .map(|(k, _)| *k)
                {
                    map.remove(&k);
                }
            }
        }
        let b = map.entry(source_key(ip)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Admit::Yes
        } else if b.tokens > -burst {
            b.tokens -= 1.0;
            Admit::Refuse
        } else {
            Admit::Excess
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_refusals_then_the_cut() {
        let l = Limiter::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let got: Vec<Admit> = (0..25).map(|_| l.admit(ip, 1, 10)).collect();
        assert!(got[..10].iter().all(|a| *a == Admit::Yes));
        assert!(got[10..20].iter().all(|a| *a == Admit::Refuse), "{got:?}");
        assert_eq!(got[24], Admit::Excess);
        // Another source, and another host of another /64, are untouched; one of the same
        // /64 shares the bucket.
        assert_eq!(l.admit("192.0.2.2".parse().unwrap(), 1, 10), Admit::Yes);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(l.admit(a, 1, 10), Admit::Yes);
        }
        assert_ne!(l.admit("2001:db8::2".parse().unwrap(), 1, 10), Admit::Yes);
        assert_eq!(
            l.admit("2001:db8:0:1::2".parse().unwrap(), 1, 10),
            Admit::Yes
        );
    }
}

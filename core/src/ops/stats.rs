//! Counters, declared once: each shard increments its own set (relaxed atomics on a cache
//! line no other shard writes), and `alknet stats`, logs and benchmarks read the sum.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// One shard's counters.
        #[derive(Default, Debug)]
        #[repr(align(128))]
        pub struct ShardStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of counters, summed over shards.
        #[derive(Default, Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl ShardStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl StatsSnapshot {
            /// Adds another snapshot into this one.
            pub fn add(&mut self, o: &StatsSnapshot) {
                $(self.$name = self.$name.wrapping_add(o.$name);)*
            }

            /// `(name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// UDP datagrams received from the socket (GRO segments counted one by one).
    datagrams_in,
    /// UDP datagrams sent (GSO segments counted one by one).
    datagrams_out,
    /// Bytes received.
    bytes_in,
    /// Bytes sent.
    bytes_out,
    /// Datagrams handed to another shard because it owns the connection.
    forwarded_out,
    /// Datagrams received from another shard.
    forwarded_in,
    /// Datagrams for another shard dropped because its inbox was full (its byte budget,
    /// `udp.recv_buffer`, or its message queue).
    forward_dropped,
    /// Datagrams dropped before QUIC processing (malformed, unroutable).
    dropped_malformed,
    /// Initials from reflection-prone source ports, ignored.
    dropped_reflection,
    /// Initials from sources penalised for failed authentication, ignored.
    dropped_penalty,
    /// Initials ignored: their source (IPv4 /32, IPv6 /64) had its cap of handshakes in
    /// flight on all shards (`admission.max_handshakes_per_source`).
    dropped_source_cap,
    /// Initials ignored: their Retry token had already started a handshake (a replay).
    dropped_token_reuse,
    /// Incoming connections accepted.
    handshakes_accepted,
    /// Handshakes in flight on this shard (a gauge).
    handshakes_in_flight,
    /// The most handshakes in flight from one source, on all shards, seen by this shard
    /// when it admitted one (a high-water mark; read it per shard, the sum means nothing).
    source_handshakes_peak,
    /// Accepted handshakes that ended before completing (TLS failure, wrong or missing key,
    /// timeout, close); each counts against its source's penalty.
    handshakes_abandoned,
    /// Connections closed after the handshake because their peer, or their anonymous
    /// source, held its connection cap (`admission.max_connections_per_*`).
    refused_connection_cap,
    /// Incoming connections that failed during accept.
    handshakes_failed,
    /// Handshakes that did not finish within the handshake timeout.
    handshake_timeouts,
    /// Retry packets sent (handshake cap reached).
    retries_sent,
    /// Incoming connections refused (connection cap, shutdown).
    connections_refused,
    /// Incoming connections refused because the process is over its memory budget.
    refused_memory,
    /// Connections that completed the handshake.
    connections_established,
    /// Connections currently held by the shard.
    connections_open,
    /// Clients refused after the handshake (unknown or disabled key, missing scope), and
    /// refusals a service reports itself (`ServiceContext::auth_failures`: refused invites).
    auth_failures,
    /// Of `auth_failures`: the client key belongs to no peer.
    auth_unknown_key,
    /// Of `auth_failures`: no client key where the service needs one.
    auth_no_certificate,
    /// Of `auth_failures`: the peer is disabled.
    auth_peer_disabled,
    /// Of `auth_failures`: the peer lacks the service's scope.
    auth_missing_scope,
    /// Of `auth_failures`: an invite refused on `alknet/join` (unknown, expired, used up,
    /// malformed, or over the source's join attempts).
    auth_invite,
    /// Of `auth_failures`: any other reason.
    auth_other,
    /// Handlers that panicked (their connection was closed).
    handler_panics,
    /// Transmits that hit a full socket buffer and waited.
    send_blocked,
    /// Send errors other than a full buffer.
    send_errors,
    /// Long-header datagrams for another shard that no connection can use (an Initial
    /// under 1 200 bytes, an unknown version under 1 200 bytes, a Retry or version
    /// negotiation sent to a server), dropped before forwarding.
    dropped_unforwardable,
    /// Datagrams of a live connection from an address it has not used, dropped because it
    /// moved to another such address less than a second before (spoofed migrations).
    migrations_refused,
}

impl ShardStats {
    /// The counter of failed authentications for a reason as logged
    /// (`AuthFailure::log_reason`).
    pub fn auth_reason(&self, reason: &str) -> &AtomicU64 {
        match reason {
            "unknown key" => &self.auth_unknown_key,
            "no certificate" => &self.auth_no_certificate,
            "peer disabled" => &self.auth_peer_disabled,
            "missing scope" => &self.auth_missing_scope,
            "unknown invite" | "expired invite" | "invite used up" | "bad join request"
            | "join rate limit" => &self.auth_invite,
            _ => &self.auth_other,
        }
    }
}

/// Sums the counters of several shards.
pub fn sum<'a>(shards: impl IntoIterator<Item = &'a ShardStats>) -> StatsSnapshot {
    let mut total = StatsSnapshot::default();
    for s in shards {
        total.add(&s.snapshot());
    }
    total
}

/// Increments a counter by one.
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Raises a high-water mark to `v`.
#[inline]
pub(crate) fn raise(c: &AtomicU64, v: u64) {
    c.fetch_max(v, Ordering::Relaxed);
}

/// Decrements a gauge by one.
#[inline]
pub(crate) fn drop_one(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

/// Upper bounds (seconds) of the [`Histogram`] buckets: a store commit is an fsync, from
/// well under a millisecond on an SSD to seconds on a busy SD card.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with the fixed [`LATENCY_BUCKETS`], written by one thread and read by
/// any (relaxed atomics: a reader may see a count one observation ahead of the sum).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A copy of a [`Histogram`]: per-bucket counts (not cumulative), the total and the sum.
#[derive(Debug, Default, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct HistogramSnapshot {
    /// Observations in each bucket of [`LATENCY_BUCKETS`] (those above the last bound
    /// count only in `count`).
    pub buckets: Vec<u64>,
    /// All observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b)
            && let Some(b) = self.buckets.get(i)
        {
            bump(b);
        }
        bump(&self.count);
        add(&self.sum_micros, d.as_micros() as u64);
    }

    /// Reads it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_sorts_observations_into_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.iter().sum::<u64>(), 2);
        assert_eq!(s.buckets.first(), Some(&1));
        assert_eq!(s.buckets.get(3), Some(&1));
        assert!((s.sum_seconds - 10.0031).abs() < 1e-9, "{}", s.sum_seconds);
    }
}

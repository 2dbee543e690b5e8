//! `[services.dns]`: the zone's apex, forwarding, and the limits every query meets. The
//! zone's records are `[[dns.records]]` ([`alknet_core::config::DnsZoneConfig`]).

use alknet_core::config::{ConfigDuration, DnsName};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The DNS service's settings, checked at load.
///
/// ```toml
/// [services.dns]
/// enabled = true
/// zone = "gw.example."              # the apex of the zone [[dns.records]] fills
/// upstream = "192.0.2.53:53"        # forward other names here (UDP, TCP on truncation); none by default
/// upstream_timeout = "2s"           # one upstream attempt; one retry follows
/// cache_entries = 10000             # forwarded answers kept, by name and type
/// queries_per_second = 100          # per source address (IPv6: per /64), DoQ and DoH together
/// burst = 200                       # queries a source may send at once above its rate
/// max_pkarr_packets = 10000         # signed packets the pkarr relay stores
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct DnsSettings {
    /// The zone's apex; `None` serves only the node's pkarr names and forwarding.
    pub zone: Option<DnsName>,
    /// The resolver other names go to; `None` refuses them.
    pub upstream: Option<SocketAddr>,
    /// One upstream attempt.
    pub upstream_timeout: Duration,
    /// Forwarded answers held in the cache.
    pub cache_entries: usize,
    /// Sustained queries per second one source may send.
    pub queries_per_second: u32,
    /// Queries one source may send at once above its rate.
    pub burst: u32,
    /// Signed packets the pkarr relay holds.
    pub max_pkarr_packets: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            zone: None,
            upstream: None,
            upstream_timeout: Duration::from_secs(2),
            cache_entries: 10_000,
            queries_per_second: 100,
            burst: 200,
            max_pkarr_packets: 10_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    zone: Option<DnsName>,
    upstream: Option<SocketAddr>,
    upstream_timeout: ConfigDuration,
    cache_entries: usize,
    queries_per_second: u32,
    burst: u32,
    max_pkarr_packets: usize,
}

impl Default for RawSettings {
    fn default() -> Self {
        let d = DnsSettings::default();
        Self {
            zone: d.zone,
            upstream: d.upstream,
            upstream_timeout: ConfigDuration(d.upstream_timeout),
            cache_entries: d.cache_entries,
            queries_per_second: d.queries_per_second,
            burst: d.burst,
            max_pkarr_packets: d.max_pkarr_packets,
        }
    }
}

impl TryFrom<RawSettings> for DnsSettings {
    type Error = String;
    fn try_from(r: RawSettings) -> Result<Self, String> {
        let timeout = r.upstream_timeout.0;
        if !(Duration::from_millis(100)..=Duration::from_secs(30)).contains(&timeout) {
            return Err(format!("upstream_timeout {timeout:?}: must be 100ms..=30s"));
        }
        if r.cache_entries > 10_000_000 {
            return Err(format!(
                "cache_entries {}: at most 10000000 (0 turns the cache off)",
                r.cache_entries
            ));
        }
        if r.queries_per_second == 0 || r.burst == 0 {
            return Err(
                "queries_per_second and burst must be at least 1 (raise them rather than turn the limit off)"
                    .into(),
            );
        }
        if r.max_pkarr_packets > 10_000_000 {
            return Err(format!(
                "max_pkarr_packets {}: at most 10000000 (0 turns the relay's store off)",
                r.max_pkarr_packets
            ));
        }
        if let Some(up) = r.upstream
            && (up.port() == 0 || up.ip().is_unspecified())
        {
            return Err(format!("upstream {up}: name a resolver's address and port"));
        }
        Ok(Self {
            zone: r.zone,
            upstream: r.upstream,
            upstream_timeout: timeout,
            cache_entries: r.cache_entries,
            queries_per_second: r.queries_per_second,
            burst: r.burst,
            max_pkarr_packets: r.max_pkarr_packets,
        })
    }
}

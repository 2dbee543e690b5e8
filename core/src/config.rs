//! The server configuration file (TOML) and its defaults.
//!
//! Every key has a default that is safe on a gateway facing the internet, so `alknet serve`
//! runs without a file. Unknown keys are errors (a typo must not silently fall back to a
//! default), and every error names the file, the line and the key.
//!
//! This module only reads and checks values; it does not open sockets or build TLS state.

mod dns;
mod git;
mod tunnels;

use alknet_proto::Fingerprint;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use dns::{
    DnsName, DnsRecordEntry, DnsZoneConfig, MAX_RECORDS, MAX_TXT_LEN, RecordData, SvcParams,
    ZoneRecord,
};
pub use git::{
    GitAccess, GitAccessConfig, GitRule, GitSubject, ProtectRule, RefPattern, RepoPattern,
    repo_segment_char,
};
pub use tunnels::{
    HostPattern, ListenPattern, MAX_NAME_LEN, PortRange, TargetPattern, TunnelRule, TunnelSubject,
    TunnelsConfig, canonical_net, normalize_name,
};

/// Default listen address: every address, IPv6 and IPv4, UDP port 4433.
pub const DEFAULT_LISTEN: &str = "[::]:4433";

/// Largest configuration file accepted (a config is a few KiB; anything larger is a mistake).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A syntax or type error at a known place.
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key at that line (dotted path where known).
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A duration written as `"10s"`, `"500ms"`, `"2m"` or `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `"<integer><unit>"` with unit `ms`, `s`, `m` or `h`; `"0"` alone means zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. \"10s\", \"500ms\", \"2m\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "`{s}` has no valid unit; write e.g. \"10s\", \"500ms\", \"2m\", \"1h\""
            ));
        }
    };
    Ok(d)
}

/// Which io driver a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// io_uring when the kernel allows it, else epoll (logged once).
    #[default]
    Auto,
    /// io_uring only; start-up fails without it.
    IoUring,
    /// The epoll driver.
    Legacy,
}

/// UDP socket options.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Segmentation offload on send (`UDP_SEGMENT`), when the kernel offers it.
    pub gso: bool,
    /// Most datagrams in one GSO send (1–64; a send never exceeds 64 KiB). Larger batches
    /// cost fewer syscalls per byte; smaller ones make shorter bursts on the wire.
    pub gso_segments: usize,
    /// Receive offload (`UDP_GRO`), when the kernel offers it.
    pub gro: bool,
    /// ECN marks on send and their report to the congestion controller.
    pub ecn: bool,
    /// Let the kernel steer datagrams to the shard named in their connection ID (a classic
    /// BPF program on the reuseport group). Off, a datagram that lands on the wrong shard is
    /// forwarded between threads instead.
    pub steer_by_cid: bool,
    /// Socket receive buffer in bytes (the kernel caps it at `net.core.rmem_max`); also the
    /// byte budget of each shard's inbox of datagrams forwarded by the other shards.
    pub recv_buffer: usize,
    /// Socket send buffer in bytes (capped at `net.core.wmem_max`).
    pub send_buffer: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            gso: true,
            gso_segments: 64,
            gro: true,
            ecn: true,
            steer_by_cid: true,
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
        }
    }
}

/// QUIC transport limits. The defaults bound what one peer can make a shard hold.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Time a handshake may take before the connection is dropped.
    pub handshake_timeout: ConfigDuration,
    /// Time without any packet after which a connection is closed.
    pub idle_timeout: ConfigDuration,
    /// Interval of keep-alive pings; `"0"` turns them off.
    pub keep_alive: ConfigDuration,
    /// Bidirectional streams a peer may have open at once.
    pub max_concurrent_bidi_streams: u32,
    /// Unidirectional streams a peer may have open at once. Every connection reserves
    /// bookkeeping for all the streams its peer may open (bidirectional plus unidirectional):
    /// up to 112 in all fit the smallest table, beyond that each connection holds ≈ 3 KiB
    /// more, idle or not.
    pub max_concurrent_uni_streams: u32,
    /// Bytes a peer may send on one stream ahead of what the handler has read.
    pub stream_receive_window: u32,
    /// Bytes a peer may send on all streams of a connection ahead of the handlers.
    pub connection_receive_window: u32,
    /// Bytes buffered for sending per connection.
    pub send_window: u64,
    /// Bytes of unread datagrams buffered per connection (0 turns datagrams off).
    pub datagram_receive_buffer: usize,
    /// Handshakes in flight per shard above which Initials without a token get a Retry.
    pub max_handshakes_per_shard: usize,
    /// Connections per shard above which new ones are refused.
    pub max_connections_per_shard: usize,
    /// The congestion controller of every connection (what the sending side runs).
    pub congestion: Congestion,
    /// The largest UDP payload this node accepts and MTU discovery probes for (1200 to
    /// 65527). Each connection starts at 1200 bytes and finds what its path carries by
    /// probing (RFC 8899): 1452 on Ethernet, 8952 with jumbo frames, ~64 KiB on loopback.
    /// Fewer, larger packets cost less CPU per byte; a probe the path drops costs nothing
    /// but the probe.
    pub max_udp_payload: u16,
}

/// `[transport] max_udp_payload` by default: the largest UDP payload IPv6 carries.
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 65527;

/// A congestion controller of quinn-proto.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (RFC 9438), the default: as Linux TCP.
    #[default]
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// BBR: paces at the measured bottleneck rate and does not take random loss for
    /// congestion, for lossy links (Wi-Fi, cellular, long paths).
    Bbr,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: ConfigDuration(Duration::from_secs(10)),
            idle_timeout: ConfigDuration(Duration::from_secs(30)),
            keep_alive: ConfigDuration(Duration::ZERO),
            max_concurrent_bidi_streams: 100,
            max_concurrent_uni_streams: 8,
            stream_receive_window: 1 << 20,
            connection_receive_window: 4 << 20,
            send_window: 4 << 20,
            datagram_receive_buffer: 64 << 10,
            max_handshakes_per_shard: 256,
            max_connections_per_shard: 10_000,
            congestion: Congestion::Cubic,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
        }
    }
}

/// Admission limits per source and per peer, across all shards. The defaults let one load
/// generator on loopback open and hold 5 000 sessions of one peer (the perf bench); a
/// public gateway may lower the connection caps.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Handshakes in flight from one source (IPv4 address, IPv6 /64) on all shards; its
    /// further Initials are dropped unanswered, and the client retransmits them.
    pub max_handshakes_per_source: u32,
    /// Connections one authenticated peer may hold on all shards; more are closed after
    /// the handshake with `CONNECTION_LIMIT`.
    pub max_connections_per_peer: u32,
    /// Connections one source may hold on anonymous services (no known key).
    pub max_connections_per_anonymous_source: u32,
    /// How long a Retry token is accepted (whole seconds, 1s..=60s). Each token starts one
    /// handshake at most.
    pub retry_token_lifetime: ConfigDuration,
    /// Failed handshakes or authentications from one source within a minute before its
    /// connection attempts are dropped for a penalty (15 s, doubling to 10 min).
    pub failures_before_penalty: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_handshakes_per_source: 256,
            max_connections_per_peer: 8_192,
            max_connections_per_anonymous_source: 8_192,
            retry_token_lifetime: ConfigDuration(Duration::from_secs(5)),
            failures_before_penalty: crate::shard::penalty::FREE_FAILURES,
        }
    }
}

/// The file a configuration was read from: kept so that sections parsed after loading
/// (each service parses its own `[services.NAME]` keys) can name the file and line of an
/// error. Empty for a configuration built in code.
#[derive(Clone, Default)]
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: Arc<str>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One `[services.NAME]` section as its service parsed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSection<T> {
    /// `enabled`, the key every service has: whether its ALPN is offered. `None` when the
    /// section does not say (or is absent): then the service's declaration decides
    /// ([`crate::Service::enabled_by_default`]: on for authenticated services, off for
    /// anonymous modes), with or without a config file.
    pub enabled: Option<bool>,
    /// The service's own keys.
    pub config: T,
}

/// The tokio side runtime, where libraries that need tokio run (SSH, HTTP, git). It starts
/// only when a service first asks for it; the QUIC data path never runs on it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokioConfig {
    /// Worker threads of the side runtime (1..=64).
    pub threads: usize,
    /// Bytes a bridged stream buffers in each direction between its shard and tokio
    /// (4096..=16777216). A tokio side that stops reading holds at most this much beyond the
    /// stream's receive window; then QUIC flow control stops the peer.
    pub bridge_buffer: usize,
}

impl Default for TokioConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            bridge_buffer: 128 << 10,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint (off unless `listen` is set).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address serving `GET /metrics`, e.g. `"127.0.0.1:9464"`.
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback `listen` (the figures tell anyone who can reach it how busy the
    /// gateway is and which services it runs).
    pub allow_remote: bool,
}

/// One `[[peers]]` entry: a client allowed in, and what it may use.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Stable peer id (the identity; fingerprints may change).
    pub id: String,
    /// Keys of this peer, `ed25519:<64 lowercase hex>`.
    pub fingerprints: Vec<String>,
    /// Scopes: service names this peer may open (`"*"` for all).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Resources the peer may reach (interpreted by services).
    #[serde(default)]
    pub resources: Vec<String>,
    /// A name for people.
    #[serde(default)]
    pub display_name: Option<String>,
    /// SSH public keys (`ssh-ed25519 AAAA… [comment]`) the SSH service accepts from this
    /// peer under `auth = "peer+key"`.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Disabled peers are refused.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The whole `alknet serve` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Worker threads (shards); 0 means one per online core.
    pub workers: usize,
    /// Server id written into connection IDs for an L4 QUIC-LB balancer.
    pub server_id: u16,
    /// io driver selection.
    pub driver: DriverKind,
    /// Pin each worker to one core. Best when the workers have their cores to themselves;
    /// with other busy processes on the same cores, unpinned workers can move out of their
    /// way.
    pub pin_workers: bool,
    /// On SIGTERM/SIGINT, time given to connections to finish before they are closed.
    pub drain_period: ConfigDuration,
    /// Resident memory (bytes) above which new connections are retried or refused and no
    /// new stream credit is granted; 0 means half of physical memory.
    pub memory_budget: u64,
    /// UDP socket options.
    pub udp: UdpConfig,
    /// QUIC transport limits.
    pub transport: TransportConfig,
    /// Admission limits per source and per peer.
    pub admission: AdmissionConfig,
    /// The tokio side runtime.
    pub tokio: TokioConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[services.NAME]` sections, by service name (`echo`, `perf`, …), as written: each
    /// service parses its own keys ([`Config::service_section`]).
    pub services: BTreeMap<String, toml::Table>,
    /// Peers allowed in.
    pub peers: Vec<PeerConfig>,
    /// TCP forwarding (SSH port forwards, `alknet/tunnel`): who may reach what.
    pub tunnels: TunnelsConfig,
    /// Git repositories (`alknet/git`, git over SSH): who may read, push and create what.
    pub git: GitAccessConfig,
    /// The DNS service's zone (`[[dns.records]]`).
    pub dns: DnsZoneConfig,
    /// Where this configuration was read from.
    #[serde(skip)]
    pub source: ConfigSource,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 4433))),
            workers: 0,
            server_id: 0,
            driver: DriverKind::Auto,
            pin_workers: true,
            drain_period: ConfigDuration(Duration::from_secs(5)),
            memory_budget: 0,
            udp: UdpConfig::default(),
            transport: TransportConfig::default(),
            admission: AdmissionConfig::default(),
            tokio: TokioConfig::default(),
            metrics: MetricsConfig::default(),
            services: BTreeMap::new(),
            peers: Vec::new(),
            tunnels: TunnelsConfig::default(),
            git: GitAccessConfig::default(),
            dns: DnsZoneConfig::default(),
            source: ConfigSource::default(),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: 1,
                key: String::new(),
                message: format!("file is {} bytes, more than a config can be", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        config.source = ConfigSource {
            path: path.to_owned(),
            text: Arc::from(text),
        };
        config.check(text, path)?;
        Ok(config)
    }

    fn check(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, needle: &str, message: String| {
            let line = find_line(text, needle).unwrap_or(1);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                key: key.to_owned(),
                message,
            }
        };
        if self.workers > 256 {
            return Err(err(
                "workers",
                "workers",
                format!("{} workers; at most 256 shards are supported", self.workers),
            ));
        }
        if !(1..=64).contains(&self.udp.gso_segments) {
            return Err(err(
                "udp.gso_segments",
                "gso_segments",
                format!("{} segments; must be 1..=64", self.udp.gso_segments),
            ));
        }
        let t = &self.transport;
        if t.handshake_timeout.0.is_zero() {
            return Err(err(
                "transport.handshake_timeout",
                "handshake_timeout",
                "must be above zero".into(),
            ));
        }
        if t.idle_timeout.0.is_zero() || t.idle_timeout.0 > Duration::from_secs(3600) {
            return Err(err(
                "transport.idle_timeout",
                "idle_timeout",
                "must be between 1ms and 1h".into(),
            ));
        }
        if t.stream_receive_window == 0 || t.connection_receive_window < t.stream_receive_window {
            return Err(err(
                "transport.connection_receive_window",
                "connection_receive_window",
                "must be at least stream_receive_window, and both above zero".into(),
            ));
        }
        if !(1200..=65527).contains(&t.max_udp_payload) {
            return Err(err(
                "transport.max_udp_payload",
                "max_udp_payload",
                format!(
                    "{} bytes; must be 1200..=65527 (QUIC needs 1200)",
                    t.max_udp_payload
                ),
            ));
        }
        if t.max_connections_per_shard == 0 || t.max_handshakes_per_shard == 0 {
            return Err(err(
                "transport.max_connections_per_shard",
                "max_",
                "connection and handshake caps must be above zero".into(),
            ));
        }
        let a = &self.admission;
        if a.max_handshakes_per_source == 0
            || a.max_connections_per_peer == 0
            || a.max_connections_per_anonymous_source == 0
        {
            return Err(err(
                "admission.max_handshakes_per_source",
                "max_",
                "admission caps must be above zero".into(),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&a.retry_token_lifetime.0) {
            return Err(err(
                "admission.retry_token_lifetime",
                "retry_token_lifetime",
                "must be between 1s and 60s (tokens carry whole seconds)".into(),
            ));
        }
        if !(1..=64).contains(&self.tokio.threads) {
            return Err(err(
                "tokio.threads",
                "threads",
                format!("{} threads; must be 1..=64", self.tokio.threads),
            ));
        }
        if !(4096..=16 << 20).contains(&self.tokio.bridge_buffer) {
            return Err(err(
                "tokio.bridge_buffer",
                "bridge_buffer",
                format!(
                    "{} bytes; must be 4096..=16777216",
                    self.tokio.bridge_buffer
                ),
            ));
        }
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
            && !self.metrics.allow_remote
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: section_key_line(text, "metrics", "listen")
                    .or_else(|| find_line(text, "[metrics]"))
                    .unwrap_or(1),
                key: "metrics.listen".into(),
                message: format!(
                    "{addr} is not a loopback address; the metrics tell anyone who reaches them how busy this gateway is: listen on 127.0.0.1, or set `allow_remote = true` under [metrics] and firewall the port"
                ),
            });
        }
        if let Err((key, message)) = self.tunnels.check() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: section_key_line(text, "tunnels", key).unwrap_or(1),
                key: format!("tunnels.{key}"),
                message,
            });
        }
        self.dns_records()?;
        let mut ids = std::collections::HashSet::new();
        // Each key authenticates one peer: with a key under two peers, which one a
        // handshake finds would depend on hash order, and could change between restarts.
        let mut keys: std::collections::HashMap<Fingerprint, (usize, &str)> =
            std::collections::HashMap::new();
        for (index, p) in self.peers.iter().enumerate() {
            if p.id.is_empty() || p.id.len() > 128 {
                return Err(err(
                    "peers.id",
                    "id",
                    "peer id must be 1..=128 bytes".into(),
                ));
            }
            if !ids.insert(p.id.as_str()) {
                return Err(err(
                    "peers.id",
                    &format!("\"{}\"", p.id),
                    format!("peer id `{}` appears twice", p.id),
                ));
            }
            for f in &p.fingerprints {
                let fp = match f.parse::<Fingerprint>() {
                    Ok(fp) => fp,
                    Err(e) => return Err(err("peers.fingerprints", f, e.to_string())),
                };
                match keys.get(&fp) {
                    Some(&(first, owner)) if owner != p.id => {
                        return Err(ConfigError::Invalid {
                            path: path.to_owned(),
                            line: peer_line_in(text, index, f).unwrap_or(1),
                            key: "peers.fingerprints".into(),
                            message: format!(
                                "key {fp} is listed under peer `{owner}` (line {}) and peer `{}`; a key authenticates one peer: remove it from one of them",
                                peer_line_in(text, first, f).unwrap_or(1),
                                p.id
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        keys.insert(fp, (index, p.id.as_str()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Where `[[peers]]` entry `index` is written: `path:line` of its `id`, for messages
    /// that send an operator to the file.
    pub fn peer_origin(&self, index: usize) -> String {
        let line = self
            .peers
            .get(index)
            .and_then(|p| peer_line_in(&self.source.text, index, &format!("\"{}\"", p.id)))
            .unwrap_or(1);
        format!("{}:{line}", self.source.path.display())
    }

    /// Number of workers to start: the configured count, or one per online core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(256)
        }
    }

    /// The zone's records (`[[dns.records]]`), checked against `zone` under
    /// `[services.dns]`; a bad one is an error naming its file, line and key.
    pub fn dns_records(&self) -> Result<Vec<ZoneRecord>, ConfigError> {
        let text = &self.source.text;
        let zone_value = self
            .services
            .get("dns")
            .and_then(|t| t.get("zone"))
            .and_then(|v| v.as_str());
        let zone = match zone_value.map(DnsName::parse) {
            Some(Err(message)) => {
                return Err(ConfigError::Invalid {
                    path: self.source.path.clone(),
                    line: section_key_line(text, "services.dns", "zone").unwrap_or(1),
                    key: "services.dns.zone".into(),
                    message,
                });
            }
            Some(Ok(z)) => Some(z),
            None => None,
        };
        self.dns
            .parse(zone.as_ref())
            .map_err(|(index, key, message)| {
                let needle = self
                    .dns
                    .records
                    .get(index)
                    .map(|r| match key {
                        "name" => r.name.clone(),
                        "value" => r.value.clone(),
                        "type" => r.kind.clone(),
                        _ => key.to_owned(),
                    })
                    .unwrap_or_default();
                ConfigError::Invalid {
                    path: self.source.path.clone(),
                    line: table_line_in(text, "[[dns.records]]", index, &needle).unwrap_or(1),
                    key: format!("dns.records.{key}"),
                    message,
                }
            })
    }

    /// Whether `[services.NAME]` says `enabled = true` (a quick look; the service layer
    /// parses the whole section with [`Config::service_section`]).
    pub fn service_enabled(&self, name: &str) -> bool {
        self.services
            .get(name)
            .and_then(|t| t.get("enabled"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(false)
    }

    /// Parses `[services.NAME]`: `enabled`, and the service's own keys into `T`. An absent
    /// section is `T::default()` with `enabled` unset. Errors name the file, the line and the key (an
    /// unknown key is an error when `T` denies unknown fields).
    pub fn service_section<T>(&self, name: &str) -> Result<ServiceSection<T>, ConfigError>
    where
        T: serde::de::DeserializeOwned + Default,
    {
        let Some(table) = self.services.get(name) else {
            return Ok(ServiceSection {
                enabled: None,
                config: T::default(),
            });
        };
        let text = &*self.source.text;
        let path = &self.source.path;
        let mut out = None;
        let result = if text.is_empty() {
            // Built in code: no text to point into.
            serde::de::DeserializeSeed::deserialize(
                section::Pick::<T>::service(name, &mut out),
                toml::Value::Table(toml::Table::from_iter([(
                    "services".to_owned(),
                    toml::Value::Table(toml::Table::from_iter([(
                        name.to_owned(),
                        toml::Value::Table(table.clone()),
                    )])),
                )])),
            )
            .map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                line: 0,
                key: format!("services.{name}"),
                message: e.to_string().trim().replace('\n', "; "),
            })
        } else {
            toml::Deserializer::parse(text)
                .and_then(|d| {
                    serde::de::DeserializeSeed::deserialize(
                        section::Pick::<T>::service(name, &mut out),
                        d,
                    )
                })
                .map_err(|e| toml_error(&e, text, path))
        };
        result?;
        Ok(out.unwrap_or_default())
    }

    /// Checks that every `[services.NAME]` names a service of this build.
    pub fn check_services(&self, known: &[&str]) -> Result<(), ConfigError> {
        for name in self.services.keys() {
            if !known.contains(&name.as_str()) {
                let text = &*self.source.text;
                let line = find_line(text, &format!("services.{name}"))
                    .or_else(|| find_line(text, "services"))
                    .unwrap_or(1);
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(ConfigError::Invalid {
                    path: self.source.path.clone(),
                    line,
                    key: format!("services.{name}"),
                    message: format!(
                        "unknown service `{name}`; the services of this build are: {known}"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A toml error, placed at its line and key.
fn toml_error(e: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let (line, located) = locate(text, offset);
    let message = e.message().trim().replace('\n', "; ");
    // serde names the key in its message; the dotted path from the text is more precise
    // when it ends with that key.
    let key = match key_from_message(&message) {
        Some(k) if located == k || located.ends_with(&format!(".{k}")) => located,
        Some(k) => k,
        None => located,
    };
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        key,
        message,
    }
}

/// Picks one `[services.NAME]` section out of a whole document and hands the service's
/// keys to its config type, `enabled` aside. Working on the document (not on a copy of the
/// section) keeps toml's spans, so errors point at the line of the offending key.
mod section {
    use super::ServiceSection;
    use serde::de::{
        self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, Visitor,
    };
    use std::fmt;
    use std::marker::PhantomData;

    /// The document (`services: None`) or the `services` table (`services: Some(name)`).
    pub(super) struct Pick<'a, T> {
        name: &'a str,
        in_services: bool,
        out: &'a mut Option<ServiceSection<T>>,
    }

    impl<'a, T> Pick<'a, T> {
        pub(super) fn service(name: &'a str, out: &'a mut Option<ServiceSection<T>>) -> Self {
            Self {
                name,
                in_services: false,
                out,
            }
        }
    }

    impl<'de, T: de::DeserializeOwned> DeserializeSeed<'de> for Pick<'_, T> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, T: de::DeserializeOwned> Visitor<'de> for Pick<'_, T> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Pick {
                name,
                in_services,
                out,
            } = self;
            while let Some(key) = map.next_key::<String>()? {
                match (in_services, key == "services", key == name) {
                    (false, true, _) => map.next_value_seed(Pick {
                        name,
                        in_services: true,
                        out: &mut *out,
                    })?,
                    (true, _, true) => {
                        *out = Some(map.next_value_seed(Section(PhantomData))?);
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }

    /// The section: `enabled` taken out, the rest given to `T`.
    struct Section<T>(PhantomData<T>);

    impl<'de, T: de::DeserializeOwned> DeserializeSeed<'de> for Section<T> {
        type Value = ServiceSection<T>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, T: de::DeserializeOwned> Visitor<'de> for Section<T> {
        type Value = ServiceSection<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of service settings")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let mut enabled = None;
            let config = T::deserialize(de::value::MapAccessDeserializer::new(WithoutEnabled {
                map,
                enabled: &mut enabled,
            }))?;
            Ok(ServiceSection { enabled, config })
        }
    }

    /// A map access that answers `enabled` itself and passes every other key on.
    struct WithoutEnabled<'a, A> {
        map: A,
        enabled: &'a mut Option<bool>,
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutEnabled<'_, A> {
        type Error = A::Error;
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            let mut seed = Some(seed);
            loop {
                match self.map.next_key_seed(Key { seed: &mut seed })? {
                    None => return Ok(None),
                    Some(Some(k)) => return Ok(Some(k)),
                    Some(None) => *self.enabled = Some(self.map.next_value::<bool>()?),
                }
            }
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            self.map.next_value_seed(seed)
        }
    }

    /// A key: `None` for `enabled`, else the caller's key (its errors, such as an unknown
    /// field, are raised here, where toml attaches the key's span).
    struct Key<'a, K> {
        seed: &'a mut Option<K>,
    }

    impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for Key<'_, K> {
        type Value = Option<K::Value>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for Key<'_, K> {
        type Value = Option<K::Value>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v == "enabled" {
                return Ok(None);
            }
            let seed = self
                .seed
                .take()
                .ok_or_else(|| E::custom("key asked for twice"))?;
            seed.deserialize(v.into_deserializer()).map(Some)
        }
    }
}

/// Line number (1-based) of a byte offset and the key written on that line.
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let mut table = String::new();
    for l in text.lines().take(line_no) {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let key = line.split('=').next().unwrap_or("").trim();
    let key = if key.starts_with('[') || key.is_empty() {
        table
    } else if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    };
    (line_no, key)
}

/// The first line containing `needle`.
/// The line of `key = …` inside the `[section]` table.
fn section_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let header = format!("[{section}]");
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let head = line.trim_start();
        if head.starts_with('[') {
            inside = head.starts_with(&header);
        } else if inside
            && head
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The line of the `index`-th `[[peers]]` table that contains `needle`: the tables are
/// told apart by their headers, so the same key under two peers names the second one's line.
/// `None` when the peers are not written as `[[peers]]` tables.
fn peer_line_in(text: &str, index: usize, needle: &str) -> Option<usize> {
    table_line_in(text, "[[peers]]", index, needle)
}

/// The line of the `index`-th table under `header` (`[[dns.records]]`) that contains
/// `needle`.
fn table_line_in(text: &str, header: &str, index: usize, needle: &str) -> Option<usize> {
    let mut table = None;
    let mut seen = 0usize;
    for (i, line) in text.lines().enumerate() {
        let head = line.trim_start();
        if head.starts_with('[') {
            table = if head.starts_with(header) {
                seen += 1;
                Some(seen - 1)
            } else {
                None
            };
            continue;
        }
        if table == Some(index) && line.contains(needle) {
            return Some(i + 1);
        }
    }
    None
}

/// serde names the offending key in "unknown field `x`" and "missing field `x`".
fn key_from_message(message: &str) -> Option<String> {
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(prefix).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_dns_record_names_its_line_and_key() {
        let text = "[services.dns]\nzone = \"gw.example.\"\n[[dns.records]]\nname = \"a.gw.example.\"\ntype = \"A\"\nvalue = \"192.0.2.1\"\n[[dns.records]]\nname = \"b.gw.example.\"\ntype = \"A\"\nvalue = \"192.0.2.300\"\n";
        match parse(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => {
                assert_eq!((line, key.as_str()), (10, "dns.records.value"));
                assert!(message.contains("not an IPv4 address"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let outside = "[services.dns]\nzone = \"gw.example.\"\n[[dns.records]]\nname = \"evil.test.\"\ntype = \"A\"\nvalue = \"192.0.2.1\"\n";
        match parse(outside) {
            Err(ConfigError::Invalid { line, key, .. }) => {
                assert_eq!((line, key.as_str()), (4, "dns.records.name"));
            }
            other => panic!("{other:?}"),
        }
        let ok = parse("[services.dns]\nzone = \"gw.example.\"\n[[dns.records]]\nname = \"a.gw.example.\"\ntype = \"TXT\"\nvalue = \"hi\"\n").unwrap();
        assert_eq!(ok.dns_records().unwrap().len(), 1);
    }

    #[test]
    fn a_remote_metrics_address_needs_allow_remote() {
        let text = "listen = \"[::]:4433\"\n\n[metrics]\nlisten = \"0.0.0.0:9464\"\n";
        match parse(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => {
                assert_eq!((line, key.as_str()), (4, "metrics.listen"));
                assert!(message.contains("allow_remote = true"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let ok = parse(&format!("{text}allow_remote = true\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.metrics.allow_remote);
        let local =
            parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(local.metrics.listen.map(|a| a.port()), Some(9464));
        assert!(Config::default().metrics.listen.is_none());
        assert!(matches!(
            parse("[metrics]\nlisen = \"127.0.0.1:1\"\n"),
            Err(ConfigError::Invalid { line: 2, .. })
        ));
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("alknet.toml"))
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.port(), 4433);
        assert_eq!(c.transport.handshake_timeout.0, Duration::from_secs(10));
        assert_eq!(c.transport.idle_timeout.0, Duration::from_secs(30));
        assert!(!c.service_enabled("echo"));
    }

    #[test]
    fn issue_example_parses() {
        let text = r#"
listen = "[::]:4433"
workers = 2
[services.echo]
enabled = true
[[peers]]
id = "laptop"
fingerprints = ["ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"]
scopes = ["echo"]
"#;
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.workers, 2);
        assert!(c.service_enabled("echo"));
        assert_eq!(c.peers.len(), 1);
        assert!(c.peers[0].enabled);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("listen = \"[::]:4433\"\nworkers = \"two\"\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("alknet.toml:2: key `workers`:"), "{msg}");

        let e = parse("[transport]\nidle_timeot = \"5s\"\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:2: key `transport.idle_timeot`"),
            "{msg}"
        );

        let e = parse("[transport]\nidle_timeout = \"5 parsecs\"\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:2: key `transport.idle_timeout`"),
            "{msg}"
        );

        assert_eq!(
            parse("[transport]\ncongestion = \"bbr\"\n")
                .map(|c| c.transport.congestion)
                .ok(),
            Some(Congestion::Bbr)
        );
        assert_eq!(
            parse("[transport]\ncongestion = \"newreno\"\n")
                .map(|c| c.transport.congestion)
                .ok(),
            Some(Congestion::NewReno)
        );
        assert_eq!(Config::default().transport.congestion, Congestion::Cubic);
        let e = parse("[transport]\ncongestion = \"vegas\"\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:2: key `transport.congestion`"),
            "{msg}"
        );

        assert_eq!(
            parse("[transport]\nmax_udp_payload = 1452\n")
                .map(|c| c.transport.max_udp_payload)
                .ok(),
            Some(1452)
        );
        for bad in ["1199", "65528", "70000"] {
            let e = parse(&format!("[transport]\nmax_udp_payload = {bad}\n")).map(|_| ());
            let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.starts_with("alknet.toml:2: key `transport.max_udp_payload`"),
                "{bad}: {msg}"
            );
        }

        let e = parse("[udp]\ngro = true\ngso_segments = 65\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:3: key `udp.gso_segments`"),
            "{msg}"
        );
        assert!(parse("[udp]\ngso_segments = 0\n").is_err());
        assert_eq!(
            parse("[udp]\ngso_segments = 1\n")
                .map(|c| c.udp.gso_segments)
                .ok(),
            Some(1)
        );

        let e = parse("listen = \"[::]:4433\"\n[tokio]\nthreads = 0\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:3: key `tokio.threads`"),
            "{msg}"
        );
        assert!(parse("[tokio]\nthreads = 65\n").is_err());
        assert!(parse("[tokio]\nbridge_buffer = 100\n").is_err());
        assert!(parse("[tokio]\nthread = 2\n").is_err());
        assert_eq!(
            parse("[tokio]\nthreads = 64\n")
                .map(|c| c.tokio.threads)
                .ok(),
            Some(64)
        );
        assert_eq!(parse("").map(|c| c.tokio.threads).ok(), Some(1));

        let e = parse("[[peers]]\nid = \"a\"\nfingerprints = [\"ed25519:zz\"]\n").map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:3: key `peers.fingerprints`"),
            "{msg}"
        );
    }

    #[test]
    fn one_key_under_two_peers_names_both_and_the_second_line() {
        let fp = "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
        let text = format!(
            "[[peers]]\nid = \"laptop\"\nfingerprints = [\"{fp}\"]\n[services.echo]\nenabled = true\n[[peers]]\nid = \"phone\"\nscopes = [\"*\"]\nfingerprints = [\"{fp}\"]\n"
        );
        let msg = parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.starts_with("alknet.toml:9: key `peers.fingerprints`: key ed25519:3b6a"),
            "{msg}"
        );
        assert!(
            msg.contains("peer `laptop` (line 3) and peer `phone`"),
            "{msg}"
        );
        // The same key twice under one peer is harmless.
        let text = format!("[[peers]]\nid = \"a\"\nfingerprints = [\"{fp}\", \"{fp}\"]\n");
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.peer_origin(0), "alknet.toml:2");
    }

    #[test]
    fn tunnel_rules_parse_and_bad_ones_name_line_and_key() {
        let text = r#"
[tunnels]
max_connections_per_peer = 10

[[tunnels.allow]]
peer = "laptop"
to = ["127.0.0.2:8080", "10.1.0.0/24:22", "db.lan:5432", "10.1.0.9:8000-8100"]
listen = ["127.0.0.1:9000-9100"]

[[tunnels.allow]]
scope = "ops"
to = ["*:443"]
"#;
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tunnels.max_connections_per_peer, 10);
        assert_eq!(c.tunnels.allow.len(), 2);
        assert_eq!(
            c.tunnels.allow[0].subject,
            TunnelSubject::Peer("laptop".into())
        );
        assert_eq!(c.tunnels.allow[0].to.len(), 4);
        assert_eq!(c.tunnels.allow[0].listen.len(), 1);
        assert_eq!(
            c.tunnels.allow[1].subject,
            TunnelSubject::Scope("ops".into())
        );
        assert!(Config::default().tunnels.allow.is_empty());

        let git = parse(
            "[[git.allow]]\npeer = \"laptop\"\nrepos = [\"org/*\"]\naccess = [\"read\", \"write\", \"create\"]\n\
             [[git.allow]]\nscope = \"dev\"\nrepos = [\"org/**\"]\naccess = [\"read\"]\n\
             [[git.protect]]\nrefs = [\"refs/heads/main\", \"refs/heads/release/*\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(git.git.allow.len(), 2);
        assert_eq!(git.git.allow[1].subject, GitSubject::Scope("dev".into()));
        assert_eq!(git.git.allow[0].access.len(), 3);
        assert_eq!(git.git.protect[0].refs.len(), 2);
        assert!(Config::default().git.allow.is_empty());
        assert!(!Config::default().git.protect.is_empty());
        let gbad = |text: &str| parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        let msg = gbad("[[git.allow]]\npeer = \"a\"\nrepos = [\"../x\"]\naccess = [\"read\"]\n");
        assert!(
            msg.starts_with("alknet.toml:3: key `git.allow.repos`"),
            "{msg}"
        );
        let msg = gbad("[[git.allow]]\npeer = \"a\"\nrepos = [\"x\"]\naccess = [\"admin\"]\n");
        assert!(
            msg.starts_with("alknet.toml:4: key `git.allow.access`"),
            "{msg}"
        );
        let msg = gbad("[[git.allow]]\nrepos = [\"x\"]\naccess = [\"read\"]\n");
        assert!(msg.contains("exactly one of `peer"), "{msg}");

        let bad = |text: &str| parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        let msg = bad("[[tunnels.allow]]\npeer = \"a\"\nto = [\"db.lan:99999\"]\n");
        assert!(
            msg.starts_with("alknet.toml:3: key `tunnels.allow.to`"),
            "{msg}"
        );
        assert!(msg.contains("not a port"), "{msg}");
        let msg = bad("[[tunnels.allow]]\npeer = \"a\"\nlisten = [\"localhost:9000\"]\n");
        assert!(
            msg.starts_with("alknet.toml:3: key `tunnels.allow.listen`"),
            "{msg}"
        );
        let msg = bad("\n[[tunnels.allow]]\npeer = \"a\"\nscope = \"ops\"\nto = []\n");
        assert!(msg.contains("exactly one of `peer"), "{msg}");
        assert!(
            msg.starts_with("alknet.toml:2: key `tunnels.allow`")
                || msg.starts_with("alknet.toml:3:"),
            "{msg}"
        );
        let msg = bad("[[tunnels.allow]]\nto = [\"db.lan:1\"]\n");
        assert!(msg.contains("exactly one of `peer"), "{msg}");
        let msg = bad("[[tunnels.allow]]\npeer = \"a\"\ntoo = []\n");
        assert!(
            msg.starts_with("alknet.toml:3: key `tunnels.allow.too`"),
            "{msg}"
        );
        let msg = bad("[tunnels]\n\nmax_connections_per_peer = 0\n");
        assert!(
            msg.starts_with("alknet.toml:3: key `tunnels.max_connections_per_peer`"),
            "{msg}"
        );
        let msg = bad("[tunnels]\nconnect_timeout = \"10m\"\n");
        assert!(
            msg.starts_with("alknet.toml:2: key `tunnels.connect_timeout`"),
            "{msg}"
        );
    }

    #[test]
    fn the_example_config_documents_the_tunnel_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alknet.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let (t, d) = (&c.tunnels, TunnelsConfig::default());
        assert!(t.allow.is_empty());
        assert_eq!(t.max_connections_per_peer, d.max_connections_per_peer);
        assert_eq!(t.max_listeners_per_peer, d.max_listeners_per_peer);
        assert_eq!(t.max_connections, d.max_connections);
        assert_eq!(t.connect_timeout, d.connect_timeout);
        assert!(c.source.text.contains("[tunnels]"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }
}

//! `[tunnels]`: which peers may forward TCP through the gateway, to where, and which ports
//! they may have it listen on. Read by the forwarding policy engine (`alknet-forward`),
//! shared by SSH port forwarding and the `alknet/tunnel` service.
//!
//! ```toml
//! [tunnels]
//! max_connections_per_peer = 256
//!
//! [[tunnels.allow]]
//! peer = "laptop"                      # or: scope = "ops"
//! to = ["127.0.0.2:8080", "10.1.0.0/24:22", "db.lan:5432", "10.1.0.9:8000-8100"]
//! listen = ["127.0.0.1:9000-9100"]     # remote forwards (ssh -R, alknet forward -R)
//! ```
//!
//! Patterns are checked here, when the file is read, so a typo is an error naming its file,
//! line and key, never a rule that silently matches nothing. What a pattern *means* (which
//! addresses a broad rule still refuses, how names are resolved) is the policy engine's
//! business; this module only gives the parsed shapes.

use super::ConfigDuration;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Longest host name accepted in a pattern (the DNS limit).
pub const MAX_NAME_LEN: usize = 253;

/// The `[tunnels]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelsConfig {
    /// The rules; with none, every forward is refused (default deny).
    pub allow: Vec<TunnelRule>,
    /// Forwarded TCP connections one peer may have open at once, over SSH and
    /// `alknet/tunnel` together (1..=65536).
    pub max_connections_per_peer: u32,
    /// Ports one peer may have the gateway listen on at once (remote forwards; 0..=1024,
    /// 0 turns remote forwarding off for everyone).
    pub max_listeners_per_peer: u32,
    /// Forwarded TCP connections the whole gateway may have open at once (1..=1048576).
    pub max_connections: u32,
    /// Time a TCP connect to a target may take before the forward is refused (100ms..=5m).
    pub connect_timeout: ConfigDuration,
}

impl Default for TunnelsConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_connections_per_peer: 256,
            max_listeners_per_peer: 16,
            max_connections: 4096,
            connect_timeout: ConfigDuration(Duration::from_secs(10)),
        }
    }
}

impl TunnelsConfig {
    /// Checks the caps; `Err((key, message))`, the key relative to `[tunnels]`.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=65536).contains(&self.max_connections_per_peer) {
            return Err((
                "max_connections_per_peer",
                format!("{}; must be 1..=65536", self.max_connections_per_peer),
            ));
        }
        if self.max_listeners_per_peer > 1024 {
            return Err((
                "max_listeners_per_peer",
                format!(
                    "{}; must be 0..=1024 (0 turns remote forwards off)",
                    self.max_listeners_per_peer
                ),
            ));
        }
        if !(1..=1 << 20).contains(&self.max_connections) {
            return Err((
                "max_connections",
                format!("{}; must be 1..=1048576", self.max_connections),
            ));
        }
        let t = self.connect_timeout.0;
        if t < Duration::from_millis(100) || t > Duration::from_secs(300) {
            return Err(("connect_timeout", "must be between 100ms and 5m".to_owned()));
        }
        Ok(())
    }
}

/// Who a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelSubject {
    /// The peer with this id.
    Peer(String),
    /// Every peer holding this scope.
    Scope(String),
}

/// One `[[tunnels.allow]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct TunnelRule {
    /// Who it applies to.
    pub subject: TunnelSubject,
    /// Targets the subject may connect to (local and dynamic forwards).
    pub to: Vec<TargetPattern>,
    /// Addresses and ports the subject may have the gateway listen on (remote forwards).
    pub listen: Vec<ListenPattern>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    peer: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    to: Vec<TargetPattern>,
    #[serde(default)]
    listen: Vec<ListenPattern>,
}

impl TryFrom<RawRule> for TunnelRule {
    type Error = String;
    fn try_from(r: RawRule) -> Result<Self, String> {
        let subject = match (r.peer, r.scope) {
            (Some(p), None) if !p.is_empty() => TunnelSubject::Peer(p),
            (None, Some(s)) if !s.is_empty() => TunnelSubject::Scope(s),
            _ => {
                return Err(
                    "a tunnel rule names exactly one of `peer = \"ID\"` or `scope = \"SCOPE\"`"
                        .into(),
                );
            }
        };
        Ok(TunnelRule {
            subject,
            to: r.to,
            listen: r.listen,
        })
    }
}

/// An inclusive port range; `*` is every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (at least `first`).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Parses `*`, `N` or `N-M`; port 0 only when `zero_ok` (a listener whose port the
    /// gateway picks).
    pub fn parse(s: &str, zero_ok: bool) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self {
                first: if zero_ok { 0 } else { 1 },
                last: u16::MAX,
            });
        }
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) if !zero_ok => Err("port 0 is not a target".to_owned()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!(
                    "`{p}` is not a port; write a number 1-65535, a range `8000-8100` or `*`"
                )),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!(
                "port range `{s}` runs backwards; write it low-high"
            ));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else if self.last == u16::MAX && self.first <= 1 {
            f.write_str("*")
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The host part of a `to` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// An address (a /32 or /128) or a CIDR range.
    Net(IpNet),
    /// One host name (lowercase, without a trailing dot).
    Name(String),
    /// `*.SUFFIX`: every name ending in `.SUFFIX` (lowercase, not the suffix itself).
    Suffix(String),
    /// `*`: any address and any name.
    Any,
}

/// One `to` entry: `HOST:PORTS`, HOST an address (`[v6]` in brackets), a CIDR range, a
/// name, `*.suffix` or `*`; PORTS a port, a range or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPattern {
    /// Where.
    pub host: HostPattern,
    /// Which ports.
    pub ports: PortRange,
}

/// One `listen` entry: `ADDRESS:PORTS`, ADDRESS an address or CIDR range (`[v6]` in
/// brackets); `0.0.0.0` or `[::]` lets the peer listen on every interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenPattern {
    /// Addresses a listener may bind.
    pub net: IpNet,
    /// Ports it may bind (0 included when written `*` or `0`: the gateway picks).
    pub ports: PortRange,
}

/// Splits `HOST:PORTS`, `[V6]:PORTS` or `[V6/LEN]:PORTS`.
fn split_host_ports(s: &str) -> Result<(&str, &str), String> {
    let (host, ports) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: `[` without `]`; write `[2001:db8::1]:443`"))?;
        let p = after
            .strip_prefix(':')
            .ok_or_else(|| format!("`{s}`: no port after `]`; write `[2001:db8::1]:443`"))?;
        (h, p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port; write HOST:PORT, e.g. `db.lan:5432`"))?;
        if h.contains(':') {
            return Err(format!(
                "`{s}`: write an IPv6 address in brackets, e.g. `[2001:db8::1]:443`"
            ));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok((host, ports))
}

/// An IPv4-mapped IPv6 address or range (`::ffff:a.b.c.d`) as the IPv4 it stands for.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

/// Parses an address (as a single-address range) or a CIDR range, host bits cleared.
fn parse_net(s: &str) -> Option<Result<IpNet, String>> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Ok(canonical_net(IpNet::from(ip))));
    }
    let (addr, len) = s.split_once('/')?;
    let ip = addr.parse::<IpAddr>().ok()?;
    Some(match len.parse::<u8>().ok().map(|l| IpNet::new(ip, l)) {
        Some(Ok(n)) => Ok(canonical_net(n.trunc())),
        _ => Err(format!(
            "`{s}`: `/{len}` is not a prefix length of this address family"
        )),
    })
}

/// Checks a host name: 1..=253 bytes of letters, digits, `-`, `_` and dots, no empty label,
/// labels of at most 63. Returns it lowercase, without a trailing dot.
pub fn normalize_name(s: &str) -> Result<String, String> {
    let t = s.strip_suffix('.').unwrap_or(s);
    let ok = !t.is_empty()
        && t.len() <= MAX_NAME_LEN
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(format!(
            "`{}` is not a host name, an address or a CIDR range",
            s.escape_default()
        ));
    }
    Ok(t.to_ascii_lowercase())
}

impl std::str::FromStr for TargetPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, ports) = split_host_ports(s)?;
        let ports = PortRange::parse(ports, false)?;
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(net) = parse_net(host) {
            HostPattern::Net(net?)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Suffix(normalize_name(suffix)?)
        } else {
            HostPattern::Name(normalize_name(host)?)
        };
        Ok(Self { host, ports })
    }
}

impl std::str::FromStr for ListenPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, ports) = split_host_ports(s)?;
        let ports = PortRange::parse(ports, true)?;
        match parse_net(host) {
            Some(net) => Ok(Self { net: net?, ports }),
            None => Err(format!(
                "`{s}`: a listen address is an IP address or CIDR range, e.g. `127.0.0.1:9000-9100` or `0.0.0.0:8080`"
            )),
        }
    }
}

impl fmt::Display for TargetPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Net(n) => write_net(f, n)?,
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Suffix(s) => write!(f, "*.{s}")?,
            HostPattern::Any => f.write_str("*")?,
        }
        write!(f, ":{}", self.ports)
    }
}

impl fmt::Display for ListenPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_net(f, &self.net)?;
        write!(f, ":{}", self.ports)
    }
}

fn write_net(f: &mut fmt::Formatter<'_>, n: &IpNet) -> fmt::Result {
    let single = n.prefix_len() == n.max_prefix_len();
    match (n, single) {
        (IpNet::V4(v), true) => write!(f, "{}", v.addr()),
        (IpNet::V4(v), false) => write!(f, "{v}"),
        (IpNet::V6(v), true) => write!(f, "[{}]", v.addr()),
        (IpNet::V6(v), false) => write!(f, "[{v}]"),
    }
}

impl<'de> Deserialize<'de> for TargetPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ListenPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<TargetPattern, String> {
        s.parse()
    }

    #[test]
    fn target_patterns_parse_and_print_back() {
        for s in [
            "127.0.0.2:8080",
            "10.1.0.0/24:22",
            "db.lan:5432",
            "10.1.0.9:8000-8100",
            "[::1]:22",
            "[2001:db8::/32]:443",
            "*.lan:*",
            "*:443",
        ] {
            let p = t(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            t("DB.Lan.:5432").map(|p| p.host),
            Ok(HostPattern::Name("db.lan".into()))
        );
        // Host bits are cleared; a mapped address is its IPv4.
        assert_eq!(
            t("10.1.0.7/24:22").map(|p| p.to_string()).ok().as_deref(),
            Some("10.1.0.0/24:22")
        );
        assert_eq!(
            t("[::ffff:127.0.0.1]:80")
                .map(|p| p.to_string())
                .ok()
                .as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(t("a:*").map(|p| p.ports.first), Ok(1));
    }

    #[test]
    fn bad_target_patterns_say_what_to_write() {
        for (s, needle) in [
            ("db.lan", "has no port"),
            ("db.lan:", "not a port"),
            ("db.lan:0", "port 0"),
            ("db.lan:70000", "not a port"),
            ("db.lan:90-80", "backwards"),
            ("::1:22", "brackets"),
            ("[::1:22", "without `]`"),
            ("[::1]22", "no port after"),
            ("10.0.0.0/33:22", "prefix length"),
            ("bad name:22", "not a host name"),
            ("a..b:22", "not a host name"),
            (":22", "no host"),
            ("*.:22", "not a host name"),
        ] {
            let e = t(s).err().unwrap_or_default();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn listen_patterns() {
        let p: ListenPattern = "127.0.0.1:9000-9100"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.ports.contains(9050) && !p.ports.contains(9101));
        let any: ListenPattern = "0.0.0.0:*".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(any.ports.contains(0));
        assert!("localhost:9000".parse::<ListenPattern>().is_err());
        assert!("[::1]:0".parse::<ListenPattern>().is_ok());
    }
}

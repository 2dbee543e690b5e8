//! The forwarding decisions, pure: who may connect where, and listen where, from the
//! `[tunnels]` rules, the target's resolved addresses and the gateway's own addresses.
//! No I/O happens here; [`crate::Forwarder`] resolves names, connects and binds.
//!
//! Rules, for a requester (a peer id and its scopes):
//!
//! - **Default deny.** A rule applies to a peer it names (`peer = "ID"`) or to every peer
//!   holding its scope (`scope = "S"`). No rule that applies, no forward.
//! - **Ports** must lie in the pattern's ports; port 0 is never a target.
//! - **Address patterns** (`10.1.0.0/24:22`, `127.0.0.2:8080`) match an address they contain,
//!   and *name* it only as [`crate::class`] allows: a loopback, link-local, unique-local or
//!   otherwise protected address is named only by a pattern inside its block (`127.0.0.1`,
//!   `127.0.0.0/8`, `fe80::/10`); a private address (RFC 1918, 100.64/10) only by a pattern
//!   inside its private block (`10.0.0.0/8:*` opens 10/8; `0.0.0.0/0:*` opens neither it
//!   nor loopback); the gateway's own address only by a pattern of that single address.
//! - **Name patterns** (`db.lan:5432`, `*.lan:*`) match a requested host name. The name is
//!   resolved once, on the gateway, and every resolved address is checked too: a name
//!   pattern opens public and private addresses (the operator named the host), never a
//!   protected one or the gateway's own (a name that resolves to 127.0.0.1 is refused
//!   unless an address pattern names 127.0.0.1). A resolved address may also be allowed by
//!   an address pattern, under the address rules above.
//! - **`*:PORTS`** matches any address or name, and opens public addresses only.
//!
//! The decision returns the addresses that passed, and the connection goes to exactly
//! those: nothing is resolved twice, so a name whose answer changes after the check
//! (DNS rebinding) reaches only what was checked.
//!
//! Listening (remote forwards): the bind address must lie in a `listen` pattern and the
//! port in its ports. `0.0.0.0` and `[::]` (every interface) are allowed only by a pattern
//! written with that very address; a request for every interface (`""`, `*`) that no
//! pattern allows falls back to loopback, as OpenSSH's `GatewayPorts no` does; a request
//! for `localhost` means 127.0.0.1. Bind addresses are never resolved.

use crate::class::{self, Class};
use alknet_core::config::{
    HostPattern, ListenPattern, TargetPattern, TunnelRule, TunnelSubject, TunnelsConfig,
    normalize_name,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use thiserror::Error;

/// Most resolved addresses of one name that are checked (and tried, in order).
pub const MAX_ADDRESSES: usize = 16;

/// Who asks for a forward.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// The peer id.
    pub peer: &'a str,
    /// The peer's scopes.
    pub scopes: &'a [String],
}

/// Why a forward was refused. The `Display` text is safe to send to the peer: it names no
/// rule and no other peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No `[[tunnels.allow]]` rule applies to the peer.
    #[error("no tunnel rule allows this peer to forward")]
    NoRule,
    /// The target host is neither an address nor a valid name.
    #[error("the target is not an address or host name")]
    BadHost,
    /// Port 0, or a port above 65535.
    #[error("the port is not valid")]
    BadPort,
    /// No rule allows this host and port.
    #[error("no tunnel rule allows this target")]
    NotAllowed,
    /// The target is an address of a class a rule must name (loopback, …), and none does.
    #[error("the target is a {0} address, which only a rule naming it opens")]
    Protected(&'static str),
    /// The name did not resolve.
    #[error("the target name does not resolve")]
    Unresolved,
    /// The peer holds its cap of forwarded connections.
    #[error("the peer holds its cap of forwarded connections")]
    ConnectionCap,
    /// The gateway holds its cap of forwarded connections.
    #[error("the gateway holds its cap of forwarded connections")]
    GatewayCap,
    /// The peer holds its cap of listeners.
    #[error("the peer holds its cap of listening ports")]
    ListenerCap,
    /// The target refused or did not answer.
    #[error("the target cannot be reached")]
    Unreachable,
    /// The bind failed (address in use, not local, …).
    #[error("the gateway cannot listen there")]
    BindFailed,
}

/// The caps, from `[tunnels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Forwarded connections per peer.
    pub connections_per_peer: u32,
    /// Listeners per peer.
    pub listeners_per_peer: u32,
    /// Forwarded connections on the gateway.
    pub connections: u32,
    /// Time a connect may take.
    pub connect_timeout: Duration,
}

/// A requested target host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An address literal.
    Ip(IpAddr),
    /// A host name (lowercase, no trailing dot).
    Name(String),
}

impl Host {
    /// Reads a host as a peer sent it: an address (IPv6 with or without brackets) or a name.
    pub fn parse(s: &str) -> Result<Self, Refusal> {
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::Ip(class::canonical(ip)));
        }
        normalize_name(s)
            .map(Host::Name)
            .map_err(|_| Refusal::BadHost)
    }
}

/// The forwarding policy: the rules and caps of one configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<TunnelRule>,
    caps: Caps,
}

impl Default for Policy {
    /// Refuses everything, with the default caps.
    fn default() -> Self {
        Self::new(&TunnelsConfig::default())
    }
}

impl Policy {
    /// The policy of a `[tunnels]` section.
    pub fn new(config: &TunnelsConfig) -> Self {
        Self {
            rules: config.allow.clone(),
            caps: Caps {
                connections_per_peer: config.max_connections_per_peer,
                listeners_per_peer: config.max_listeners_per_peer,
                connections: config.max_connections,
                connect_timeout: config.connect_timeout.0,
            },
        }
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    fn rules_for<'s>(&'s self, who: &Requester<'_>) -> impl Iterator<Item = &'s TunnelRule> {
        let peer = who.peer.to_owned();
        let scopes = who.scopes.to_vec();
        self.rules.iter().filter(move |r| match &r.subject {
            TunnelSubject::Peer(p) => *p == peer,
            TunnelSubject::Scope(s) => scopes.iter().any(|x| x == s),
        })
    }

    fn targets_for<'s>(
        &'s self,
        who: &Requester<'_>,
        port: u16,
    ) -> impl Iterator<Item = &'s TargetPattern> {
        self.rules_for(who)
            .flat_map(|r| r.to.iter())
            .filter(move |p| p.ports.contains(port))
    }

    /// Whether resolving `host` could lead anywhere: some rule of the requester has a
    /// pattern for this port that a name or its addresses could match. When not, the
    /// forward is refused before any DNS query.
    pub fn precheck(&self, who: &Requester<'_>, host: &Host, port: u16) -> Result<(), Refusal> {
        if port == 0 {
            return Err(Refusal::BadPort);
        }
        if self.rules_for(who).next().is_none() {
            return Err(Refusal::NoRule);
        }
        let mut patterns = self.targets_for(who, port);
        let possible = match host {
            Host::Ip(_) => {
                patterns.any(|p| matches!(p.host, HostPattern::Net(_) | HostPattern::Any))
            }
            Host::Name(n) => patterns.any(|p| match &p.host {
                HostPattern::Name(m) => m == n,
                HostPattern::Suffix(s) => name_in(n, s),
                HostPattern::Net(_) | HostPattern::Any => true,
            }),
        };
        if possible {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// Decides an outbound forward to `host:port`, whose addresses are `addrs` (the literal
    /// itself for an address; the one resolution of a name), on a gateway whose own
    /// addresses are `own`. Returns the addresses to connect to, in order: exactly the ones
    /// checked, at most [`MAX_ADDRESSES`].
    pub fn decide_connect(
        &self,
        who: &Requester<'_>,
        host: &Host,
        port: u16,
        addrs: &[IpAddr],
        own: &[IpAddr],
    ) -> Result<Vec<SocketAddr>, Refusal> {
        self.precheck(who, host, port)?;
        let addrs: Vec<IpAddr> = match host {
            Host::Ip(ip) => vec![class::canonical(*ip)],
            Host::Name(_) => {
                let mut v: Vec<IpAddr> = Vec::new();
                for a in addrs.iter().map(|a| class::canonical(*a)) {
                    if !v.contains(&a) && v.len() < MAX_ADDRESSES {
                        v.push(a);
                    }
                }
                v
            }
        };
        if addrs.is_empty() {
            return Err(Refusal::Unresolved);
        }
        let mut allowed = Vec::new();
        let mut refusal = Refusal::NotAllowed;
        for ip in addrs {
            let class = class::classify(ip, own);
            if self
                .targets_for(who, port)
                .any(|p| allows(p, host, ip, class))
            {
                allowed.push(SocketAddr::new(ip, port));
            } else if !matches!(class, Class::Public) && refusal == Refusal::NotAllowed {
                refusal = Refusal::Protected(class.name());
            }
        }
        if allowed.is_empty() {
            Err(refusal)
        } else {
            Ok(allowed)
        }
    }

    /// Decides a listener for `bind:port` as an SSH `tcpip-forward` or a tunnel client
    /// asks for it. Returns the address to bind (port 0: the gateway picks).
    pub fn decide_listen(
        &self,
        who: &Requester<'_>,
        bind: &str,
        port: u32,
    ) -> Result<SocketAddr, Refusal> {
        let port = u16::try_from(port).map_err(|_| Refusal::BadPort)?;
        if self.rules_for(who).next().is_none() {
            return Err(Refusal::NoRule);
        }
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (wanted, wildcard) = match bind {
            "" | "*" => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), true),
            "localhost" => (loopback, false),
            s => {
                let bare = s
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .unwrap_or(s);
                let ip = bare
                    .parse::<IpAddr>()
                    .map(class::canonical)
                    .map_err(|_| Refusal::BadHost)?;
                (ip, ip.is_unspecified())
            }
        };
        let may = |ip: IpAddr| {
            self.rules_for(who)
                .flat_map(|r| r.listen.iter())
                .any(|p| listen_allows(p, ip, port))
        };
        if may(wanted) {
            return Ok(SocketAddr::new(wanted, port));
        }
        if wildcard {
            let lo = if wanted == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            } else {
                loopback
            };
            if may(lo) {
                return Ok(SocketAddr::new(lo, port));
            }
        }
        Err(Refusal::NotAllowed)
    }
}

/// Whether `name` is a strict subdomain of `suffix`.
fn name_in(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len()
        && name.ends_with(suffix)
        && name.as_bytes().get(name.len() - suffix.len() - 1) == Some(&b'.')
}

/// Whether pattern `p` (its port already matched) allows address `ip` of class `class`,
/// reached as `host`.
fn allows(p: &TargetPattern, host: &Host, ip: IpAddr, class: Class) -> bool {
    let by_name = |host: &Host| match (host, &p.host) {
        (Host::Name(n), HostPattern::Name(m)) => n == m,
        (Host::Name(n), HostPattern::Suffix(s)) => name_in(n, s),
        _ => false,
    };
    match &p.host {
        HostPattern::Net(net) => class::net_names(net, ip, class),
        HostPattern::Any => class == Class::Public,
        HostPattern::Name(_) | HostPattern::Suffix(_) => {
            by_name(host) && matches!(class, Class::Public | Class::Private(_))
        }
    }
}

fn listen_allows(p: &ListenPattern, ip: IpAddr, port: u16) -> bool {
    if !p.ports.contains(port) {
        return false;
    }
    if ip.is_unspecified() {
        // Every interface: only a pattern of that very address.
        p.net.prefix_len() == p.net.max_prefix_len() && p.net.addr() == ip
    } else {
        p.net.contains(&ip)
    }
}

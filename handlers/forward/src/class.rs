//! What kind of address a target is: the classes a broad rule does not open.
//!
//! Every address falls in one class, checked in this order:
//!
//! | class       | blocks |
//! |-------------|--------|
//! | `Protected` | loopback (127/8, ::1), link-local (169.254/16, fe80::/10), unique-local (fc00::/7), unspecified (0/8, ::), multicast (224/4, ff00::/8), reserved and broadcast (240/4), IPv4-compatible (::/96), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16), site-local (fec0::/10), discard (100::/64) |
//! | `Own`       | an address of one of the gateway's interfaces (not already protected) |
//! | `Private`   | RFC 1918 (10/8, 172.16/12, 192.168/16), shared address space (100.64/10), benchmarking (198.18/15) |
//! | `Public`    | everything else |
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are classed, and connected to, as the IPv4
//! address they carry, so `[::ffff:127.0.0.1]` is loopback. NAT64 and 6to4 addresses embed
//! an IPv4 address a translator would reach, which could be any of the above: they are
//! protected as a whole.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, with the block it was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// On the internet at large.
    Public,
    /// A private range: reachable through a rule that names an address or range inside it,
    /// or a host name.
    Private(Block),
    /// One of the gateway's own addresses: only a rule naming that very address opens it.
    Own,
    /// Loopback, link-local, unique-local and the like: only a rule naming an address or a
    /// range inside the block opens it.
    Protected(Block),
}

impl Class {
    /// A short name for logs and refusals (`loopback`, `private`, `public`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Private(b) | Class::Protected(b) => b.name,
            Class::Own => "gateway-own",
        }
    }
}

/// A named address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// What it is (`loopback`, `link-local`, …).
    pub name: &'static str,
    /// The range.
    pub net: IpNet,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], len: u8) -> IpNet {
    IpNet::new_assert(
        IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        len,
    )
}

const fn block(name: &'static str, net: IpNet) -> Block {
    Block { name, net }
}

/// Protected blocks, narrowest first where they nest (`::1` before `::/96`).
pub const PROTECTED: &[Block] = &[
    block("unspecified", v4(0, 0, 0, 0, 8)),
    block("loopback", v4(127, 0, 0, 0, 8)),
    block("link-local", v4(169, 254, 0, 0, 16)),
    block("multicast", v4(224, 0, 0, 0, 4)),
    block("reserved", v4(240, 0, 0, 0, 4)),
    block("unspecified", v6([0, 0, 0, 0, 0, 0, 0, 0], 128)),
    block("loopback", v6([0, 0, 0, 0, 0, 0, 0, 1], 128)),
    block("ipv4-compatible", v6([0, 0, 0, 0, 0, 0, 0, 0], 96)),
    block("nat64", v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)),
    block("nat64", v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48)),
    block("discard", v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64)),
    block("6to4", v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16)),
    block("link-local", v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10)),
    block("site-local", v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10)),
    block("unique-local", v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7)),
    block("multicast", v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8)),
];

/// Private blocks.
pub const PRIVATE: &[Block] = &[
    block("private", v4(10, 0, 0, 0, 8)),
    block("private", v4(172, 16, 0, 0, 12)),
    block("private", v4(192, 168, 0, 0, 16)),
    block("shared", v4(100, 64, 0, 0, 10)),
    block("benchmarking", v4(198, 18, 0, 0, 15)),
];

/// The address a connection would reach: an IPv4-mapped IPv6 address as its IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The class of `ip` (canonicalised first) on a gateway whose interfaces have `own`.
pub fn classify(ip: IpAddr, own: &[IpAddr]) -> Class {
    let ip = canonical(ip);
    if let Some(b) = PROTECTED.iter().find(|b| b.net.contains(&ip)) {
        return Class::Protected(*b);
    }
    if own.iter().any(|o| canonical(*o) == ip) {
        return Class::Own;
    }
    if let Some(b) = PRIVATE.iter().find(|b| b.net.contains(&ip)) {
        return Class::Private(*b);
    }
    Class::Public
}

/// Whether an address rule `net` names `ip` of class `class`: it contains `ip`, and for a
/// class a broad rule does not open, it lies inside that class's block (for the gateway's
/// own address, it is that single address).
pub fn net_names(net: &IpNet, ip: IpAddr, class: Class) -> bool {
    let ip = canonical(ip);
    if !net.contains(&ip) {
        return false;
    }
    match class {
        Class::Public => true,
        Class::Private(b) | Class::Protected(b) => b.net.contains(net),
        Class::Own => net.prefix_len() == net.max_prefix_len(),
    }
}

/// The addresses of this host's interfaces (empty when they cannot be listed).
pub fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn classes() {
        let own = [ip("192.0.2.10"), ip("10.0.2.15")];
        for (a, name) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("fc00::1", "unique-local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::7f00:1", "ipv4-compatible"),
            ("64:ff9b::7f00:1", "nat64"),
            ("2002:7f00:1::", "6to4"),
            ("10.1.2.3", "private"),
            ("172.31.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("198.19.0.1", "benchmarking"),
            ("192.0.2.10", "gateway-own"),
            ("10.0.2.15", "gateway-own"),
            ("93.184.216.34", "public"),
            ("2001:4860::8888", "public"),
        ] {
            assert_eq!(classify(ip(a), &own).name(), name, "{a}");
        }
    }

    #[test]
    fn broad_rules_do_not_name_protected_addresses() {
        let own = [ip("10.0.2.15")];
        let net = |s: &str| s.parse::<IpNet>().unwrap_or_else(|e| panic!("{s}: {e}"));
        let names = |n: &str, a: &str| net_names(&net(n), ip(a), classify(ip(a), &own));
        assert!(!names("0.0.0.0/0", "127.0.0.1"));
        assert!(!names("0.0.0.0/0", "10.1.0.1"));
        assert!(names("0.0.0.0/0", "93.184.216.34"));
        assert!(!names("::/0", "::1"));
        assert!(!names("::/0", "fd00::1"));
        assert!(names("127.0.0.0/8", "127.0.0.2"));
        assert!(names("127.0.0.1/32", "127.0.0.1"));
        assert!(!names("127.0.0.1/32", "127.0.0.2"));
        assert!(names("10.0.0.0/8", "10.1.0.1"));
        assert!(!names("8.0.0.0/5", "10.1.0.1"));
        assert!(!names("10.0.0.0/8", "10.0.2.15"));
        assert!(names("10.0.2.15/32", "10.0.2.15"));
        assert!(names("fe80::/10", "fe80::1"));
        assert!(!names("fe80::/9", "fe80::1"));
    }

    #[test]
    fn interfaces_include_loopback() {
        // Every Linux host has `lo`.
        assert!(interface_addresses().contains(&ip("127.0.0.1")));
    }
}

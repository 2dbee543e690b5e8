//! The data path below the shard: sockets and the syscalls they need ([`udp`], [`sys`]), the
//! QUIC endpoint configuration ([`endpoint`]), and starting and stopping the workers
//! ([`server`]).

pub mod endpoint;
pub mod server;
pub mod sys;
pub mod tcp;
pub mod udp;

/// The source a per-source limit counts `ip` as: the address itself for IPv4 (an
/// IPv4-mapped IPv6 address as its IPv4 form), the /64 for IPv6, since one host holds a
/// whole /64 and would otherwise get a budget per address.
pub fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

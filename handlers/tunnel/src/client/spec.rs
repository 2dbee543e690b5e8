//! The forward specifications of `alknet forward`: `-L [BIND:]PORT:HOST:HOSTPORT` and
//! `-R [BIND:]PORT:HOST:HOSTPORT`, written as for `ssh`. IPv6 addresses go in brackets
//! (`[::1]:8080:[fd00::5]:22`); an empty BIND or `*` means every address; without BIND the
//! forward listens on loopback.

use alknet_proto::tunnel::{Host, Target};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// One forward: where the listening side listens, and where its connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardSpec {
    /// The listening address: on this machine for `-L`, on the gateway for `-R`.
    pub listen: Target,
    /// The destination: dialled by the gateway for `-L`, by this machine for `-R`.
    pub to: Target,
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.listen, self.to)
    }
}

/// The address a forward without BIND listens on.
pub const DEFAULT_BIND: Host = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));

/// Splits `text` at the colons outside brackets; a bracketed field comes back without its
/// brackets.
fn fields(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' if cur.is_empty() => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(c) => inner.push(c),
                        None => return Err("a `[` has no closing `]`".into()),
                    }
                }
                if inner.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("[{inner}] is not an IPv6 address"));
                }
                cur = format!("[{inner}]");
                match chars.next() {
                    None => break,
                    Some(':') => out.push(std::mem::take(&mut cur)),
                    Some(_) => return Err("`]` must be followed by `:`".into()),
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    Ok(out)
}

fn port(text: &str, what: &str, zero_ok: bool) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) if !zero_ok => Err(format!("{what} {text:?} must be 1..=65535")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{what} {text:?} is not a port number (0..=65535)")),
    }
}

fn host(text: &str, what: &str) -> Result<Host, String> {
    Host::parse(text).ok_or_else(|| {
        format!("{what} {text:?} is not an address or host name (letters, digits, `-`, `_`, `.`)")
    })
}

fn bind(text: &str) -> Result<Host, String> {
    match text {
        "" | "*" => Ok(Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
        "localhost" => Ok(DEFAULT_BIND),
        t => host(t, "the listening address"),
    }
}

/// Parses one `[BIND:]PORT:HOST:HOSTPORT` (`zero_port_ok`: PORT may be 0, any free port).
pub fn parse_forward(text: &str, zero_port_ok: bool) -> Result<ForwardSpec, String> {
    let f = fields(text)?;
    let (b, p, h, hp) = match f.as_slice() {
        [p, h, hp] => (None, p, h, hp),
        [b, p, h, hp] => (Some(b.as_str()), p, h, hp),
        _ => {
            return Err(
                "expected [BIND:]PORT:HOST:HOSTPORT, e.g. 8080:db.lan:5432 (IPv6 in brackets)"
                    .into(),
            );
        }
    };
    let listen = Target {
        host: match b {
            Some(b) => bind(b)?,
            None => DEFAULT_BIND,
        },
        port: port(p, "the listening port", zero_port_ok)?,
    };
    let to = Target {
        host: host(h, "the destination host")?,
        port: port(hp, "the destination port", false)?,
    };
    Ok(ForwardSpec { listen, to })
}

/// Whether listening on `host` lets other machines in: anything but a loopback address.
pub fn exposed(host: &Host) -> bool {
    match host {
        Host::Ip(ip) => !ip.is_loopback(),
        Host::Name(n) => n != "localhost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn t(host: Host, port: u16) -> Target {
        Target { host, port }
    }

    #[test]
    fn forwards_parse_as_ssh_writes_them() {
        let s = parse_forward("8080:db.lan:5432", false).unwrap();
        assert_eq!(s.listen, t(DEFAULT_BIND, 8080));
        assert_eq!(s.to, t(Host::Name("db.lan".into()), 5432));
        let s = parse_forward("0.0.0.0:9000:127.0.0.1:80", false).unwrap();
        assert_eq!(s.listen, t(Host::Ip(Ipv4Addr::UNSPECIFIED.into()), 9000));
        assert_eq!(s.to, t(Host::Ip(Ipv4Addr::LOCALHOST.into()), 80));
        let s = parse_forward("[::1]:8080:[fd00::5]:22", false).unwrap();
        assert_eq!(s.listen, t(Host::Ip(Ipv6Addr::LOCALHOST.into()), 8080));
        assert_eq!(
            s.to,
            t(Host::Ip("fd00::5".parse::<Ipv6Addr>().unwrap().into()), 22)
        );
        assert_eq!(
            parse_forward("*:1:h:2", false).unwrap().listen.host,
            Host::Ip(Ipv4Addr::UNSPECIFIED.into())
        );
        assert_eq!(
            parse_forward(":1:h:2", false).unwrap().listen.host,
            Host::Ip(Ipv4Addr::UNSPECIFIED.into())
        );
        assert_eq!(
            parse_forward("localhost:1:h:2", false).unwrap().listen.host,
            DEFAULT_BIND
        );
        assert_eq!(parse_forward("0:h:2", true).unwrap().listen.port, 0);
        assert!(!exposed(&DEFAULT_BIND));
        assert!(exposed(&Host::Ip(Ipv4Addr::UNSPECIFIED.into())));
        assert_eq!(
            parse_forward("8080:db.lan:5432", false)
                .unwrap()
                .to_string(),
            "127.0.0.1:8080 -> db.lan:5432"
        );
    }

    #[test]
    fn bad_forwards_say_what_is_wrong() {
        let e = |s: &str| parse_forward(s, false).unwrap_err();
        assert!(e("8080").contains("expected [BIND:]PORT:HOST:HOSTPORT"));
        assert!(e("1:2:3:4:5").contains("expected"));
        assert!(e("x:db:1").contains("listening port \"x\""));
        assert!(e("0:db:1").contains("must be 1..=65535"));
        assert!(e("1:db:70000").contains("destination port \"70000\""));
        assert!(e("1:d b:2").contains("destination host \"d b\""));
        assert!(e("[::1:1:h:2").contains("IPv6") || e("[::1:1:h:2").contains("`]`"));
        assert!(e("[nope]:1:h:2").contains("not an IPv6 address"));
        assert!(e("[::1]x:1:h:2").contains("followed by `:`"));
    }
}

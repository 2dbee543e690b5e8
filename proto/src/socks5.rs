//! SOCKS5 (RFC 1928), the part `alknet socks` serves: the no-authentication method and the
//! CONNECT command, to IPv4, IPv6 and domain-name targets.
//!
//! ```text
//! greeting (client)   byte 0 version = 5 | byte 1 n methods (1..=255) | n method bytes
//! method (server)     byte 0 version = 5 | byte 1 method: 0x00 no auth | 0xff none acceptable
//! request (client)    byte 0 version = 5 | byte 1 command: 0x01 CONNECT | 0x02 BIND | 0x03 UDP
//!                     byte 2 reserved = 0 | byte 3 address type: 0x01 IPv4 | 0x03 name | 0x04 IPv6
//!                     IPv4: 4 bytes | IPv6: 16 bytes | name: length (1..=255), that many bytes
//!                     2 bytes port, big-endian
//! reply (server)      byte 0 version = 5 | byte 1 reply code (see ReplyCode) | byte 2 reserved = 0
//!                     address type, bound address and port as in the request
//! ```
//!
//! The address encoding is the `alknet/tunnel` header's ([`crate::tunnel`]), which is why a
//! SOCKS target crosses into a tunnel header unchanged; names obey [`crate::tunnel::valid_name`].
//! Decoding reports [`Decoded::Incomplete`] until a whole message is there (at most
//! [`MAX_MESSAGE_LEN`] bytes) and never reads past it.
//!
//! This module does no I/O; `alknet socks` drives it.

use crate::tunnel::{Cursor, Decoded, HeaderError, Host, MAX_NAME_LEN, Target};
use std::net::SocketAddr;
use thiserror::Error;

/// The SOCKS version byte.
pub const VERSION: u8 = 5;

/// The "no authentication required" method.
pub const NO_AUTH: u8 = 0x00;

/// The "no acceptable methods" answer.
pub const NO_ACCEPTABLE: u8 = 0xff;

/// The longest SOCKS5 message this module reads: a greeting with 255 methods, or a request
/// with a 255-byte name.
pub const MAX_MESSAGE_LEN: usize = 4 + 1 + MAX_NAME_LEN + 2;

/// Why bytes are not a SOCKS5 message, with the reply code the server answers a request with.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Socks5Error {
    /// Not SOCKS version 5 (a SOCKS4 client, or not SOCKS at all).
    #[error("SOCKS version {0} is not supported (only SOCKS5)")]
    Version(u8),
    /// A greeting offering no method.
    #[error("the SOCKS greeting offers no authentication method")]
    NoMethods,
    /// A command other than CONNECT, BIND and UDP ASSOCIATE.
    #[error("unknown SOCKS command {0:#04x}")]
    Command(u8),
    /// The reserved byte is not zero.
    #[error("the SOCKS reserved byte is {0:#04x}, not 0")]
    Reserved(u8),
    /// An unknown address type.
    #[error("unknown SOCKS address type {0:#04x}")]
    AddressType(u8),
    /// An empty name, or one holding a byte a host name may not.
    #[error("the SOCKS target name is empty or not a host name")]
    Name,
}

impl Socks5Error {
    /// The reply code a server answers a request that failed to decode with.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            Socks5Error::Command(_) => ReplyCode::CommandNotSupported,
            Socks5Error::AddressType(_) => ReplyCode::AddressTypeNotSupported,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

fn from_header(e: HeaderError) -> Socks5Error {
    match e {
        HeaderError::AddressType(t) => Socks5Error::AddressType(t),
        _ => Socks5Error::Name,
    }
}

/// A client's greeting: the authentication methods it offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// The methods, as sent (1..=255 of them).
    pub methods: Vec<u8>,
}

impl Greeting {
    /// Decodes a greeting from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Greeting>, Socks5Error> {
        let mut c = Cursor::new(buf);
        let Some(v) = c.u8() else {
            return Ok(Decoded::Incomplete);
        };
        if v != VERSION {
            return Err(Socks5Error::Version(v));
        }
        let Some(n) = c.u8() else {
            return Ok(Decoded::Incomplete);
        };
        if n == 0 {
            return Err(Socks5Error::NoMethods);
        }
        let Some(m) = c.take(usize::from(n)) else {
            return Ok(Decoded::Incomplete);
        };
        Ok(Decoded::Done(
            Greeting {
                methods: m.to_vec(),
            },
            c.at,
        ))
    }

    /// The greeting bytes (at most 255 methods are sent).
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.methods[..self.methods.len().min(255)];
        let mut out = vec![VERSION, m.len() as u8];
        out.extend_from_slice(m);
        out
    }

    /// The server's method answer: no authentication if offered, else none acceptable.
    pub fn answer(&self) -> [u8; 2] {
        if self.methods.contains(&NO_AUTH) {
            [VERSION, NO_AUTH]
        } else {
            [VERSION, NO_ACCEPTABLE]
        }
    }
}

/// A SOCKS command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    /// Connect to the target (the only one served).
    Connect = 0x01,
    /// Listen for one connection from the target.
    Bind = 0x02,
    /// Relay UDP.
    UdpAssociate = 0x03,
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// The target.
    pub target: Target,
}

impl Request {
    /// Decodes a request from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Request>, Socks5Error> {
        let mut c = Cursor::new(buf);
        let (Some(v), Some(cmd), Some(rsv)) = (c.u8(), c.u8(), c.u8()) else {
            // A short buffer is incomplete, but a wrong first byte is an error at once.
            return match buf.first() {
                Some(&v) if v != VERSION => Err(Socks5Error::Version(v)),
                _ => Ok(Decoded::Incomplete),
            };
        };
        if v != VERSION {
            return Err(Socks5Error::Version(v));
        }
        let command = match cmd {
            0x01 => Command::Connect,
            0x02 => Command::Bind,
            0x03 => Command::UdpAssociate,
            other => return Err(Socks5Error::Command(other)),
        };
        if rsv != 0 {
            return Err(Socks5Error::Reserved(rsv));
        }
        match crate::tunnel::read_target(&mut c, true).map_err(from_header)? {
            Some(target) => Ok(Decoded::Done(Request { command, target }, c.at)),
            None => Ok(Decoded::Incomplete),
        }
    }

    /// The request bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Socks5Error> {
        let mut out = vec![VERSION, self.command as u8, 0];
        crate::tunnel::write_target(&mut out, &self.target).map_err(from_header)?;
        Ok(out)
    }
}

/// The reply codes of RFC 1928 section 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    /// Succeeded.
    Succeeded = 0x00,
    /// General SOCKS server failure.
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// TTL expired.
    TtlExpired = 0x06,
    /// Command not supported.
    CommandNotSupported = 0x07,
    /// Address type not supported.
    AddressTypeNotSupported = 0x08,
}

impl ReplyCode {
    /// The code for a byte; unassigned ones are `None`.
    pub fn from_byte(b: u8) -> Option<ReplyCode> {
        use ReplyCode::*;
        Some(match b {
            0x00 => Succeeded,
            0x01 => GeneralFailure,
            0x02 => NotAllowed,
            0x03 => NetworkUnreachable,
            0x04 => HostUnreachable,
            0x05 => ConnectionRefused,
            0x06 => TtlExpired,
            0x07 => CommandNotSupported,
            0x08 => AddressTypeNotSupported,
            _ => return None,
        })
    }
}

/// A server's reply to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The outcome.
    pub code: ReplyCode,
    /// The address the server bound (`0.0.0.0:0` when it does not say).
    pub bound: SocketAddr,
}

impl Reply {
    /// A reply with the unspecified bound address.
    pub fn new(code: ReplyCode) -> Reply {
        Reply {
            code,
            bound: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The reply bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION, self.code as u8, 0];
        let t = Target {
            host: Host::Ip(self.bound.ip()),
            port: self.bound.port(),
        };
        // An address never fails to encode.
        let _ = crate::tunnel::write_target(&mut out, &t);
        out
    }

    /// Decodes a reply from the start of `buf` (a client's side; names are refused).
    pub fn decode(buf: &[u8]) -> Result<Decoded<Reply>, Socks5Error> {
        let mut c = Cursor::new(buf);
        let (Some(v), Some(rep), Some(rsv)) = (c.u8(), c.u8(), c.u8()) else {
            return Ok(Decoded::Incomplete);
        };
        if v != VERSION {
            return Err(Socks5Error::Version(v));
        }
        let code = ReplyCode::from_byte(rep).ok_or(Socks5Error::Command(rep))?;
        if rsv != 0 {
            return Err(Socks5Error::Reserved(rsv));
        }
        match crate::tunnel::read_target(&mut c, false).map_err(from_header)? {
            Some(Target {
                host: Host::Ip(ip),
                port,
            }) => Ok(Decoded::Done(
                Reply {
                    code,
                    bound: SocketAddr::new(ip, port),
                },
                c.at,
            )),
            Some(_) => Err(Socks5Error::AddressType(0x03)),
            None => Ok(Decoded::Incomplete),
        }
    }
}

/// The oracle of the `socks5` fuzz target: arbitrary bytes as a greeting, a request and a
/// reply. Whatever decodes re-encodes to exactly the bytes it took, within
/// [`MAX_MESSAGE_LEN`], and every shorter prefix is incomplete or the same error.
pub(crate) fn fuzz_socks5(data: &[u8]) {
    if let Ok(Decoded::Done(g, n)) = Greeting::decode(data) {
        assert!(n <= MAX_MESSAGE_LEN);
        assert_eq!(g.encode(), &data[..n], "greeting round trip");
        let a = g.answer();
        assert!(a[1] == NO_AUTH || a[1] == NO_ACCEPTABLE);
        for cut in 0..n {
            assert_eq!(Greeting::decode(&data[..cut]), Ok(Decoded::Incomplete));
        }
    }
    if let Ok(Decoded::Done(r, n)) = Request::decode(data) {
        assert!(n <= MAX_MESSAGE_LEN);
        assert_eq!(r.encode().as_deref(), Ok(&data[..n]), "request round trip");
        for cut in 0..n {
            assert_eq!(Request::decode(&data[..cut]), Ok(Decoded::Incomplete));
        }
    }
    if let Err(e) = Request::decode(data) {
        // Every failure has a reply code to answer with.
        let code = e.reply_code() as u8;
        assert!(code != 0 && code <= 8);
    }
    if let Ok(Decoded::Done(r, n)) = Reply::decode(data) {
        assert_eq!(r.encode(), &data[..n], "reply round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn curl_socks5_hostname_exchange_decodes() {
        // What `curl --socks5-hostname` sends: no-auth only, then CONNECT to a name.
        let g = [5, 1, 0];
        let Ok(Decoded::Done(greeting, 3)) = Greeting::decode(&g) else {
            panic!("greeting did not decode");
        };
        assert_eq!(greeting.answer(), [5, 0]);
        let mut req = vec![5, 1, 0, 3, 9];
        req.extend_from_slice(b"localhost");
        req.extend_from_slice(&8080u16.to_be_bytes());
        let Ok(Decoded::Done(r, n)) = Request::decode(&req) else {
            panic!("request did not decode");
        };
        assert_eq!(n, req.len());
        assert_eq!(r.command, Command::Connect);
        assert_eq!(r.target.host, Host::Name("localhost".into()));
        assert_eq!(r.target.port, 8080);
        for cut in 0..req.len() {
            assert_eq!(Request::decode(&req[..cut]), Ok(Decoded::Incomplete));
        }
    }

    #[test]
    fn addresses_and_replies_round_trip() {
        for host in [
            Host::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            let r = Request {
                command: Command::Connect,
                target: Target { host, port: 443 },
            };
            let b = r.encode().unwrap_or_default();
            assert_eq!(Request::decode(&b), Ok(Decoded::Done(r, b.len())));
        }
        let rep = Reply::new(ReplyCode::NotAllowed);
        assert_eq!(rep.encode(), [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Reply::decode(&rep.encode()), Ok(Decoded::Done(rep, 10)));
    }

    #[test]
    fn hostile_requests_are_errors_with_reply_codes() {
        assert_eq!(Greeting::decode(&[4, 1, 0]), Err(Socks5Error::Version(4)));
        assert_eq!(Greeting::decode(&[5, 0]), Err(Socks5Error::NoMethods));
        assert_eq!(Greeting { methods: vec![2] }.answer(), [5, 0xff]);
        assert_eq!(Request::decode(&[4]), Err(Socks5Error::Version(4)));
        let e = Request::decode(&[5, 9, 0, 1]).err();
        assert_eq!(e, Some(Socks5Error::Command(9)));
        assert_eq!(
            e.map(|e| e.reply_code()),
            Some(ReplyCode::CommandNotSupported)
        );
        let e = Request::decode(&[5, 1, 0, 2, 0]).err();
        assert_eq!(
            e.map(|e| e.reply_code()),
            Some(ReplyCode::AddressTypeNotSupported)
        );
        assert_eq!(
            Request::decode(&[5, 1, 0, 3, 0, 0, 80]),
            Err(Socks5Error::Name)
        );
        assert_eq!(
            Request::decode(&[5, 1, 1, 1]),
            Err(Socks5Error::Reserved(1))
        );
        // BIND decodes (so it can be answered "not supported"), it is not served.
        assert!(matches!(
            Request::decode(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]),
            Ok(Decoded::Done(
                Request {
                    command: Command::Bind,
                    ..
                },
                10
            ))
        ));
    }
}

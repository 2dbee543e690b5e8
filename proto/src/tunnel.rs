//! The `alknet/tunnel` stream header: what a tunnel stream carries before its bytes.
//!
//! Every bidirectional stream of an `alknet/tunnel` connection carries one TCP connection
//! (or, for a remote forward, one listener). Its first bytes are a header, then the
//! connection's bytes follow both ways. All integers are big-endian. Every header starts
//! with the version ([`VERSION`]) and a kind byte.
//!
//! Client → server, on a stream the client opens:
//!
//! ```text
//! CONNECT (dial HOST:PORT and carry the connection)
//! byte 0      version = 1
//! byte 1      kind = 0x01
//! byte 2      address type: 0x01 IPv4 | 0x03 name | 0x04 IPv6
//! ...         IPv4: 4 bytes | IPv6: 16 bytes | name: length (1..=255), then that many bytes
//! 2 bytes     port
//!
//! LISTEN (remote forward: listen on BIND:PORT; the stream lives as long as the listener)
//! byte 0      version = 1
//! byte 1      kind = 0x02
//! ...         address and port as above (port 0: any free port)
//! ```
//!
//! Server → client, the verdict on either request, the first bytes the server sends:
//!
//! ```text
//! byte 0      version = 1
//! byte 1      status: 0x00 connected | 0x01 listening | 0x02 refused | 0x03 failed
//! listening:  4 bytes listener id, 2 bytes the port actually bound
//! refused:    1 byte reason (see Refusal)
//! failed:     1 byte reason (see Failure)
//! ```
//!
//! Server → client, on a stream the server opens for each connection accepted on a listener:
//!
//! ```text
//! ACCEPTED
//! byte 0      version = 1
//! byte 1      kind = 0x03
//! 4 bytes     listener id (from that listener's verdict)
//! byte 6      address type of the remote end: 0x01 IPv4 | 0x04 IPv6
//! ...         4 or 16 bytes address, 2 bytes port
//! ```
//!
//! A name is 1..=255 bytes of letters, digits, `-`, `_` and `.` (a host name, or an address
//! literal written as one), so it is safe to print. A header is at most
//! [`MAX_HEADER_LEN`] bytes; decoding reports [`Decoded::Incomplete`] until the whole header
//! is there and never reads past it, so the bytes after it are the connection's.
//!
//! After the header, a FIN on the stream is the TCP half-close of that direction, and a stream
//! reset is a TCP reset (or a failure), with a code from [`reset_code`].
//!
//! This module does not decide what is allowed (the policy engine), does no I/O and does not
//! resolve names.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use thiserror::Error;

/// The header version this module speaks.
pub const VERSION: u8 = 1;

/// The longest header: version, kind, address type, a 255-byte name with its length, port.
pub const MAX_HEADER_LEN: usize = 1 + 1 + 1 + 1 + MAX_NAME_LEN + 2;

/// The longest host name.
pub const MAX_NAME_LEN: usize = 255;

const KIND_CONNECT: u8 = 0x01;
const KIND_LISTEN: u8 = 0x02;
const KIND_ACCEPTED: u8 = 0x03;

const ATYP_V4: u8 = 0x01;
const ATYP_NAME: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

const STATUS_CONNECTED: u8 = 0x00;
const STATUS_LISTENING: u8 = 0x01;
const STATUS_REFUSED: u8 = 0x02;
const STATUS_FAILED: u8 = 0x03;

/// Stream reset (and stop-sending) codes on `alknet/tunnel` streams.
pub mod reset_code {
    /// The TCP connection at the other end was reset (or failed mid-way).
    pub const TCP_RESET: u32 = 0x120;
    /// The stream's header could not be decoded; the stream is refused.
    pub const BAD_HEADER: u32 = 0x121;
    /// The request was refused or failed; the verdict said why.
    pub const REFUSED: u32 = 0x122;
    /// The peer holds its cap of tunnel streams; the stream is refused without a verdict.
    pub const STREAM_LIMIT: u32 = 0x123;
    /// The listener this stream belonged to is gone, or the peer is shutting down.
    pub const GOING_AWAY: u32 = 0x124;
}

/// A host as a tunnel header names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An address.
    Ip(IpAddr),
    /// A name, resolved by the receiver ([`valid_name`] holds).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(a) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl Host {
    /// `text` as an address if it is one, else as a name; `None` if it is neither.
    pub fn parse(text: &str) -> Option<Host> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(Host::Ip(ip));
        }
        valid_name(text.as_bytes()).then(|| Host::Name(text.to_owned()))
    }
}

/// Whether `name` may be carried as a host name: 1..=255 bytes of letters, digits, `-`, `_`
/// and `.`.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host.
    pub host: Host,
    /// The port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What a client asks on a stream it opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Dial the target and carry the connection.
    Connect(Target),
    /// Listen on the address (remote forward).
    Listen(Target),
}

/// Why a request was refused (by policy or caps; nothing was attempted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Refusal {
    /// No rule allows this peer that target (or listening address).
    Forbidden = 0x01,
    /// The peer holds its cap of forwarded connections.
    ConnectionLimit = 0x02,
    /// The peer holds its cap of listeners.
    ListenerLimit = 0x03,
    /// The server is shutting down.
    ShuttingDown = 0x04,
    /// Another reason the server does not share (a newer server's code is read as this).
    Other = 0xff,
}

/// Why an allowed request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Failure {
    /// The name did not resolve.
    NameNotResolved = 0x01,
    /// The target refused the connection.
    ConnectionRefused = 0x02,
    /// The network or host is unreachable.
    Unreachable = 0x03,
    /// The connection attempt timed out.
    TimedOut = 0x04,
    /// The address to listen on is in use.
    AddressInUse = 0x05,
    /// The address to listen on is not the server's.
    AddressNotAvailable = 0x06,
    /// Another failure (a newer server's code is read as this).
    Other = 0xff,
}

impl Refusal {
    fn from_byte(b: u8) -> Refusal {
        match b {
            0x01 => Refusal::Forbidden,
            0x02 => Refusal::ConnectionLimit,
            0x03 => Refusal::ListenerLimit,
            0x04 => Refusal::ShuttingDown,
            _ => Refusal::Other,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Forbidden => "the gateway's tunnel policy does not allow it",
            Refusal::ConnectionLimit => "the peer holds its cap of forwarded connections",
            Refusal::ListenerLimit => "the peer holds its cap of listening ports",
            Refusal::ShuttingDown => "the gateway is shutting down",
            Refusal::Other => "refused by the gateway",
        })
    }
}

impl Failure {
    fn from_byte(b: u8) -> Failure {
        match b {
            0x01 => Failure::NameNotResolved,
            0x02 => Failure::ConnectionRefused,
            0x03 => Failure::Unreachable,
            0x04 => Failure::TimedOut,
            0x05 => Failure::AddressInUse,
            0x06 => Failure::AddressNotAvailable,
            _ => Failure::Other,
        }
    }

    /// The failure an I/O error of a dial or bind stands for.
    pub fn from_io(kind: std::io::ErrorKind) -> Failure {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionRefused => Failure::ConnectionRefused,
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown => Failure::Unreachable,
            K::TimedOut => Failure::TimedOut,
            K::AddrInUse => Failure::AddressInUse,
            K::AddrNotAvailable => Failure::AddressNotAvailable,
            _ => Failure::Other,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::NameNotResolved => "the name did not resolve on the gateway",
            Failure::ConnectionRefused => "the target refused the connection",
            Failure::Unreachable => "the target is unreachable from the gateway",
            Failure::TimedOut => "the connection to the target timed out",
            Failure::AddressInUse => "the address is in use on the gateway",
            Failure::AddressNotAvailable => "the address is not one of the gateway's",
            Failure::Other => "the gateway could not carry the connection",
        })
    }
}

/// The server's answer to a [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The target is connected; bytes follow.
    Connected,
    /// The server listens; connections arrive on server-opened streams naming `id`.
    Listening {
        /// The listener's id in [`Accepted::listener`].
        id: u32,
        /// The port bound (the one asked for, or the one chosen for port 0).
        port: u16,
    },
    /// Refused; nothing was attempted.
    Refused(Refusal),
    /// Allowed, but the dial or bind failed.
    Failed(Failure),
}

/// The header of a stream the server opens: a connection accepted on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The listener, as its verdict named it.
    pub listener: u32,
    /// The remote end of the accepted connection.
    pub from: SocketAddr,
}

/// Why bytes are not a header.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The version byte is not [`VERSION`].
    #[error("tunnel header version {0} is not supported (this side speaks version 1)")]
    Version(u8),
    /// The kind (or status) byte is unknown.
    #[error("unknown tunnel header kind {0:#04x}")]
    Kind(u8),
    /// The address type is unknown (or not allowed here).
    #[error("unknown tunnel address type {0:#04x}")]
    AddressType(u8),
    /// The host name is empty or holds a byte a host name may not.
    #[error("the host name is empty or not a host name")]
    Name,
    /// A name longer than 255 bytes (encoding only).
    #[error("the host name is longer than 255 bytes")]
    NameTooLong,
}

/// The result of decoding from the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A value, and how many bytes of the buffer it took.
    Done(T, usize),
    /// The buffer holds the start of a value; read more (at most [`MAX_HEADER_LEN`] in all).
    Incomplete,
}

/// A cursor that says "incomplete" instead of running off the end.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|s| s.first().copied())
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// `None` = incomplete.
pub(crate) type Step<T> = Result<Option<T>, HeaderError>;

/// Reads an address type, address and port (names allowed if `names`). Shared with SOCKS5,
/// whose address encoding is the same.
pub(crate) fn read_target(c: &mut Cursor<'_>, names: bool) -> Step<Target> {
    let Some(atyp) = c.u8() else { return Ok(None) };
    let host = match atyp {
        ATYP_V4 => {
            let Some(a) = c.take(4) else { return Ok(None) };
            Host::Ip(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
        }
        ATYP_V6 => {
            let Some(a) = c.take(16) else { return Ok(None) };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            Host::Ip(IpAddr::V6(Ipv6Addr::from(o)))
        }
        ATYP_NAME if names => {
            let Some(len) = c.u8() else { return Ok(None) };
            let Some(n) = c.take(usize::from(len)) else {
                return Ok(None);
            };
            if !valid_name(n) {
                return Err(HeaderError::Name);
            }
            // valid_name admits ASCII only.
            Host::Name(n.iter().map(|&b| char::from(b)).collect())
        }
        other => return Err(HeaderError::AddressType(other)),
    };
    let Some(port) = c.u16() else { return Ok(None) };
    Ok(Some(Target { host, port }))
}

pub(crate) fn write_target(out: &mut Vec<u8>, t: &Target) -> Result<(), HeaderError> {
    match &t.host {
        Host::Ip(IpAddr::V4(a)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.octets());
        }
        Host::Ip(IpAddr::V6(a)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.octets());
        }
        Host::Name(n) => {
            if n.len() > MAX_NAME_LEN {
                return Err(HeaderError::NameTooLong);
            }
            if !valid_name(n.as_bytes()) {
                return Err(HeaderError::Name);
            }
            out.push(ATYP_NAME);
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
    }
    out.extend_from_slice(&t.port.to_be_bytes());
    Ok(())
}

fn version(c: &mut Cursor<'_>) -> Step<()> {
    match c.u8() {
        None => Ok(None),
        Some(VERSION) => Ok(Some(())),
        Some(v) => Err(HeaderError::Version(v)),
    }
}

fn finish<T>(step: Step<T>, c: &Cursor<'_>) -> Result<Decoded<T>, HeaderError> {
    Ok(match step? {
        Some(v) => Decoded::Done(v, c.at),
        None => Decoded::Incomplete,
    })
}

macro_rules! ready {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl Request {
    /// Decodes a request from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Request>, HeaderError> {
        let mut c = Cursor::new(buf);
        let step = (|| -> Step<Request> {
            ready!(version(&mut c));
            let Some(kind) = c.u8() else { return Ok(None) };
            let make: fn(Target) -> Request = match kind {
                KIND_CONNECT => Request::Connect,
                KIND_LISTEN => Request::Listen,
                k => return Err(HeaderError::Kind(k)),
            };
            Ok(Some(make(ready!(read_target(&mut c, true)))))
        })();
        finish(step, &c)
    }

    /// The header bytes.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let (kind, t) = match self {
            Request::Connect(t) => (KIND_CONNECT, t),
            Request::Listen(t) => (KIND_LISTEN, t),
        };
        let mut out = vec![VERSION, kind];
        write_target(&mut out, t)?;
        Ok(out)
    }
}

impl Verdict {
    /// Decodes a verdict from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Verdict>, HeaderError> {
        let mut c = Cursor::new(buf);
        let step = (|| -> Step<Verdict> {
            ready!(version(&mut c));
            let Some(status) = c.u8() else {
                return Ok(None);
            };
            Ok(Some(match status {
                STATUS_CONNECTED => Verdict::Connected,
                STATUS_LISTENING => {
                    let Some(id) = c.u32() else { return Ok(None) };
                    let Some(port) = c.u16() else { return Ok(None) };
                    Verdict::Listening { id, port }
                }
                STATUS_REFUSED => {
                    let Some(r) = c.u8() else { return Ok(None) };
                    Verdict::Refused(Refusal::from_byte(r))
                }
                STATUS_FAILED => {
                    let Some(r) = c.u8() else { return Ok(None) };
                    Verdict::Failed(Failure::from_byte(r))
                }
                k => return Err(HeaderError::Kind(k)),
            }))
        })();
        finish(step, &c)
    }

    /// The verdict bytes.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Verdict::Connected => vec![VERSION, STATUS_CONNECTED],
            Verdict::Listening { id, port } => {
                let mut v = vec![VERSION, STATUS_LISTENING];
                v.extend_from_slice(&id.to_be_bytes());
                v.extend_from_slice(&port.to_be_bytes());
                v
            }
            Verdict::Refused(r) => vec![VERSION, STATUS_REFUSED, r as u8],
            Verdict::Failed(f) => vec![VERSION, STATUS_FAILED, f as u8],
        }
    }
}

impl Accepted {
    /// Decodes the header of a server-opened stream from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Accepted>, HeaderError> {
        let mut c = Cursor::new(buf);
        let step = (|| -> Step<Accepted> {
            ready!(version(&mut c));
            let Some(kind) = c.u8() else { return Ok(None) };
            if kind != KIND_ACCEPTED {
                return Err(HeaderError::Kind(kind));
            }
            let Some(listener) = c.u32() else {
                return Ok(None);
            };
            let t = ready!(read_target(&mut c, false));
            let Host::Ip(ip) = t.host else {
                return Err(HeaderError::AddressType(ATYP_NAME));
            };
            Ok(Some(Accepted {
                listener,
                from: SocketAddr::new(ip, t.port),
            }))
        })();
        finish(step, &c)
    }

    /// The header bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION, KIND_ACCEPTED];
        out.extend_from_slice(&self.listener.to_be_bytes());
        let t = Target {
            host: Host::Ip(self.from.ip()),
            port: self.from.port(),
        };
        // An address never fails to encode.
        let _ = write_target(&mut out, &t);
        out
    }
}

/// The oracle of the `tunnel_header` fuzz target: arbitrary bytes as each header. Whatever
/// decodes re-encodes to exactly the bytes it took (refusal and failure codes up to the
/// unknown ones read as `Other`), never takes more than [`MAX_HEADER_LEN`] bytes, and every
/// prefix of a decodable header is incomplete, not an error.
pub(crate) fn fuzz_tunnel_header(data: &[u8]) {
    if let Ok(Decoded::Done(req, n)) = Request::decode(data) {
        assert!(n <= MAX_HEADER_LEN);
        assert_eq!(
            req.encode().as_deref(),
            Ok(&data[..n]),
            "request round trip"
        );
        for cut in 0..n {
            assert_eq!(Request::decode(&data[..cut]), Ok(Decoded::Incomplete));
        }
    }
    if let Ok(Decoded::Done(v, n)) = Verdict::decode(data) {
        assert!(n <= MAX_HEADER_LEN);
        assert_eq!(
            Verdict::decode(&v.encode()),
            Ok(Decoded::Done(v, v.encode().len())),
            "verdict round trip"
        );
        assert_eq!(v.encode().len(), n);
        for cut in 0..n {
            assert_eq!(Verdict::decode(&data[..cut]), Ok(Decoded::Incomplete));
        }
    }
    if let Ok(Decoded::Done(a, n)) = Accepted::decode(data) {
        assert!(n <= MAX_HEADER_LEN);
        assert_eq!(a.encode(), &data[..n], "accepted round trip");
        for cut in 0..n {
            assert_eq!(Accepted::decode(&data[..cut]), Ok(Decoded::Incomplete));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: Host, port: u16) -> Target {
        Target { host, port }
    }

    #[test]
    fn requests_round_trip_with_the_drawn_layout() {
        let r = Request::Connect(t(Host::Ip(Ipv4Addr::new(10, 1, 0, 9).into()), 8080));
        let b = r.encode().unwrap_or_default();
        assert_eq!(b, [1, 1, 1, 10, 1, 0, 9, 0x1f, 0x90]);
        assert_eq!(Request::decode(&b), Ok(Decoded::Done(r, 9)));

        let r = Request::Listen(t(Host::Name("db.lan".into()), 5432));
        let b = r.encode().unwrap_or_default();
        assert_eq!(&b[..4], [1, 2, 3, 6]);
        let mut with_data = b.clone();
        with_data.extend_from_slice(b"payload");
        assert_eq!(Request::decode(&with_data), Ok(Decoded::Done(r, b.len())));

        let r = Request::Connect(t(Host::Ip(Ipv6Addr::LOCALHOST.into()), 22));
        let b = r.encode().unwrap_or_default();
        assert_eq!(b.len(), 2 + 1 + 16 + 2);
        assert_eq!(Request::decode(&b), Ok(Decoded::Done(r, b.len())));
    }

    #[test]
    fn prefixes_are_incomplete_and_bad_bytes_are_errors() {
        let b = Request::Connect(t(Host::Name("a".repeat(255)), 1))
            .encode()
            .unwrap_or_default();
        assert_eq!(b.len(), MAX_HEADER_LEN);
        for cut in 0..b.len() {
            assert_eq!(Request::decode(&b[..cut]), Ok(Decoded::Incomplete));
        }
        assert_eq!(Request::decode(&[2, 1]), Err(HeaderError::Version(2)));
        assert_eq!(Request::decode(&[1, 9]), Err(HeaderError::Kind(9)));
        assert_eq!(
            Request::decode(&[1, 1, 7]),
            Err(HeaderError::AddressType(7))
        );
        assert_eq!(Request::decode(&[1, 1, 3, 0, 0, 1]), Err(HeaderError::Name));
        assert_eq!(
            Request::decode(&[1, 1, 3, 3, b'a', b'\n', b'b', 0, 1]),
            Err(HeaderError::Name)
        );
        assert_eq!(
            Request::Connect(t(Host::Name("a".repeat(256)), 1)).encode(),
            Err(HeaderError::NameTooLong)
        );
    }

    #[test]
    fn verdicts_and_accepted_round_trip() {
        for v in [
            Verdict::Connected,
            Verdict::Listening { id: 7, port: 9000 },
            Verdict::Refused(Refusal::Forbidden),
            Verdict::Refused(Refusal::ListenerLimit),
            Verdict::Failed(Failure::ConnectionRefused),
        ] {
            let b = v.encode();
            assert_eq!(Verdict::decode(&b), Ok(Decoded::Done(v, b.len())));
        }
        assert_eq!(
            Verdict::decode(&[1, 2, 0x77]),
            Ok(Decoded::Done(Verdict::Refused(Refusal::Other), 3))
        );
        let a = Accepted {
            listener: 3,
            from: "[2001:db8::5]:40000"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        };
        let b = a.encode();
        assert_eq!(Accepted::decode(&b), Ok(Decoded::Done(a, b.len())));
        // A name is no remote address.
        assert_eq!(
            Accepted::decode(&[1, 3, 0, 0, 0, 1, 3, 1, b'a', 0, 1]),
            Err(HeaderError::AddressType(3))
        );
    }

    #[test]
    fn hosts_parse_as_written() {
        assert_eq!(
            Host::parse("[::1]"),
            Some(Host::Ip(Ipv6Addr::LOCALHOST.into()))
        );
        assert_eq!(Host::parse("db.lan"), Some(Host::Name("db.lan".into())));
        assert_eq!(Host::parse("bad host"), None);
        assert_eq!(
            t(Host::Ip(Ipv6Addr::LOCALHOST.into()), 5).to_string(),
            "[::1]:5"
        );
    }
}

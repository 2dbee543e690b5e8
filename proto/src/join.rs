//! Joining a gateway: the invite code a person pastes, and the request and answer of the
//! `alknet/join` service.
//!
//! # Invite code
//!
//! ```text
//! alkinv1_<base32 of: fingerprint(32) secret(16) count(1) address… checksum(4)>
//!
//! address = 0x04 ipv4(4) port(2)
//!         | 0x06 ipv6(16) port(2)
//!         | 0x64 len(1, 1..=253) dns-name(len) port(2)
//! ```
//!
//! The prefix carries the version (`1`); a code of a later version is refused with a message
//! saying to upgrade. The alphabet is Crockford's base32 in lower case
//! (`0-9a-z` without `i l o u`): no two characters look alike, no character needs quoting
//! in a shell, and a double click selects the whole code. Decoding ignores case and reads
//! `i`/`l` as `1` and `o` as `0`. The checksum (SipHash-1-3 under a fixed key over the
//! prefix and the payload, first 4 bytes) turns a mistyped or truncated code into
//! [`InviteError::Checksum`] instead of a different invite. It is no authentication: the
//! secret is what the server checks.
//!
//! # Join request and answer
//!
//! On one bidirectional stream the client sends a [`JoinRequest`] and finishes; the server
//! answers one [`JoinResponse`] and finishes.
//!
//! ```text
//! request  = version(1)=1 secret(16) name-len(1, 0..=64) name
//! response = version(1)=1 0x00 peer-len(1, 1..=128) peer scope-count(1, 0..=64) (len(1) scope)…
//!          | version(1)=1 0x01 reason(1) message-len(1) message
//! ```
//!
//! Every length is checked against its bound before anything is read or allocated, text must
//! be UTF-8 without control characters, and trailing bytes are an error.
//!
//! Not here: storing invites, rate limits, the stream handling (the server's join service).

use crate::fingerprint::Fingerprint;
use siphasher::sip::SipHasher13;
use std::fmt;
use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use thiserror::Error;

/// The ALPN of the join service.
pub const ALPN: &[u8] = b"alknet/join";
/// The text every invite code starts with (`alkinv` and the version).
pub const INVITE_PREFIX: &str = "alkinv1_";
/// Bytes of an invite secret (128 bits).
pub const SECRET_LEN: usize = 16;
/// Most addresses an invite carries.
pub const MAX_ADDRESSES: usize = 8;
/// Longest DNS name in an invite.
pub const MAX_HOST: usize = 253;
/// Longest peer name a client may propose.
pub const MAX_NAME: usize = 64;
/// Longest peer id or scope in an answer.
pub const MAX_ID: usize = 128;
/// Most scopes in an answer.
pub const MAX_SCOPES: usize = 64;
/// Longest request on the wire.
pub const MAX_REQUEST: usize = 2 + SECRET_LEN + MAX_NAME;
/// Longest answer on the wire.
pub const MAX_RESPONSE: usize = 3 + MAX_ID + 1 + MAX_SCOPES * (1 + MAX_ID);
/// Longest invite code text.
pub const MAX_CODE: usize = INVITE_PREFIX.len()
    + (32 + SECRET_LEN + 1 + MAX_ADDRESSES * (2 + MAX_HOST + 2) + 4) * 8 / 5
    + 1;

const VERSION: u8 = 1;
const CHECKSUM_KEY: (u64, u64) = (0x616c_6b6e_6574_2d69, 0x6e76_6974_652d_7631);
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Where an invite says the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InviteAddress {
    /// An IP address and UDP port.
    Ip(SocketAddr),
    /// A DNS name (resolved by the client) and UDP port.
    Host(String, u16),
}

impl fmt::Display for InviteAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InviteAddress::Ip(a) => write!(f, "{a}"),
            InviteAddress::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// What an invite code carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// The server's key, pinned by the joining client.
    pub fingerprint: Fingerprint,
    /// The one-time secret the client proves it holds.
    pub secret: [u8; SECRET_LEN],
    /// Where the server listens (1..=[`MAX_ADDRESSES`]).
    pub addresses: Vec<InviteAddress>,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("fingerprint", &self.fingerprint)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// Why an invite code could not be read. `Display` says what to do.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InviteError {
    /// The text does not start with `alkinv`.
    #[error(
        "not an invite code: it starts with `alkinv1_`; paste the whole line `alknet invite` printed"
    )]
    NotAnInvite,
    /// A code of a later version.
    #[error("invite code version {0} is newer than this alknet understands; upgrade alknet")]
    NewerVersion(String),
    /// A character outside the alphabet.
    #[error("invite code has `{ch}` at position {at}, which no invite contains; check for a typo")]
    BadCharacter {
        /// The character.
        ch: char,
        /// Its position in the text (0-based, prefix included).
        at: usize,
    },
    /// The checksum does not match.
    #[error("invite code fails its checksum: it was mistyped or cut short; copy it again")]
    Checksum,
    /// The code is too short or too long for its content.
    #[error("invite code is malformed ({0}); copy it again")]
    Malformed(&'static str),
}

/// Encodes an invite as one pasteable line.
pub fn encode_invite(invite: &Invite) -> Result<String, InviteError> {
    if invite.addresses.is_empty() || invite.addresses.len() > MAX_ADDRESSES {
        return Err(InviteError::Malformed("1..=8 addresses"));
    }
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(invite.fingerprint.key());
    payload.extend_from_slice(&invite.secret);
    payload.push(invite.addresses.len() as u8);
    for a in &invite.addresses {
        match a {
            InviteAddress::Ip(SocketAddr::V4(v4)) => {
                payload.push(0x04);
                payload.extend_from_slice(&v4.ip().octets());
                payload.extend_from_slice(&v4.port().to_be_bytes());
            }
            InviteAddress::Ip(SocketAddr::V6(v6)) => {
                payload.push(0x06);
                payload.extend_from_slice(&v6.ip().octets());
                payload.extend_from_slice(&v6.port().to_be_bytes());
            }
            InviteAddress::Host(h, port) => {
                if !valid_host(h) {
                    return Err(InviteError::Malformed(
                        "a host name of 1..=253 letters, digits, `-` and `.`",
                    ));
                }
                payload.push(0x64);
                payload.push(h.len() as u8);
                payload.extend_from_slice(h.as_bytes());
                payload.extend_from_slice(&port.to_be_bytes());
            }
        }
    }
    let sum = checksum(&payload);
    payload.extend_from_slice(&sum);
    let mut out = String::with_capacity(INVITE_PREFIX.len() + payload.len() * 8 / 5 + 1);
    out.push_str(INVITE_PREFIX);
    base32_encode(&payload, &mut out);
    Ok(out)
}

/// Reads an invite code (surrounding whitespace ignored, case-insensitive).
pub fn decode_invite(text: &str) -> Result<Invite, InviteError> {
    let text = text.trim();
    if text.len() > MAX_CODE {
        return Err(InviteError::Malformed("too long"));
    }
    let lower = text.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("alkinv") else {
        return Err(InviteError::NotAnInvite);
    };
    let (version, body) = rest.split_once('_').ok_or(InviteError::NotAnInvite)?;
    if version != "1" {
        return Err(
            if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) {
                InviteError::NewerVersion(version.to_owned())
            } else {
                InviteError::NotAnInvite
            },
        );
    }
    let mut payload = base32_decode(body, INVITE_PREFIX.len())?;
    let split = payload
        .len()
        .checked_sub(4)
        .ok_or(InviteError::Malformed("too short"))?;
    let sum = payload.split_off(split);
    if sum != checksum(&payload) {
        return Err(InviteError::Checksum);
    }
    let mut r = Reader(&payload);
    let fingerprint =
        Fingerprint::from_key(r.array::<32>().ok_or(InviteError::Malformed("no key"))?);
    let secret = r
        .array::<SECRET_LEN>()
        .ok_or(InviteError::Malformed("no secret"))?;
    let count = usize::from(r.u8().ok_or(InviteError::Malformed("no address count"))?);
    if count == 0 || count > MAX_ADDRESSES {
        return Err(InviteError::Malformed("1..=8 addresses"));
    }
    let mut addresses = Vec::with_capacity(count);
    let bad = InviteError::Malformed("a truncated address");
    for _ in 0..count {
        let a = match r.u8().ok_or(bad.clone())? {
            0x04 => {
                let ip = r.array::<4>().ok_or(bad.clone())?;
                let port = r.u16().ok_or(bad.clone())?;
                InviteAddress::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
            }
            0x06 => {
                let ip = r.array::<16>().ok_or(bad.clone())?;
                let port = r.u16().ok_or(bad.clone())?;
                InviteAddress::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
            }
            0x64 => {
                let len = usize::from(r.u8().ok_or(bad.clone())?);
                let name = r.take(len).ok_or(bad.clone())?;
                let host = std::str::from_utf8(name)
                    .ok()
                    .filter(|h| valid_host(h))
                    .ok_or(InviteError::Malformed("a bad host name"))?;
                let port = r.u16().ok_or(bad.clone())?;
                InviteAddress::Host(host.to_owned(), port)
            }
            _ => return Err(InviteError::Malformed("an unknown address kind")),
        };
        addresses.push(a);
    }
    if !r.0.is_empty() {
        return Err(InviteError::Malformed("trailing bytes"));
    }
    Ok(Invite {
        fingerprint,
        secret,
        addresses,
    })
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOST
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let mut h = SipHasher13::new_with_keys(CHECKSUM_KEY.0, CHECKSUM_KEY.1);
    h.write(INVITE_PREFIX.as_bytes());
    h.write(payload);
    let v = h.finish().to_be_bytes();
    [v[0], v[1], v[2], v[3]]
}

fn base32_encode(data: &[u8], out: &mut String) {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

fn base32_decode(text: &str, offset: usize) -> Result<Vec<u8>, InviteError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for (i, ch) in text.chars().enumerate() {
        let c = match ch {
            'i' | 'l' => '1',
            'o' => '0',
            c => c,
        };
        let v = ALPHABET
            .iter()
            .position(|&a| char::from(a) == c)
            .ok_or(InviteError::BadCharacter { ch, at: offset + i })?;
        acc = (acc << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    // Leftover bits are the encoder's zero padding: anything else is another text.
    if bits >= 5 || acc != 0 {
        return Err(InviteError::Checksum);
    }
    Ok(out)
}

/// A bounded reader over one whole message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }
    fn u16(&mut self) -> Option<u16> {
        self.array::<2>().map(u16::from_be_bytes)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }
    fn text(&mut self, max: usize) -> Result<Option<String>, JoinError> {
        let len = usize::from(self.u8().ok_or(JoinError::Truncated)?);
        if len > max {
            return Err(JoinError::TooLong { max, got: len });
        }
        let bytes = self.take(len).ok_or(JoinError::Truncated)?;
        if len == 0 {
            return Ok(None);
        }
        let s = std::str::from_utf8(bytes).map_err(|_| JoinError::BadText)?;
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(JoinError::BadText);
        }
        Ok(Some(s.to_owned()))
    }
}

/// A join request or answer that does not decode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The message ends early.
    #[error("join message is truncated")]
    Truncated,
    /// A version this side does not speak.
    #[error("join message of version {0}; this alknet speaks version 1")]
    Version(u8),
    /// Bytes after the message.
    #[error("join message has trailing bytes")]
    Trailing,
    /// A field over its bound.
    #[error("join message field of {got} bytes, at most {max} allowed")]
    TooLong {
        /// The bound.
        max: usize,
        /// What arrived.
        got: usize,
    },
    /// Text that is not UTF-8, or holds spaces or control characters.
    #[error("join message text is not printable UTF-8 without spaces")]
    BadText,
    /// An unknown status or reason byte.
    #[error("join message has unknown code {0}")]
    UnknownCode(u8),
}

/// What a joining client sends.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The invite's secret.
    pub secret: [u8; SECRET_LEN],
    /// The peer id the client proposes (`--as` aside, the server may choose another).
    pub name: Option<String>,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl JoinRequest {
    /// The request's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, JoinError> {
        let mut out = Vec::with_capacity(MAX_REQUEST);
        out.push(VERSION);
        out.extend_from_slice(&self.secret);
        put_text(&mut out, self.name.as_deref().unwrap_or(""), MAX_NAME)?;
        Ok(out)
    }

    /// Reads one whole request.
    pub fn decode(bytes: &[u8]) -> Result<Self, JoinError> {
        if bytes.len() > MAX_REQUEST {
            return Err(JoinError::TooLong {
                max: MAX_REQUEST,
                got: bytes.len(),
            });
        }
        let mut r = Reader(bytes);
        let v = r.u8().ok_or(JoinError::Truncated)?;
        if v != VERSION {
            return Err(JoinError::Version(v));
        }
        let secret = r.array::<SECRET_LEN>().ok_or(JoinError::Truncated)?;
        let name = r.text(MAX_NAME)?;
        if !r.0.is_empty() {
            return Err(JoinError::Trailing);
        }
        Ok(Self { secret, name })
    }
}

/// Why the server refused a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No such invite: mistyped, forged, revoked, or never made on this server.
    Unknown,
    /// The invite expired.
    Expired,
    /// Every use of the invite was spent.
    UsedUp,
    /// The request did not decode.
    BadRequest,
    /// Too many attempts from this address.
    RateLimited,
    /// The client presented no key.
    NoKey,
    /// The client's key already belongs to a peer.
    KeyKnown,
    /// The server could not record the peer.
    ServerError,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::Unknown => 1,
            Refusal::Expired => 2,
            Refusal::UsedUp => 3,
            Refusal::BadRequest => 4,
            Refusal::RateLimited => 5,
            Refusal::NoKey => 6,
            Refusal::KeyKnown => 7,
            Refusal::ServerError => 8,
        }
    }

    fn from_code(c: u8) -> Result<Self, JoinError> {
        Ok(match c {
            1 => Refusal::Unknown,
            2 => Refusal::Expired,
            3 => Refusal::UsedUp,
            4 => Refusal::BadRequest,
            5 => Refusal::RateLimited,
            6 => Refusal::NoKey,
            7 => Refusal::KeyKnown,
            8 => Refusal::ServerError,
            other => return Err(JoinError::UnknownCode(other)),
        })
    }

    /// The short reason logged with the failed authentication on the server.
    pub fn log_reason(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown invite",
            Refusal::Expired => "expired invite",
            Refusal::UsedUp => "invite used up",
            Refusal::BadRequest => "bad join request",
            Refusal::RateLimited => "join rate limit",
            Refusal::NoKey => "no certificate",
            Refusal::KeyKnown => "key already a peer",
            Refusal::ServerError => "store error",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "the server knows no such invite (revoked, never made here, or forged); ask for a new one",
            Refusal::Expired => "the invite has expired; ask for a new one (`alknet invite --expires-in …`)",
            Refusal::UsedUp => "the invite was already used; ask for a new one (`alknet invite --uses N` admits N devices)",
            Refusal::BadRequest => "the server could not read the join request; upgrade alknet on both sides",
            Refusal::RateLimited => "too many join attempts from this address; wait a minute and retry",
            Refusal::NoKey => "the client presented no key",
            Refusal::KeyKnown => "this device's key is already a peer of the server; use it directly",
            Refusal::ServerError => "the server could not record the new peer; see its log",
        })
    }
}

/// What the server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinResponse {
    /// The client's key is now a peer.
    Admitted {
        /// The peer id the server recorded.
        peer: String,
        /// The peer's scopes.
        scopes: Vec<String>,
    },
    /// Refused.
    Refused {
        /// Why.
        reason: Refusal,
        /// More text for people (may be empty).
        message: String,
    },
}

impl JoinResponse {
    /// The answer's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, JoinError> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        match self {
            JoinResponse::Admitted { peer, scopes } => {
                out.push(0);
                if peer.is_empty() {
                    return Err(JoinError::Truncated);
                }
                put_text(&mut out, peer, MAX_ID)?;
                if scopes.len() > MAX_SCOPES {
                    return Err(JoinError::TooLong {
                        max: MAX_SCOPES,
                        got: scopes.len(),
                    });
                }
                out.push(scopes.len() as u8);
                for s in scopes {
                    if s.is_empty() {
                        return Err(JoinError::Truncated);
                    }
                    put_text(&mut out, s, MAX_ID)?;
                }
            }
            JoinResponse::Refused { reason, message } => {
                out.push(1);
                out.push(reason.code());
                put_text(&mut out, message, 255)?;
            }
        }
        Ok(out)
    }

    /// Reads one whole answer.
    pub fn decode(bytes: &[u8]) -> Result<Self, JoinError> {
        if bytes.len() > MAX_RESPONSE {
            return Err(JoinError::TooLong {
                max: MAX_RESPONSE,
                got: bytes.len(),
            });
        }
        let mut r = Reader(bytes);
        let v = r.u8().ok_or(JoinError::Truncated)?;
        if v != VERSION {
            return Err(JoinError::Version(v));
        }
        let out = match r.u8().ok_or(JoinError::Truncated)? {
            0 => {
                let peer = r.text(MAX_ID)?.ok_or(JoinError::Truncated)?;
                let n = usize::from(r.u8().ok_or(JoinError::Truncated)?);
                if n > MAX_SCOPES {
                    return Err(JoinError::TooLong {
                        max: MAX_SCOPES,
                        got: n,
                    });
                }
                let mut scopes = Vec::with_capacity(n);
                for _ in 0..n {
                    scopes.push(r.text(MAX_ID)?.ok_or(JoinError::Truncated)?);
                }
                JoinResponse::Admitted { peer, scopes }
            }
            1 => {
                let reason = Refusal::from_code(r.u8().ok_or(JoinError::Truncated)?)?;
                let len = usize::from(r.u8().ok_or(JoinError::Truncated)?);
                let bytes = r.take(len).ok_or(JoinError::Truncated)?;
                let message = std::str::from_utf8(bytes)
                    .ok()
                    .filter(|s| !s.chars().any(char::is_control))
                    .ok_or(JoinError::BadText)?
                    .to_owned();
                JoinResponse::Refused { reason, message }
            }
            other => return Err(JoinError::UnknownCode(other)),
        };
        if !r.0.is_empty() {
            return Err(JoinError::Trailing);
        }
        Ok(out)
    }
}

fn put_text(out: &mut Vec<u8>, s: &str, max: usize) -> Result<(), JoinError> {
    if s.len() > max.min(255) {
        return Err(JoinError::TooLong { max, got: s.len() });
    }
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The oracle of the `join` fuzz target: arbitrary bytes as a join request, a join answer
/// and an invite code. Whatever decodes re-encodes to the same bytes (the code up to case
/// and surrounding whitespace), and nothing panics.
pub(crate) fn fuzz_join(data: &[u8]) {
    if let Ok(req) = JoinRequest::decode(data) {
        assert_eq!(req.encode().as_deref(), Ok(data), "request round trip");
    }
    if let Ok(resp) = JoinResponse::decode(data) {
        let again = resp.encode().and_then(|b| JoinResponse::decode(&b));
        assert_eq!(again.as_ref(), Ok(&resp), "response round trip");
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(invite) = decode_invite(text)
    {
        let again = encode_invite(&invite).map(|t| decode_invite(&t));
        assert_eq!(again, Ok(Ok(invite)), "invite round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Invite {
        Invite {
            fingerprint: Fingerprint::from_key([7; 32]),
            secret: [0xab; SECRET_LEN],
            addresses: vec![
                InviteAddress::Ip("192.0.2.1:4433".parse().unwrap_or_else(|e| panic!("{e}"))),
                InviteAddress::Ip(
                    "[2001:db8::1]:4433"
                        .parse()
                        .unwrap_or_else(|e| panic!("{e}")),
                ),
                InviteAddress::Host("gw.example".into(), 4433),
            ],
        }
    }

    #[test]
    fn invite_codes_round_trip_and_use_the_safe_alphabet() {
        let code = encode_invite(&invite()).unwrap_or_else(|e| panic!("{e}"));
        assert!(code.starts_with(INVITE_PREFIX));
        let body = code.strip_prefix(INVITE_PREFIX).unwrap_or_default();
        assert!(body.bytes().all(|b| ALPHABET.contains(&b)), "{code}");
        assert!(code.len() < 160, "{} chars", code.len());
        assert_eq!(decode_invite(&code), Ok(invite()));
        assert_eq!(
            decode_invite(&format!("  {}\n", code.to_uppercase())),
            Ok(invite())
        );
    }

    #[test]
    fn every_single_character_typo_is_a_clear_error() {
        let code = encode_invite(&invite()).unwrap_or_else(|e| panic!("{e}"));
        for at in INVITE_PREFIX.len()..code.len() {
            let mut bytes = code.clone().into_bytes();
            bytes[at] = if bytes[at] == b'q' { b'r' } else { b'q' };
            let typo = String::from_utf8(bytes).unwrap_or_default();
            assert!(decode_invite(&typo).is_err(), "typo at {at} accepted");
        }
        assert_eq!(
            decode_invite(&code[..code.len() - 3]).err(),
            Some(InviteError::Checksum)
        );
        assert!(matches!(
            decode_invite(&format!("{code}u")),
            Err(InviteError::BadCharacter { ch: 'u', .. })
        ));
        assert_eq!(
            decode_invite("alk_abc").err(),
            Some(InviteError::NotAnInvite)
        );
        assert_eq!(
            decode_invite("alkinv2_abc").err(),
            Some(InviteError::NewerVersion("2".into()))
        );
    }

    #[test]
    fn join_messages_round_trip_and_refuse_garbage() {
        let req = JoinRequest {
            secret: [1; SECRET_LEN],
            name: Some("laptop".into()),
        };
        let bytes = req.encode().unwrap_or_default();
        assert_eq!(JoinRequest::decode(&bytes), Ok(req));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(JoinRequest::decode(&long), Err(JoinError::Trailing));
        assert_eq!(JoinRequest::decode(&bytes[..5]), Err(JoinError::Truncated));
        let mut spaced = bytes.clone();
        if let Some(b) = spaced.last_mut() {
            *b = b' ';
        }
        assert_eq!(JoinRequest::decode(&spaced), Err(JoinError::BadText));

        for resp in [
            JoinResponse::Admitted {
                peer: "laptop-2".into(),
                scopes: vec!["*".into()],
            },
            JoinResponse::Refused {
                reason: Refusal::Expired,
                message: "expired 3s ago".into(),
            },
        ] {
            let b = resp.encode().unwrap_or_default();
            assert_eq!(JoinResponse::decode(&b), Ok(resp));
        }
        assert_eq!(
            JoinResponse::decode(&[1, 1, 99, 0]),
            Err(JoinError::UnknownCode(99))
        );
        assert_eq!(JoinResponse::decode(&[2]), Err(JoinError::Version(2)));
    }
}

//! Node fingerprints: `ed25519:<64 lowercase hex>` of the raw 32-byte public key.
//!
//! A fingerprint names a key, never a certificate: the same key in a self-signed X.509
//! certificate or as an RFC 7250 raw public key has the same fingerprint. Fingerprints are
//! compared as the 32 key bytes after parsing, never as strings, and the text form is strict
//! (lowercase hex, no whitespace, no other encodings) so that two spellings never name one key.

use crate::der::{self, DerError};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The text prefix of every fingerprint.
pub const PREFIX: &str = "ed25519:";

/// DER of an Ed25519 `SubjectPublicKeyInfo` up to the key bytes (RFC 8410 §4):
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The identity of a node or client: its raw Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

/// Why a fingerprint could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The text does not start with `ed25519:`.
    #[error("fingerprint must start with `ed25519:` (e.g. ed25519:3b6a…, 64 lowercase hex digits)")]
    MissingPrefix,
    /// The hex part has the wrong length.
    #[error("fingerprint must have 64 hex digits after `ed25519:`, found {got}")]
    BadLength {
        /// Number of characters found after the prefix.
        got: usize,
    },
    /// A character that is not lowercase hex.
    #[error("fingerprint may contain only lowercase hex digits 0-9a-f after `ed25519:`")]
    BadDigit,
    /// The public key is not an Ed25519 key.
    #[error("public key is not Ed25519; Alknet identities are Ed25519 keys")]
    NotEd25519,
    /// The certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    Der(#[from] DerError),
}

impl Fingerprint {
    /// The fingerprint of a raw Ed25519 public key.
    pub const fn from_key(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// The raw public key.
    pub const fn key(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads the key from an Ed25519 `SubjectPublicKeyInfo` (the RFC 7250 raw-key wrapper).
    pub fn from_spki(spki: &[u8]) -> Result<Self, FingerprintError> {
        let key = spki
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .ok_or(FingerprintError::NotEd25519)?;
        let key: [u8; 32] = key.try_into().map_err(|_| FingerprintError::NotEd25519)?;
        Ok(Self(key))
    }

    /// Reads the key from a DER X.509 certificate.
    pub fn from_certificate(cert: &[u8]) -> Result<Self, FingerprintError> {
        Self::from_spki(der::certificate_spki(cert)?)
    }

    /// Reads the key from whatever wrapper a TLS peer sent: an X.509 certificate or a raw
    /// `SubjectPublicKeyInfo`.
    pub fn from_peer_der(der: &[u8]) -> Result<Self, FingerprintError> {
        match Self::from_spki(der) {
            Ok(fp) => Ok(fp),
            Err(_) => Self::from_certificate(der),
        }
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(PREFIX)
            .ok_or(FingerprintError::MissingPrefix)?;
        if hex.len() != 64 {
            return Err(FingerprintError::BadLength {
                got: hex.chars().count(),
            });
        }
        let mut key = [0u8; 32];
        for (out, pair) in key.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(FingerprintError::BadDigit),
            };
            let (Some(&hi), Some(&lo)) = (pair.first(), pair.get(1)) else {
                return Err(FingerprintError::BadLength { got: hex.len() });
            };
            *out = (digit(hi)? << 4) | digit(lo)?;
        }
        Ok(Self(key))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

    #[test]
    fn parse_and_display_round_trip() {
        let s = format!("ed25519:{HEX}");
        let fp: Fingerprint = s.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fp.to_string(), s);
        assert_eq!(fp.key()[0], 0x3b);
    }

    #[test]
    fn other_spellings_do_not_parse() {
        let bad = [
            HEX.to_string(),
            format!("ED25519:{HEX}"),
            format!("ed25519:{}", HEX.to_uppercase()),
            format!(" ed25519:{HEX}"),
            format!("ed25519:{HEX} "),
            format!("ed25519: {HEX}"),
            format!("ed25519:{}", &HEX[..62]),
            format!("ed25519:{HEX}00"),
            format!("ed25519:{}g", &HEX[..63]),
            format!("sha256:{HEX}"),
            format!("ed25519:{}é", &HEX[..62]),
        ];
        for s in bad {
            assert!(s.parse::<Fingerprint>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn spki_wrapper() {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&[7; 32]);
        assert_eq!(
            Fingerprint::from_spki(&spki),
            Ok(Fingerprint::from_key([7; 32]))
        );
        assert_eq!(
            Fingerprint::from_peer_der(&spki),
            Ok(Fingerprint::from_key([7; 32]))
        );
        spki.push(0);
        assert_eq!(
            Fingerprint::from_spki(&spki),
            Err(FingerprintError::NotEd25519)
        );
        assert!(Fingerprint::from_spki(&spki[..40]).is_err());
    }
}

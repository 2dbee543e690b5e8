//! Encrypted blobs for the credential store, under a versioned storage key.
//!
//! The credential store keeps secrets (tokens to other nodes, API key material) as opaque
//! blobs. Each blob names the version of the storage key that sealed it, so the key can rotate:
//! new blobs use the newest version, old blobs still open with theirs and can be re-sealed
//! lazily. The key of version `v` is the SLIP-0010 key at `m/74'/2'/0'/v'`.
//!
//! # Layout
//!
//! A blob of format 2 (what this build writes) is the crate's one sealed layout
//! ([`mod@crate::seal`]) with magic `ALKCREDS`, format version 2, key source `2` (storage key,
//! with its 4-byte version) and a ciphertext of 16..=65 535 bytes; the caller's associated data
//! (e.g. the record's key) is the context, so a blob cannot be moved to another record.
//!
//! Blobs of format 1, written before the layout was shared, are still opened (never written):
//!
//! | size | field                                   |
//! |-----:|-----------------------------------------|
//! | 1    | blob format, `1`                        |
//! | 4    | key version `v`, below 2^31             |
//! | 12   | random nonce                            |
//! | n+16 | AES-256-GCM ciphertext and tag          |
//!
//! with associated data `"alknet/blob"`, those 17 header bytes, then the caller's. The two
//! formats cannot be confused: a format-2 blob starts with `A`, a format-1 blob with `0x01`.
//! This module does not store anything; the credential store does.

use zeroize::Zeroizing;

use crate::Error;
use crate::seal::{self, KeySource, NONCE_LEN, Sealed, TAG_LEN};

/// Highest storage key version (SLIP-0010 hardened indices are 31 bits).
pub const MAX_KEY_VERSION: u32 = seal::MAX_KEY_VERSION;
/// The 8 bytes every blob of format 2 starts with.
pub const MAGIC: [u8; 8] = *b"ALKCREDS";
/// The blob format this build writes.
pub const FORMAT_VERSION: u8 = 2;

const LEGACY_FORMAT: u8 = 1;
const LEGACY_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const LEGACY_DOMAIN: &[u8] = b"alknet/blob";

/// Credential-store blobs as a kind of sealed string.
const KIND: seal::Kind = seal::Kind {
    magic: MAGIC,
    version: FORMAT_VERSION,
    key_source: 2,
    bad_magic: "unknown blob format",
    check_version,
    check_ciphertext_len,
    malformed,
};

fn malformed(reason: &'static str) -> Error {
    Error::BlobMalformed { reason }
}

fn check_version(version: u8) -> Result<(), Error> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(malformed("unknown blob format"))
    }
}

fn check_ciphertext_len(len: usize) -> Result<(), Error> {
    if len >= TAG_LEN {
        Ok(())
    } else {
        Err(malformed("shorter than header and tag"))
    }
}

/// Seals `plaintext` with the storage key of `key_version`, bound to `aad`.
pub(crate) fn seal(
    key: &[u8; 32],
    key_version: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    crate::random_bytes(&mut nonce)?;
    let sealed = Sealed::seal(
        &KIND,
        KeySource::StorageKey {
            version: key_version,
        },
        key,
        nonce,
        aad,
        plaintext,
    )?;
    Ok(sealed.encode())
}

/// A parsed blob of either format.
enum Parsed<'a> {
    Sealed(Sealed, u32),
    Legacy {
        version: u32,
        header: &'a [u8],
        nonce: [u8; NONCE_LEN],
        ciphertext: &'a [u8],
    },
}

fn parse(blob: &[u8]) -> Result<Parsed<'_>, Error> {
    if blob.first() != Some(&LEGACY_FORMAT) {
        let sealed = Sealed::parse(blob, &KIND)?;
        return match sealed.key_source() {
            KeySource::StorageKey { version } => {
                let version = *version;
                Ok(Parsed::Sealed(sealed, version))
            }
            KeySource::Argon2id { .. } => Err(malformed("key source is not the storage key")),
        };
    }
    let header = blob
        .get(..LEGACY_HEADER_LEN)
        .ok_or(malformed("shorter than its header"))?;
    let version: [u8; 4] = header
        .get(1..5)
        .and_then(|s| s.try_into().ok())
        .ok_or(malformed("header"))?;
    let version = u32::from_be_bytes(version);
    if version > MAX_KEY_VERSION {
        return Err(malformed("key version above 2^31 - 1"));
    }
    let nonce: [u8; NONCE_LEN] = header
        .get(5..)
        .and_then(|s| s.try_into().ok())
        .ok_or(malformed("nonce"))?;
    let ciphertext = blob
        .get(LEGACY_HEADER_LEN..)
        .filter(|ct| ct.len() >= TAG_LEN)
        .ok_or(malformed("shorter than header and tag"))?;
    Ok(Parsed::Legacy {
        version,
        header,
        nonce,
        ciphertext,
    })
}

/// The key version a blob was sealed with, read from its header.
pub fn key_version_of(blob: &[u8]) -> Result<u32, Error> {
    Ok(match parse(blob)? {
        Parsed::Sealed(_, version) | Parsed::Legacy { version, .. } => version,
    })
}

/// The blob format of a blob (1 or 2), read from its header.
pub fn format_of(blob: &[u8]) -> Result<u8, Error> {
    Ok(match parse(blob)? {
        Parsed::Sealed(sealed, _) => sealed.version(),
        Parsed::Legacy { .. } => LEGACY_FORMAT,
    })
}

/// Opens a blob with the key of the version its header names (`key_for(version)`).
pub(crate) fn open(
    key_for: impl Fn(u32) -> Zeroizing<[u8; 32]>,
    aad: &[u8],
    blob: &[u8],
) -> Result<(u32, Zeroizing<Vec<u8>>), Error> {
    match parse(blob)? {
        Parsed::Sealed(sealed, version) => Ok((version, sealed.open(&key_for(version), aad)?)),
        Parsed::Legacy {
            version,
            header,
            nonce,
            ciphertext,
        } => {
            let mut full = Vec::with_capacity(LEGACY_DOMAIN.len() + header.len() + aad.len());
            full.extend_from_slice(LEGACY_DOMAIN);
            full.extend_from_slice(header);
            full.extend_from_slice(aad);
            let plain = seal::aead_open(&key_for(version), &nonce, &full, ciphertext)?;
            Ok((version, plain))
        }
    }
}

/// Parses arbitrary bytes as a blob and opens it with a fixed key. Oracles: never panics; a
/// blob that parses names a version at or below [`MAX_KEY_VERSION`] and a format of 1 or 2;
/// a format-2 blob re-encodes to exactly its input.
pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(parsed) = parse(data) {
        match &parsed {
            Parsed::Sealed(sealed, version) => {
                assert!(*version <= MAX_KEY_VERSION);
                assert_eq!(sealed.version(), FORMAT_VERSION);
                assert_eq!(
                    sealed.encode(),
                    data,
                    "parsed blob must re-encode to its input"
                );
            }
            Parsed::Legacy { version, .. } => assert!(*version <= MAX_KEY_VERSION),
        }
        let _ = open(|_| Zeroizing::new([0x11; 32]), b"fuzz", data);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(_: u32) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([0x11; 32])
    }

    /// A format-1 blob made by an independent AES-GCM implementation (Python `cryptography`):
    /// key 0x11 × 32, key version 1, nonce 00..0b, associated data "peer/alice", plaintext
    /// "token-1".
    const LEGACY_V1: &str =
        "0100000001000102030405060708090a0b678cdd76158e04ec8647530b8f770e043f12f729db3709";

    #[test]
    fn format_1_blobs_still_open() {
        let blob = hex::decode(LEGACY_V1).unwrap();
        assert_eq!(format_of(&blob).unwrap(), 1);
        assert_eq!(key_version_of(&blob).unwrap(), 1);
        let (version, plain) = open(key, b"peer/alice", &blob).unwrap();
        assert_eq!((version, plain.as_slice()), (1, &b"token-1"[..]));
        assert!(matches!(
            open(key, b"peer/bob", &blob),
            Err(Error::Authentication)
        ));
        fuzz(&blob);
    }

    #[test]
    fn new_blobs_are_the_sealed_layout() {
        let blob = seal(&key(7), 7, b"peer/alice", b"token-7").unwrap();
        assert_eq!(blob.get(..8), Some(&MAGIC[..]));
        assert_eq!(format_of(&blob).unwrap(), FORMAT_VERSION);
        // magic, version, key source, key version, cipher, nonce, length, then ciphertext.
        assert_eq!(blob.len(), 8 + 1 + 1 + 4 + 1 + 12 + 2 + 7 + TAG_LEN);
        let (version, plain) = open(key, b"peer/alice", &blob).unwrap();
        assert_eq!((version, plain.as_slice()), (7, &b"token-7"[..]));
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert!(
                open(key, b"peer/alice", &b).is_err(),
                "flip at {i} accepted"
            );
            fuzz(&b);
        }
        for n in 0..blob.len() {
            assert!(open(key, b"peer/alice", &blob[..n]).is_err());
        }
        assert!(seal(&key(0), 0, b"", &vec![0; seal::MAX_PLAINTEXT_LEN + 1]).is_err());
        assert!(seal(&key(0), 0, b"", &vec![0; seal::MAX_PLAINTEXT_LEN]).is_ok());
    }
}

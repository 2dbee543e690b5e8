//! Encrypted blobs for the credential store, under a versioned storage key.
//!
//! The credential store keeps secrets (tokens to other nodes, API key material) as opaque
//! blobs. Each blob names the version of the storage key that sealed it, so the key can rotate:
//! new blobs use the newest version, old blobs still open with theirs and can be re-sealed
//! lazily. The key of version `v` is the SLIP-0010 key at `m/74'/2'/0'/v'`.
//!
//! # Layout, integers big-endian
//!
//! | size | field                                   |
//! |-----:|-----------------------------------------|
//! | 1    | blob format, `1`                        |
//! | 4    | key version `v`, below 2^31             |
//! | 12   | random nonce                            |
//! | n+16 | AES-256-GCM ciphertext and tag          |
//!
//! The AEAD's associated data is `"alknet/blob"`, the 5 header bytes, then the caller's
//! associated data (e.g. the record's key), so a blob cannot be moved to another record.
//! This module does not store anything; the credential store does.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::Error;

const BLOB_FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 12;
const TAG_LEN: usize = 16;
const DOMAIN: &[u8] = b"alknet/blob";

/// Highest storage key version (SLIP-0010 hardened indices are 31 bits).
pub const MAX_KEY_VERSION: u32 = 0x7fff_ffff;

fn full_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + header.len() + aad.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(header);
    v.extend_from_slice(aad);
    v
}

/// Seals `plaintext` with the storage key of `key_version`.
pub(crate) fn seal(
    key: &[u8; 32],
    key_version: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    if key_version > MAX_KEY_VERSION {
        return Err(Error::BlobMalformed {
            reason: "key version above 2^31 - 1",
        });
    }
    let mut nonce = [0u8; 12];
    crate::random_bytes(&mut nonce)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(BLOB_FORMAT);
    out.extend_from_slice(&key_version.to_be_bytes());
    out.extend_from_slice(&nonce);
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| Error::Authentication)?;
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &full_aad(&out, aad),
            },
        )
        .map_err(|_| Error::Authentication)?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The key version a blob was sealed with, read from its header.
pub fn key_version_of(blob: &[u8]) -> Result<u32, Error> {
    let header = blob.get(..HEADER_LEN).ok_or(Error::BlobMalformed {
        reason: "shorter than its header",
    })?;
    if header.first() != Some(&BLOB_FORMAT) {
        return Err(Error::BlobMalformed {
            reason: "unknown blob format",
        });
    }
    let v: [u8; 4] = header
        .get(1..5)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::BlobMalformed { reason: "header" })?;
    let v = u32::from_be_bytes(v);
    if v > MAX_KEY_VERSION {
        return Err(Error::BlobMalformed {
            reason: "key version above 2^31 - 1",
        });
    }
    Ok(v)
}

/// Opens a blob with the key of the version its header names (`key_for(version)`).
pub(crate) fn open(
    key_for: impl Fn(u32) -> Zeroizing<[u8; 32]>,
    aad: &[u8],
    blob: &[u8],
) -> Result<(u32, Zeroizing<Vec<u8>>), Error> {
    let version = key_version_of(blob)?;
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::BlobMalformed {
            reason: "shorter than header and tag",
        });
    }
    let (header, ct) = blob.split_at(HEADER_LEN);
    let nonce: [u8; 12] = header
        .get(5..)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::BlobMalformed { reason: "nonce" })?;
    let key = key_for(version);
    let cipher = Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| Error::Authentication)?;
    let plain = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: &full_aad(header, aad),
            },
        )
        .map_err(|_| Error::Authentication)?;
    Ok((version, Zeroizing::new(plain)))
}

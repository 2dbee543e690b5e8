//! The one sealed-bytes layout of the vault crate: a header saying what is sealed and under
//! which key, a nonce, and the AES-256-GCM ciphertext, every header byte authenticated.
//!
//! The vault file ([`mod@crate::format`]) and the credential-store blobs ([`mod@crate::blob`])
//! are both this layout; they differ only in their magic, their key source and their
//! ciphertext length rule. This module is sans-IO and does not derive keys: the caller hands
//! in the 32-byte key (Argon2id of a passphrase, or a SLIP-0010 storage key) and the header
//! names how it was made so the opener can make it again.
//!
//! # Layout, integers big-endian
//!
//! | size | field                                                                |
//! |-----:|----------------------------------------------------------------------|
//! | 8    | magic: what is sealed, `ALKVAULT` (the seed) or `ALKCREDS` (a blob)   |
//! | 1    | format version of that kind                                          |
//! | 1    | key source: `1` = Argon2id of a passphrase, `2` = storage key         |
//! | k    | key source parameters (below)                                        |
//! | 1    | cipher, `1` = AES-256-GCM                                            |
//! | 12   | nonce (random, fresh for every seal)                                 |
//! | 2    | ciphertext length `n`                                                |
//! | n    | ciphertext: AES-256-GCM of the plaintext, with its 16-byte tag       |
//!
//! Key source `1`, Argon2id: argon2 version `0x13` (1), memory in KiB (4), iterations (4),
//! parallelism (4), salt length `s` in 16..=64 (1), salt (`s`).
//! Key source `2`, storage key: key version `v` below 2^31 (4), the key at `m/74'/2'/0'/v'`.
//!
//! Nothing may follow the ciphertext. The AEAD's associated data is every byte before the
//! ciphertext followed by the caller's context (empty for the vault file, the record's key for
//! a blob), so changing a parameter, the salt, a length or the magic breaks decryption rather
//! than silently weakening it, and a blob cannot be moved to another record. The header is
//! self-delimiting, so the context cannot be confused with header bytes.
//!
//! The vault file of format version 1 is this layout byte for byte. Credential-store blobs of
//! format 1 (before this layout) are still read by `blob`; new blobs are format 2.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::Error;
use crate::format::KdfParams;

/// Length of the AES-256-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-256-GCM tag at the end of every ciphertext.
pub const TAG_LEN: usize = 16;
/// The longest plaintext a sealed string holds (its ciphertext length is a `u16`).
pub const MAX_PLAINTEXT_LEN: usize = u16::MAX as usize - TAG_LEN;

const SOURCE_ARGON2ID: u8 = 1;
const SOURCE_STORAGE_KEY: u8 = 2;
const ARGON2_VERSION_0X13: u8 = 0x13;
const CIPHER_AES_256_GCM: u8 = 1;
const MIN_SALT_LEN: u8 = 16;
const MAX_SALT_LEN: u8 = 64;
/// Highest storage key version (SLIP-0010 hardened indices are 31 bits).
pub(crate) const MAX_KEY_VERSION: u32 = 0x7fff_ffff;

/// How the key of a sealed string is made, as its header records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Argon2id of a passphrase with these parameters and this salt.
    Argon2id {
        /// The cost parameters.
        kdf: KdfParams,
        /// The salt, 16..=64 bytes.
        salt: Vec<u8>,
    },
    /// The storage key of this version (`m/74'/2'/0'/<version>'`).
    StorageKey {
        /// The key version, below 2^31.
        version: u32,
    },
}

impl KeySource {
    fn id(&self) -> u8 {
        match self {
            KeySource::Argon2id { .. } => SOURCE_ARGON2ID,
            KeySource::StorageKey { .. } => SOURCE_STORAGE_KEY,
        }
    }
}

/// What one kind of sealed string looks like: its magic, the versions it reads and how it
/// words its errors.
pub(crate) struct Kind {
    /// The 8 bytes the kind starts with.
    pub(crate) magic: [u8; 8],
    /// The format version this build writes.
    pub(crate) version: u8,
    /// The key source every string of this kind uses.
    pub(crate) key_source: u8,
    /// Why a string with another magic is refused.
    pub(crate) bad_magic: &'static str,
    /// Refuses a format version this build does not read.
    pub(crate) check_version: fn(u8) -> Result<(), Error>,
    /// Refuses a ciphertext length the kind never has.
    pub(crate) check_ciphertext_len: fn(usize) -> Result<(), Error>,
    /// The error for a string that breaks a rule of the layout.
    pub(crate) malformed: fn(&'static str) -> Error,
}

/// A parsed (or freshly sealed) string: its header fields and ciphertext, not decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    version: u8,
    key_source: KeySource,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
    /// Every byte before the ciphertext: the first part of the associated data.
    header: Vec<u8>,
}

/// A bounded cursor: every read checks the remaining length first, so no input panics.
struct Reader<'a> {
    rest: &'a [u8],
    malformed: fn(&'static str) -> Error,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err((self.malformed)(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let b = self.take(N, what)?;
        b.try_into().map_err(|_| (self.malformed)(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
}

impl Sealed {
    /// Parses and bounds a sealed string of `kind`. Does not derive a key or decrypt.
    pub(crate) fn parse(bytes: &[u8], kind: &Kind) -> Result<Self, Error> {
        let malformed = kind.malformed;
        let mut r = Reader {
            rest: bytes,
            malformed,
        };
        if r.take(kind.magic.len(), "too short for the magic")? != kind.magic {
            return Err(malformed(kind.bad_magic));
        }
        let version = r.u8("missing format version")?;
        (kind.check_version)(version)?;
        let source = r.u8("missing key source")?;
        if source != kind.key_source {
            return Err(malformed(match kind.key_source {
                SOURCE_ARGON2ID => "unknown key derivation function",
                _ => "key source is not the storage key",
            }));
        }
        let key_source = match source {
            SOURCE_ARGON2ID => {
                if r.u8("missing argon2 version")? != ARGON2_VERSION_0X13 {
                    return Err(malformed("unknown argon2 version"));
                }
                let memory = r.u32("missing argon2 memory")?;
                let iterations = r.u32("missing argon2 iterations")?;
                let parallelism = r.u32("missing argon2 parallelism")?;
                let kdf = KdfParams::from_file(memory, iterations, parallelism)?;
                let salt_len = r.u8("missing salt length")?;
                if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt_len) {
                    return Err(malformed("salt length outside 16..=64"));
                }
                let salt = r.take(usize::from(salt_len), "truncated salt")?.to_vec();
                KeySource::Argon2id { kdf, salt }
            }
            _ => {
                let version = r.u32("missing key version")?;
                if version > MAX_KEY_VERSION {
                    return Err(malformed("key version above 2^31 - 1"));
                }
                KeySource::StorageKey { version }
            }
        };
        if r.u8("missing cipher id")? != CIPHER_AES_256_GCM {
            return Err(malformed("unknown cipher"));
        }
        let nonce = r.array::<NONCE_LEN>("truncated nonce")?;
        let ct_len = usize::from(r.u16("missing ciphertext length")?);
        (kind.check_ciphertext_len)(ct_len)?;
        let header = bytes
            .get(..bytes.len() - r.rest.len())
            .ok_or(malformed("header"))?
            .to_vec();
        let ciphertext = r.take(ct_len, "truncated ciphertext")?.to_vec();
        if !r.rest.is_empty() {
            return Err(malformed("trailing bytes after the ciphertext"));
        }
        Ok(Self {
            version,
            key_source,
            nonce,
            ciphertext,
            header,
        })
    }

    /// Seals `plaintext` under `key` (made as `key_source` says) with `nonce`, bound to
    /// `context`.
    pub(crate) fn seal(
        kind: &Kind,
        key_source: KeySource,
        key: &[u8; 32],
        nonce: [u8; NONCE_LEN],
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Self, Error> {
        let malformed = kind.malformed;
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(malformed("plaintext longer than 65 519 bytes"));
        }
        let ct_len = plaintext.len() + TAG_LEN;
        (kind.check_ciphertext_len)(ct_len)?;
        let mut header = Vec::with_capacity(128);
        header.extend_from_slice(&kind.magic);
        header.push(kind.version);
        header.push(key_source.id());
        match &key_source {
            KeySource::Argon2id { kdf, salt } => {
                let salt_len = u8::try_from(salt.len())
                    .ok()
                    .filter(|n| (MIN_SALT_LEN..=MAX_SALT_LEN).contains(n))
                    .ok_or(malformed("salt length outside 16..=64"))?;
                header.push(ARGON2_VERSION_0X13);
                header.extend_from_slice(&kdf.memory_kib().to_be_bytes());
                header.extend_from_slice(&kdf.iterations().to_be_bytes());
                header.extend_from_slice(&kdf.parallelism().to_be_bytes());
                header.push(salt_len);
                header.extend_from_slice(salt);
            }
            KeySource::StorageKey { version } => {
                if *version > MAX_KEY_VERSION {
                    return Err(malformed("key version above 2^31 - 1"));
                }
                header.extend_from_slice(&version.to_be_bytes());
            }
        }
        header.push(CIPHER_AES_256_GCM);
        header.extend_from_slice(&nonce);
        header.extend_from_slice(&(ct_len as u16).to_be_bytes());
        let ciphertext = aead_seal(key, &nonce, &associated_data(&header, context), plaintext)?;
        Ok(Self {
            version: kind.version,
            key_source,
            nonce,
            ciphertext,
            header,
        })
    }

    /// Decrypts with `key` and the `context` it was sealed with. Any failure is
    /// [`Error::Authentication`].
    pub(crate) fn open(&self, key: &[u8; 32], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        aead_open(
            key,
            &self.nonce,
            &associated_data(&self.header, context),
            &self.ciphertext,
        )
    }

    /// The string's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.ciphertext.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// The format version in the header.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// How the key was made.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }
}

/// The header bytes, then the caller's context.
fn associated_data(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// AES-256-GCM encryption, the one place the crate encrypts.
pub(crate) fn aead_seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| Error::Authentication)?;
    cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Authentication)
}

/// AES-256-GCM decryption, the one place the crate decrypts.
pub(crate) fn aead_open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| Error::Authentication)?;
    cipher
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Error::Authentication)
}

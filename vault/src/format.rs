//! The vault file format: bytes in, a parsed header and ciphertext out, and back.
//!
//! This module is sans-IO: it never touches the file system. It bounds the Argon2id
//! parameters, derives the key-encryption key and seals or opens the 64-byte seed; the byte
//! layout is the crate's one sealed layout ([`mod@crate::seal`]) with magic `ALKVAULT`, format
//! version 1, key source Argon2id and an 80-byte ciphertext. Reading and writing the file
//! atomically is `store`'s job.
//!
//! # Layout (format version 1), all integers big-endian
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 8    | magic `ALKVAULT`                                             |
//! | 8      | 1    | format version, `1`                                          |
//! | 9      | 1    | key source, `1` = Argon2id                                   |
//! | 10     | 1    | Argon2 version, `0x13`                                       |
//! | 11     | 4    | Argon2 memory in KiB                                         |
//! | 15     | 4    | Argon2 iterations (t)                                        |
//! | 19     | 4    | Argon2 parallelism (p)                                       |
//! | 23     | 1    | salt length `s`, 16..=64                                     |
//! | 24     | s    | salt                                                         |
//! | 24+s   | 1    | cipher, `1` = AES-256-GCM                                    |
//! | 25+s   | 12   | nonce (random, fresh for every write)                        |
//! | 37+s   | 2    | ciphertext length, 80 in version 1                           |
//! | 39+s   | n    | ciphertext: AES-256-GCM of the 64-byte BIP39 seed + 16-byte tag |
//!
//! Nothing may follow the ciphertext. Every byte before the ciphertext is the AEAD's
//! associated data (the vault adds no context), so changing a parameter, the salt or a length
//! in the file breaks decryption rather than silently weakening it. The AES key is
//! `Argon2id(passphrase, salt, m, t, p)` with 32 bytes of output.
//!
//! The parameters are bounded on read (see [`KdfParams::MAX_MEMORY_KIB`] and friends) so a
//! hostile file cannot make an unlock take hours or all memory.

use zeroize::Zeroizing;

use crate::Error;
use crate::seal::{self, KeySource, NONCE_LEN, Sealed, TAG_LEN};
use crate::secret::{Passphrase, Seed};

/// The 8 bytes every vault file starts with.
pub const MAGIC: [u8; 8] = *b"ALKVAULT";
/// The format version this build writes, and the highest it reads.
pub const FORMAT_VERSION: u8 = 1;
/// The largest vault file accepted, far above the ~140 bytes version 1 writes.
pub const MAX_FILE_SIZE: u64 = 64 * 1024;

const SEED_LEN: usize = 64;
const CIPHERTEXT_LEN: usize = SEED_LEN + TAG_LEN;
/// Salt length written by this build.
const SALT_LEN: usize = 32;

/// The vault file as a kind of sealed string.
const KIND: seal::Kind = seal::Kind {
    magic: MAGIC,
    version: FORMAT_VERSION,
    key_source: 1,
    bad_magic: "bad magic, not an alknet vault file",
    check_version,
    check_ciphertext_len,
    malformed,
};

fn malformed(reason: &'static str) -> Error {
    Error::Malformed { reason }
}

fn check_version(version: u8) -> Result<(), Error> {
    if version == 0 {
        return Err(malformed("format version 0"));
    }
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

fn check_ciphertext_len(len: usize) -> Result<(), Error> {
    if len == CIPHERTEXT_LEN {
        Ok(())
    } else {
        Err(malformed("ciphertext length is not 80"))
    }
}

/// Argon2id cost parameters, stored in the file header so they can be raised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl KdfParams {
    /// The production default: 64 MiB, t = 3, p = 1 (RFC 9106 §4, second recommended option,
    /// with one lane because a gateway unlocks once per start on a small CPU).
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Lowest memory a new vault may be written with (the default).
    pub const MIN_MEMORY_KIB: u32 = Self::DEFAULT.memory_kib;
    /// Lowest iteration count a new vault may be written with (the default).
    pub const MIN_ITERATIONS: u32 = Self::DEFAULT.iterations;
    /// Highest memory accepted from a file or for a new vault: 4 GiB.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// Highest iteration count accepted.
    pub const MAX_ITERATIONS: u32 = 64;
    /// Highest parallelism accepted.
    pub const MAX_PARALLELISM: u32 = 16;

    /// Parameters for a new vault: at least the default strength, at most the bounds.
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, Error> {
        check(
            "memory (KiB)",
            memory_kib,
            Self::MIN_MEMORY_KIB,
            Self::MAX_MEMORY_KIB,
        )?;
        check(
            "iterations",
            iterations,
            Self::MIN_ITERATIONS,
            Self::MAX_ITERATIONS,
        )?;
        check("parallelism", parallelism, 1, Self::MAX_PARALLELISM)?;
        Ok(Self {
            memory_kib,
            iterations,
            parallelism,
        })
    }

    /// Weak parameters (the Argon2 minimum: 8 KiB per lane, t = 1) for tests and benches only.
    ///
    /// Vaults written with these are readable by every build but offer no protection against
    /// guessing; `alknet vault status` flags them. Never use outside tests.
    #[doc(hidden)]
    pub const fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// Bounds applied to parameters read from a file: what Argon2 allows at the low end, the
    /// crate maxima at the high end.
    pub(crate) fn from_file(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    ) -> Result<Self, Error> {
        check("parallelism", parallelism, 1, Self::MAX_PARALLELISM)?;
        check(
            "memory (KiB)",
            memory_kib,
            8 * parallelism,
            Self::MAX_MEMORY_KIB,
        )?;
        check("iterations", iterations, 1, Self::MAX_ITERATIONS)?;
        Ok(Self {
            memory_kib,
            iterations,
            parallelism,
        })
    }

    /// Memory cost in KiB.
    pub fn memory_kib(&self) -> u32 {
        self.memory_kib
    }
    /// Number of passes (t).
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
    /// Number of lanes (p).
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// Whether these parameters are weaker than [`KdfParams::DEFAULT`] in memory or time.
    pub fn below_default(&self) -> bool {
        self.memory_kib < Self::DEFAULT.memory_kib || self.iterations < Self::DEFAULT.iterations
    }

    /// Derives the 32-byte AES key from a passphrase and salt.
    pub(crate) fn derive_key(
        &self,
        passphrase: &Passphrase,
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, Error> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|_| Error::Malformed {
                    reason: "argon2 rejected the parameters",
                })?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, key.as_mut_slice())
            .map_err(|_| Error::Malformed {
                reason: "argon2 rejected the salt or parameters",
            })?;
        Ok(key)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

fn check(name: &'static str, value: u32, min: u32, max: u32) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::KdfParamOutOfRange {
            name,
            value,
            min,
            max,
        })
    }
}

/// A parsed vault file: the header fields and the ciphertext, not yet decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultFile {
    sealed: Sealed,
    kdf: KdfParams,
    salt: Vec<u8>,
}

impl VaultFile {
    /// Parses and bounds a vault file. Does not run Argon2 or decrypt.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(malformed("larger than any vault file"));
        }
        Self::from_sealed(Sealed::parse(bytes, &KIND)?)
    }

    fn from_sealed(sealed: Sealed) -> Result<Self, Error> {
        match sealed.key_source() {
            KeySource::Argon2id { kdf, salt } => Ok(Self {
                kdf: *kdf,
                salt: salt.clone(),
                sealed,
            }),
            KeySource::StorageKey { .. } => Err(malformed("unknown key derivation function")),
        }
    }

    /// Encrypts a seed under a passphrase with fresh random salt and nonce.
    pub fn seal(seed: &Seed, passphrase: &Passphrase, kdf: KdfParams) -> Result<Self, Error> {
        let mut salt = vec![0u8; SALT_LEN];
        crate::random_bytes(&mut salt)?;
        let mut nonce = [0u8; NONCE_LEN];
        crate::random_bytes(&mut nonce)?;
        let key = kdf.derive_key(passphrase, &salt)?;
        let sealed = Sealed::seal(
            &KIND,
            KeySource::Argon2id { kdf, salt },
            &key,
            nonce,
            b"",
            seed.as_bytes(),
        )?;
        Self::from_sealed(sealed)
    }

    /// Derives the key and decrypts the seed. Any failure is [`Error::Authentication`].
    pub fn open(&self, passphrase: &Passphrase) -> Result<Seed, Error> {
        let key = self.kdf.derive_key(passphrase, &self.salt)?;
        let plain = self.sealed.open(&key, b"")?;
        let seed: [u8; SEED_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| Error::Authentication)?;
        Ok(Seed::from_bytes(Zeroizing::new(seed)))
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.sealed.encode()
    }

    /// The format version of the file.
    pub fn version(&self) -> u8 {
        self.sealed.version()
    }

    /// The Argon2id parameters of the file.
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_owned()).unwrap()
    }

    fn sample() -> (Seed, VaultFile) {
        let seed = Seed::from_bytes(Zeroizing::new([0x5a; 64]));
        let file = VaultFile::seal(
            &seed,
            &pass("correct horse"),
            KdfParams::insecure_for_tests(),
        )
        .unwrap();
        (seed, file)
    }

    #[test]
    fn production_default_is_at_least_64_mib_t3_p1() {
        let d = KdfParams::default();
        assert!(d.memory_kib() >= 64 * 1024);
        assert_eq!(d.iterations(), 3);
        assert_eq!(d.parallelism(), 1);
        assert!(!d.below_default());
        assert!(KdfParams::insecure_for_tests().below_default());
    }

    #[test]
    fn new_params_refuse_weaker_than_default_and_above_bounds() {
        assert!(KdfParams::new(32 * 1024, 3, 1).is_err());
        assert!(KdfParams::new(64 * 1024, 2, 1).is_err());
        assert!(KdfParams::new(64 * 1024, 65, 1).is_err());
        assert!(KdfParams::new(KdfParams::MAX_MEMORY_KIB + 1, 3, 1).is_err());
        assert!(KdfParams::new(64 * 1024, 3, 0).is_err());
        assert_eq!(
            KdfParams::new(128 * 1024, 4, 2).unwrap().memory_kib(),
            128 * 1024
        );
    }

    #[test]
    fn round_trip() {
        let (seed, file) = sample();
        let bytes = file.encode();
        assert_eq!(bytes.len(), 39 + SALT_LEN + CIPHERTEXT_LEN);
        let parsed = VaultFile::parse(&bytes).unwrap();
        assert_eq!(parsed, file);
        let opened = parsed.open(&pass("correct horse")).unwrap();
        assert_eq!(opened.as_bytes(), seed.as_bytes());
    }

    #[test]
    fn wrong_passphrase_is_authentication_error() {
        let (_, file) = sample();
        assert!(matches!(
            file.open(&pass("correct hors")),
            Err(Error::Authentication)
        ));
    }

    #[test]
    fn every_header_byte_is_authenticated() {
        // Flipping any bit of the header must break decryption (or parsing), never yield a seed.
        let (_, file) = sample();
        let bytes = file.encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                if let Ok(f) = VaultFile::parse(&b) {
                    // Raising m or t in the file is parseable; keep the test fast by skipping
                    // decryption when the flip made Argon2 expensive.
                    if f.kdf().memory_kib() > 1024 || f.kdf().iterations() > 4 {
                        continue;
                    }
                    assert!(
                        f.open(&pass("correct horse")).is_err(),
                        "flip at {i} accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn truncations_and_extensions_are_errors() {
        let (_, file) = sample();
        let bytes = file.encode();
        for n in 0..bytes.len() {
            assert!(
                VaultFile::parse(&bytes[..n]).is_err(),
                "truncated to {n} parsed"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(VaultFile::parse(&longer).is_err());
    }

    #[test]
    fn hostile_params_are_bounded() {
        let (_, file) = sample();
        let mut b = file.encode();
        // memory = u32::MAX KiB
        b[11..15].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            VaultFile::parse(&b),
            Err(Error::KdfParamOutOfRange { .. })
        ));
        let mut b = file.encode();
        b[15..19].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            VaultFile::parse(&b),
            Err(Error::KdfParamOutOfRange { .. })
        ));
        let mut b = file.encode();
        b[8] = 2;
        assert!(matches!(
            VaultFile::parse(&b),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }

    /// A vault file written before the sealed layout was shared (the committed fuzz seed,
    /// seed bytes 7, passphrase "fuzz") still opens to the same seed.
    #[test]
    fn committed_version_1_file_still_opens() {
        let bytes = include_bytes!("../../fuzz/corpus/vault_file/valid_weak_params.bin");
        let file = VaultFile::parse(bytes).unwrap();
        assert_eq!(file.version(), 1);
        assert_eq!(file.encode(), bytes);
        assert_eq!(file.open(&pass("fuzz")).unwrap().as_bytes(), &[7u8; 64]);
        assert!(matches!(
            file.open(&pass("fuzz!")),
            Err(Error::Authentication)
        ));
        let strong = include_bytes!("../../fuzz/corpus/vault_file/valid_default_params.bin");
        assert_eq!(VaultFile::parse(strong).unwrap().kdf(), KdfParams::DEFAULT);
    }

    #[test]
    fn each_seal_uses_fresh_salt_and_nonce() {
        let seed = Seed::from_bytes(Zeroizing::new([1; 64]));
        let p = pass("x");
        let a = VaultFile::seal(&seed, &p, KdfParams::insecure_for_tests()).unwrap();
        let b = VaultFile::seal(&seed, &p, KdfParams::insecure_for_tests()).unwrap();
        assert_ne!(a.salt, b.salt);
        let (a, b) = (a.encode(), b.encode());
        let nonce = 25 + SALT_LEN..37 + SALT_LEN;
        assert_ne!(a[nonce.clone()], b[nonce]);
        assert_ne!(a[39 + SALT_LEN..], b[39 + SALT_LEN..]);
    }
}

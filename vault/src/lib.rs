//! Alknet vault: the node's BIP39 seed, encrypted at rest, and the keys derived from it.
//!
//! A gateway's identity must be recoverable from the words written on paper, and the secrets
//! on its disk must be useless to whoever steals the disk. So the node keeps one secret, the
//! 64-byte BIP39 seed, in `<data_dir>/vault.bin`, encrypted with AES-256-GCM under a key that
//! Argon2id stretches from a passphrase (see [`mod@format`] for the file layout). Every other key
//! is derived from the seed with SLIP-0010 for Ed25519 under coin type 74':
//!
//! | key                     | path                     |
//! |-------------------------|--------------------------|
//! | node identity           | `m/74'/0'/0'/0'`         |
//! | SSH host key            | `m/74'/0'/1'/0'`         |
//! | pkarr signing key       | `m/74'/0'/2'/0'`         |
//! | storage encryption, v   | `m/74'/2'/0'/v'`         |
//!
//! The crate is a library: it does not run a server, hold a key in a TLS config, prompt on a
//! terminal or decide when to unlock. The `alknet` CLI (`src/vault_cli.rs` in the root
//! package) finds the passphrase and calls [`vault_exists`], [`unlock`] and [`create`]. Every
//! sealed byte string of the crate, the vault file and the credential-store blobs alike, uses
//! the one layout of [`mod@seal`]. Secret types zeroize on drop and implement neither `Debug`
//! nor `Display`.
#![forbid(unsafe_code)]

pub mod blob;
mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod seal;
pub mod secret;
pub mod slip10;
pub mod store;

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use error::Error;
pub use format::KdfParams;
pub use secret::{Mnemonic, Passphrase, Seed, read_secret_file};
pub use store::{VAULT_FILE_NAME, vault_path};

use format::VaultFile;

/// Whether a vault file exists in `data_dir` (at `<data_dir>/vault.bin`).
pub fn vault_exists(data_dir: &Path) -> bool {
    vault_path(data_dir).is_file()
}

/// Reads and decrypts the vault in `data_dir`.
///
/// A wrong passphrase and an altered file both give [`Error::Authentication`]; a damaged or
/// foreign file gives [`Error::Malformed`] without running Argon2.
pub fn unlock(data_dir: &Path, passphrase: &Passphrase) -> Result<UnlockedVault, Error> {
    let file = VaultFile::parse(&store::read(data_dir)?)?;
    let seed = file.open(passphrase)?;
    Ok(UnlockedVault {
        seed,
        kdf: file.kdf(),
    })
}

/// Creates a new vault in `data_dir` holding `seed`; refuses to replace an existing vault.
pub fn create(
    data_dir: &Path,
    seed: Seed,
    passphrase: &Passphrase,
    kdf: KdfParams,
) -> Result<UnlockedVault, Error> {
    let path = vault_path(data_dir);
    if path.exists() {
        return Err(Error::AlreadyExists { path });
    }
    let file = VaultFile::seal(&seed, passphrase, kdf)?;
    store::write_atomic(data_dir, &file.encode())?;
    Ok(UnlockedVault { seed, kdf })
}

/// What can be learned about a vault without its passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultInfo {
    /// The vault file.
    pub path: PathBuf,
    /// Format version in the header.
    pub format_version: u8,
    /// Argon2id parameters in the header.
    pub kdf: KdfParams,
    /// File size in bytes.
    pub size: u64,
    /// Unix permission bits of the file.
    pub mode: u32,
}

/// Reads the header of the vault in `data_dir` (no passphrase, no Argon2).
pub fn inspect(data_dir: &Path) -> Result<VaultInfo, Error> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = store::read(data_dir)?;
    let file = VaultFile::parse(&bytes)?;
    let path = vault_path(data_dir);
    let mode = std::fs::metadata(&path)
        .map_err(|e| Error::io("reading", &path, e))?
        .permissions()
        .mode()
        & 0o7777;
    Ok(VaultInfo {
        path,
        format_version: file.version(),
        kdf: file.kdf(),
        size: bytes.len() as u64,
        mode,
    })
}

/// A decrypted vault: the seed, ready to derive keys. Zeroized on drop; no `Debug`.
pub struct UnlockedVault {
    seed: Seed,
    kdf: KdfParams,
}

impl UnlockedVault {
    /// The node identity's Ed25519 secret key (32-byte RFC 8032 seed) at `m/74'/0'/0'/0'`.
    pub fn node_identity_seed(&self) -> Zeroizing<[u8; 32]> {
        slip10::derive(self.seed.as_bytes(), &slip10::NODE_IDENTITY_PATH)
    }

    /// The SSH host key's Ed25519 secret key at `m/74'/0'/1'/0'`.
    pub fn ssh_host_seed(&self) -> Zeroizing<[u8; 32]> {
        slip10::derive(self.seed.as_bytes(), &slip10::SSH_HOST_PATH)
    }

    /// The Ed25519 secret key that signs the node's pkarr records, at `m/74'/0'/2'/0'`.
    pub fn pkarr_seed(&self) -> Zeroizing<[u8; 32]> {
        slip10::derive(self.seed.as_bytes(), &slip10::PKARR_PATH)
    }

    /// The 32-byte storage encryption key of `version` at `m/74'/2'/0'/<version>'`.
    ///
    /// Versions are 31-bit (SLIP-0010 hardened indices): `v` and `v | 2^31` name the same key,
    /// so keep versions at or below [`blob::MAX_KEY_VERSION`].
    pub fn storage_key(&self, version: u32) -> Zeroizing<[u8; 32]> {
        slip10::derive(self.seed.as_bytes(), &slip10::storage_path(version))
    }

    /// Encrypts a credential-store blob under the storage key of `key_version`.
    /// `aad` binds the blob to its record (e.g. the record's key).
    pub fn seal_blob(
        &self,
        key_version: u32,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        blob::seal(&self.storage_key(key_version), key_version, aad, plaintext)
    }

    /// Decrypts a blob made by [`UnlockedVault::seal_blob`]; returns the key version it used,
    /// so the caller can re-seal blobs of older versions.
    pub fn open_blob(&self, aad: &[u8], blob: &[u8]) -> Result<(u32, Zeroizing<Vec<u8>>), Error> {
        blob::open(|v| self.storage_key(v), aad, blob)
    }

    /// The Argon2id parameters the vault file was written with.
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    /// Re-encrypts the seed under `passphrase` and `kdf` (fresh salt and nonce) and atomically
    /// replaces the vault file: changes the passphrase, or raises the Argon2 parameters.
    pub fn rewrite(
        &mut self,
        data_dir: &Path,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<(), Error> {
        let file = VaultFile::seal(&self.seed, passphrase, kdf)?;
        store::write_atomic(data_dir, &file.encode())?;
        self.kdf = kdf;
        Ok(())
    }
}

/// The raw 32-byte Ed25519 public key of a 32-byte secret key.
pub fn public_key_of_seed(seed: &[u8; 32]) -> [u8; 32] {
    use ring::signature::KeyPair;
    match ring::signature::Ed25519KeyPair::from_seed_unchecked(seed) {
        Ok(pair) => {
            let mut out = [0u8; 32];
            out.copy_from_slice(pair.public_key().as_ref());
            out
        }
        Err(_) => unreachable_seed_len(),
    }
}

#[cold]
fn unreachable_seed_len() -> ! {
    // ring rejects a seed only for its length, and the type fixes it at 32.
    unreachable!("ring accepts every 32-byte ed25519 seed")
}

/// `ed25519:<64 lowercase hex of the raw 32-byte public key>` of a secret key.
pub fn fingerprint_of_seed(seed: &[u8; 32]) -> String {
    format!("ed25519:{}", hex::encode(public_key_of_seed(seed)))
}

/// Fills `buf` from the operating system's random generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

#[cfg(test)]
mod tests;

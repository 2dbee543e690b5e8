//! SLIP-0010 private key derivation for Ed25519, hardened children only.
//!
//! This is the whole of SLIP-0010 that Ed25519 allows: a master key from the BIP39 seed, then
//! hardened child steps. It does not do public derivation (Ed25519 has none under SLIP-0010)
//! nor any other curve. It is HMAC-SHA512 applied exactly as the specification says; the
//! specification's test vectors 1 and 2 pin it down in the tests below.
//!
//! Spec: <https://github.com/satoshilabs/slips/blob/master/slip-0010.md>

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha512;
use zeroize::Zeroizing;

/// The bit that marks a hardened index.
pub const HARDENED: u32 = 0x8000_0000;

/// SLIP-44 coin type used by Alknet (`74'`).
pub const COIN_TYPE: u32 = 74;

/// Node identity key: `m/74'/0'/0'/0'`.
pub const NODE_IDENTITY_PATH: [u32; 4] = [COIN_TYPE, 0, 0, 0];

/// SSH host key: `m/74'/0'/1'/0'`.
pub const SSH_HOST_PATH: [u32; 4] = [COIN_TYPE, 0, 1, 0];

/// `m/74'/0'/2'/0'`: the key that signs the node's pkarr records.
pub const PKARR_PATH: [u32; 4] = [COIN_TYPE, 0, 2, 0];

/// Storage encryption key of version `v`: `m/74'/2'/0'/v'`.
pub const fn storage_path(version: u32) -> [u32; 4] {
    [COIN_TYPE, 2, 0, version]
}

/// An extended private key: the 32-byte Ed25519 secret key and its chain code.
///
/// Zeroized on drop; neither `Debug` nor `Display`.
pub struct ExtendedKey {
    key: Zeroizing<[u8; 32]>,
    chain_code: Zeroizing<[u8; 32]>,
}

type HmacSha512 = Hmac<Sha512>;

//= https://github.com/satoshilabs/slips/blob/master/slip-0010.md#master-key-generation
//# Calculate I = HMAC-SHA512(Key = Curve, Data = S)
//# Split I into two 32-byte sequences, IL and IR.
//# Use parse256(IL) as master secret key, and IR as master chain code.
const ED25519_CURVE: &[u8] = b"ed25519 seed";

impl ExtendedKey {
    /// The master key of a seed (usually the 64-byte BIP39 seed; SLIP-0010 allows 16..=64 bytes).
    pub fn master(seed: &[u8]) -> Self {
        Self::from_hmac(ED25519_CURVE, &[seed])
    }

    /// The hardened child `index'`. The hardened bit is set here; `index` may carry it already.
    //= https://github.com/satoshilabs/slips/blob/master/slip-0010.md#private-parent-key--private-child-key
    //# If so (hardened child): let I = HMAC-SHA512(Key = cpar, Data = 0x00 || ser256(kpar) || ser32(i)).
    //# If curve is ed25519 or curve25519: The returned child key ki is IL.
    pub fn child(&self, index: u32) -> Self {
        let index = (index | HARDENED).to_be_bytes();
        Self::from_hmac(
            self.chain_code.as_slice(),
            &[&[0u8], self.key.as_slice(), &index],
        )
    }

    /// Follows a path of (hardened) indices from this key.
    pub fn derive_path(&self, path: &[u32]) -> Self {
        let mut key = self.clone_secret();
        for &index in path {
            key = key.child(index);
        }
        key
    }

    /// The 32-byte Ed25519 secret key (RFC 8032 private key, the "seed" of ring's API).
    pub fn secret_key(&self) -> Zeroizing<[u8; 32]> {
        self.key.clone()
    }

    /// The chain code.
    pub fn chain_code(&self) -> Zeroizing<[u8; 32]> {
        self.chain_code.clone()
    }

    fn clone_secret(&self) -> Self {
        Self {
            key: self.key.clone(),
            chain_code: self.chain_code.clone(),
        }
    }

    fn from_hmac(key: &[u8], data: &[&[u8]]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty
        // state is impossible, hence the match on a type that only has the Ok arm in use.
        let mut mac = match HmacSha512::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        for part in data {
            mac.update(part);
        }
        let out = Zeroizing::new(<[u8; 64]>::from(mac.finalize().into_bytes()));
        let mut k = Zeroizing::new([0u8; 32]);
        let mut c = Zeroizing::new([0u8; 32]);
        let (il, ir) = out.split_at(32);
        k.copy_from_slice(il);
        c.copy_from_slice(ir);
        Self {
            key: k,
            chain_code: c,
        }
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // `Hmac::new_from_slice` only fails for MACs with a fixed key size; HMAC has none.
    unreachable!("hmac accepts keys of every length")
}

/// Derives the Ed25519 secret key at `path` (hardened indices) from a seed.
pub fn derive(seed: &[u8], path: &[u32]) -> Zeroizing<[u8; 32]> {
    ExtendedKey::master(seed).derive_path(path).secret_key()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse_path(s: &str) -> Vec<u32> {
        let mut parts = s.split('/');
        assert_eq!(parts.next(), Some("m"));
        parts
            .map(|p| {
                p.strip_suffix('\'')
                    .expect("hardened")
                    .parse::<u32>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn slip10_ed25519_test_vectors_1_and_2() {
        let text = include_str!("testdata/slip10_ed25519.txt");
        let mut seed = Vec::new();
        let mut checked = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields[0] == "seed" {
                seed = hex::decode(fields[1]).unwrap();
                continue;
            }
            let key = ExtendedKey::master(&seed).derive_path(&parse_path(fields[0]));
            assert_eq!(
                hex::encode(*key.chain_code()),
                fields[1],
                "chain code {}",
                fields[0]
            );
            assert_eq!(
                hex::encode(*key.secret_key()),
                fields[2],
                "private {}",
                fields[0]
            );
            // SLIP-0010 serializes ed25519 public keys as 0x00 || the 32-byte key.
            let public = crate::public_key_of_seed(&key.secret_key());
            assert_eq!(
                format!("00{}", hex::encode(public)),
                fields[3],
                "public {}",
                fields[0]
            );
            checked += 1;
        }
        assert_eq!(checked, 12, "both vectors, six chains each");
    }

    #[test]
    fn hardened_bit_is_idempotent() {
        let master = ExtendedKey::master(&[7u8; 64]);
        assert_eq!(
            *master.child(5).secret_key(),
            *master.child(5 | HARDENED).secret_key()
        );
    }

    #[test]
    fn alknet_paths_are_distinct() {
        let seed = [1u8; 64];
        let a = derive(&seed, &NODE_IDENTITY_PATH);
        let b = derive(&seed, &SSH_HOST_PATH);
        let c = derive(&seed, &storage_path(0));
        let d = derive(&seed, &storage_path(1));
        let all = [*a, *b, *c, *d];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}

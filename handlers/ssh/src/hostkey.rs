//! The SSH host key: Ed25519, derived from the vault (`m/74'/0'/1'/0'`, so it is recovered
//! with the words) or, without a vault, stored in the data directory as
//! [`HOST_KEY_FILE`] (OpenSSH format, mode 0600), created on first use.
//!
//! Also the two lines clients need: the `known_hosts` entry and the OpenSSH-format public key.

use russh::keys::HashAlg;
/// The host key type (an OpenSSH private key; Ed25519 here).
pub use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use std::io;
use std::path::Path;

/// The host key's file in the data directory (used only when there is no vault).
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// The host key for a 32-byte seed (the vault's `ssh_host_seed`).
pub fn from_seed(seed: &[u8; 32]) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(seed))
}

/// The host key of a data directory without a vault: read from [`HOST_KEY_FILE`], or made
/// and written there (0600) on first use.
pub fn load_or_create(data_dir: &Path) -> io::Result<PrivateKey> {
    let path = data_dir.join(HOST_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let key = PrivateKey::from_openssh(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not an OpenSSH private key ({e}); move it away to make a new host key",
                        path.display()
                    ),
                )
            })?;
            if !matches!(key.key_data(), KeypairData::Ed25519(_)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: the host key must be Ed25519", path.display()),
                ));
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::fill(&mut seed[..]);
            let key = from_seed(&seed);
            seed.fill(0);
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| io::Error::other(format!("cannot encode the host key: {e}")))?;
            alknet_core::fsutil::write_private_atomic(&path, text.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: cannot read the host key: {e}", path.display()),
        )),
    }
}

/// The public key as OpenSSH writes it: `ssh-ed25519 AAAA…`.
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key()
        .to_openssh()
        .unwrap_or_else(|_| String::from("ssh-ed25519"))
}

/// The `known_hosts` line for `host` (a name or `HostKeyAlias`): `host ssh-ed25519 AAAA…`.
pub fn known_hosts_line(host: &str, key: &PrivateKey) -> String {
    format!("{host} {}", public_line(key))
}

/// The key's SHA-256 fingerprint as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_key_is_created_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(HOST_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(public_line(&a), public_line(&b));
        assert!(public_line(&a).starts_with("ssh-ed25519 AAAA"));
        std::fs::write(dir.path().join(HOST_KEY_FILE), b"garbage").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }

    #[test]
    fn seed_key_is_deterministic() {
        let a = from_seed(&[7; 32]);
        let b = from_seed(&[7; 32]);
        assert_eq!(public_line(&a), public_line(&b));
        assert_ne!(public_line(&a), public_line(&from_seed(&[8; 32])));
        assert!(known_hosts_line("gw", &a).starts_with("gw ssh-ed25519 "));
    }
}

//! Loading the node key: from the vault when the data directory has one, else from the
//! plain key file (created on first use).

use alknet_core::identity::tls::NodeKey;
use anyhow::{Context, Result};
use std::path::Path;

/// The node key and where it came from.
pub(crate) struct LoadedKey {
    pub(crate) key: NodeKey,
    pub(crate) source: &'static str,
    /// The SSH host key's seed (`m/74'/0'/1'/0'`) when the key came from the vault; without
    /// a vault the SSH host key lives in its own file.
    #[cfg_attr(not(feature = "ssh"), allow(dead_code))]
    pub(crate) ssh_host_seed: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// The pkarr signing key's seed (`m/74'/0'/2'/0'`) when the key came from the vault;
    /// without a vault it lives in its own file.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    pub(crate) pkarr_seed: Option<zeroize::Zeroizing<[u8; 32]>>,
}

pub(crate) fn load(data_dir: &Path, passphrase_file: Option<&Path>) -> Result<LoadedKey> {
    alknet_core::fsutil::ensure_data_dir(data_dir)
        .with_context(|| format!("cannot use data directory {}", data_dir.display()))?;
    if alknet_vault::vault_exists(data_dir) {
        let pass = crate::vault_cli::read_passphrase(passphrase_file, "vault passphrase: ")?;
        let vault = alknet_vault::unlock(data_dir, &pass)
            .with_context(|| format!("cannot unlock the vault in {}", data_dir.display()))?;
        return Ok(LoadedKey {
            key: NodeKey::from_seed(vault.node_identity_seed()),
            source: "vault",
            ssh_host_seed: Some(vault.ssh_host_seed()),
            pkarr_seed: Some(vault.pkarr_seed()),
        });
    }
    let key = NodeKey::load_or_create(data_dir)?;
    Ok(LoadedKey {
        key,
        ssh_host_seed: None,
        pkarr_seed: None,
        source: "key file (no vault; `alknet vault init` makes the identity recoverable from words)",
    })
}

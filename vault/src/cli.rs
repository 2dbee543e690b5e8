//! `alknet vault …` subcommands.

use std::path::Path;

/// The `alknet vault` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VaultCommand {
    /// Show whether a vault exists in the data directory and how it is protected.
    Status,
}

/// Runs one `alknet vault` subcommand against the vault in `data_dir`.
pub fn run(cmd: VaultCommand, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        VaultCommand::Status => {
            anyhow::bail!("no vault in {}", data_dir.display())
        }
    }
}

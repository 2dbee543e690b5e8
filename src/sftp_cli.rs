//! `alknet sftp-server`: the SFTP subsystem on stdin/stdout, a drop-in for OpenSSH's
//! `sftp-server` (`sftp -D`, sshd's `Subsystem`), confined to one directory.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// Arguments of `alknet sftp-server`.
#[derive(Debug, clap::Args)]
pub(crate) struct SftpServerArgs {
    /// Directory the client sees as `/`; nothing outside it is read or written.
    /// Default: $HOME.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// Serves one SFTP session on stdin/stdout until the client closes it.
pub(crate) fn run(args: SftpServerArgs) -> Result<()> {
    let root = match args.root {
        Some(r) => r,
        None => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => bail!("no --root given and HOME is not set; pass --root DIR"),
        },
    };
    if !root.is_dir() {
        bail!(
            "sftp root {} is not a directory; pass --root with an existing directory",
            root.display()
        );
    }
    let peer = std::env::var("USER").unwrap_or_else(|_| "local".to_owned());
    alknet_ssh::sftp::serve_stdio(alknet_ssh::sftp::SftpOptions {
        root: root.clone(),
        peer,
    })
    .with_context(|| format!("sftp session rooted at {}", root.display()))
}

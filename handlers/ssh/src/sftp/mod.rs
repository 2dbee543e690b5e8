//! The SFTP subsystem: a pipelined server confined to one directory tree.

use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where and for whom one SFTP session runs.
#[derive(Debug, Clone)]
pub struct SftpOptions {
    /// The directory the client sees as `/`; nothing outside it is read or written.
    pub root: PathBuf,
    /// Who the session is for, in logs (the peer id).
    pub peer: String,
}

/// Serves one SFTP session on `stream` (the subsystem channel, or stdin/stdout) until the
/// client closes it.
pub async fn serve<S>(stream: S, opts: SftpOptions) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    drop((stream, opts));
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the SFTP subsystem is not built into this Alknet yet",
    ))
}

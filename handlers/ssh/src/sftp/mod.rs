//! The SFTP subsystem: a pipelined SFTP v3 server confined to one directory tree.
//!
//! The client sees the session's root as `/`; every path is resolved beneath a directory
//! handle opened once per session (`cap_std::fs::Dir`), so no `..`, absolute path or symlink
//! (present before or swapped in during an operation) reaches outside it. Requests are
//! served concurrently and answered as they complete (`session`), on russh-sftp's packet
//! codec; file I/O runs on tokio's blocking pool (`ops`). It speaks what OpenSSH's `sftp`
//! and `scp` use, including the `posix-rename`, `statvfs`, `fstatvfs`, `hardlink`, `fsync`,
//! `limits` and `expand-path` extensions of `@openssh.com`.
//!
//! Symlinks: SYMLINK creates a link only when its target is relative and stays beneath the
//! root read lexically from the link's directory; links pointing out (absolute, or `..`
//! above the root) are refused with PERMISSION_DENIED, as other programs on the host would
//! follow them unconfined. Existing links are followed only where they stay inside.
//!
//! It does not authenticate or pick the root: the SSH service (or `alknet sftp-server`)
//! does both before calling [`serve`].

mod ops;
mod path;
mod session;
mod wire;

#[doc(hidden)]
pub mod fuzzing;

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
///
/// An error means the session could not start (the root cannot be opened) or ended on a
/// protocol violation (an oversized or truncated packet, a request before INIT) or an I/O
/// error of the stream; a client that simply closes the stream ends it with `Ok`.
pub async fn serve<S>(stream: S, opts: SftpOptions) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_with(stream, opts, false).await
}

/// [`serve`], with zero handle nonces when `predictable_handles` (the fuzzing entry point,
/// so an input can use the handles it opened).
async fn serve_with<S>(
    stream: S,
    opts: SftpOptions,
    predictable_handles: bool,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let root_path = opts.root.clone();
    let root = tokio::task::spawn_blocking(move || {
        cap_std::fs::Dir::open_ambient_dir(&root_path, cap_std::ambient_authority())
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot open the sftp root {}: {e}", opts.root.display()),
        )
    })?;
    tracing::debug!(peer = %opts.peer, root = %opts.root.display(), "sftp session started");
    let result = session::run(stream, root, predictable_handles).await;
    match &result {
        Ok(()) => tracing::debug!(peer = %opts.peer, "sftp session ended"),
        Err(e) => tracing::warn!(peer = %opts.peer, error = %e, "sftp session ended with an error"),
    }
    result
}

/// Serves one SFTP session on this process's stdin and stdout on a current-thread tokio
/// runtime, as OpenSSH's `sftp-server` does (`alknet sftp-server`).
///
/// Pipes and sockets are driven non-blocking by the runtime; anything else (a file, a
/// terminal) goes through tokio's stdio threads.
pub fn serve_stdio(opts: SftpOptions) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()?;
    rt.block_on(async move {
        let reader = stdio::reader()?;
        let writer = stdio::writer()?;
        serve(tokio::io::join(reader, writer), opts).await
    })
}

mod stdio {
    //! stdin and stdout as async halves.
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    use std::pin::Pin;
    use tokio::io::{AsyncRead, AsyncWrite};

    pub(super) type Reader = Pin<Box<dyn AsyncRead + Send>>;
    pub(super) type Writer = Pin<Box<dyn AsyncWrite + Send>>;

    fn kind(fd: &OwnedFd) -> io::Result<std::fs::FileType> {
        Ok(std::fs::File::from(fd.try_clone()?).metadata()?.file_type())
    }

    pub(super) fn reader() -> io::Result<Reader> {
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        let t = kind(&fd)?;
        if t.is_fifo() {
            return Ok(Box::pin(tokio::net::unix::pipe::Receiver::from_owned_fd(
                fd,
            )?));
        }
        if t.is_socket() {
            let s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(true)?;
            return Ok(Box::pin(tokio::net::UnixStream::from_std(s)?));
        }
        Ok(Box::pin(tokio::io::stdin()))
    }

    pub(super) fn writer() -> io::Result<Writer> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        let t = kind(&fd)?;
        if t.is_fifo() {
            return Ok(Box::pin(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?));
        }
        if t.is_socket() {
            let s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(true)?;
            return Ok(Box::pin(tokio::net::UnixStream::from_std(s)?));
        }
        Ok(Box::pin(tokio::io::stdout()))
    }
}

/// At most `max` bytes of peer text, for error messages.
fn truncate(s: &str, max: usize) -> &str {
    alknet_proto::call::truncate(s, max)
}

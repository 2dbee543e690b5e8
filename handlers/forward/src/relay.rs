//! Copying a forwarded connection both ways, with half-close, counting bytes, and the one
//! log line each forward leaves when it ends.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

/// Bytes copied per read.
const CHUNK: usize = 64 << 10;

/// How a relay ended.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the client side to the target side.
    pub up: u64,
    /// Bytes from the target side to the client side.
    pub down: u64,
    /// The first error in either direction, if any.
    pub result: io::Result<()>,
}

/// Copies `client` to `target` and back until both directions have ended. The end of one
/// direction (EOF) is passed on as a half-close (`shutdown` of the other side's writer),
/// and the other direction keeps going; an error in either direction ends both.
pub async fn relay<A, B>(client: A, target: B) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut tr, mut tw) = tokio::io::split(target);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let result = {
        let a = std::pin::pin!(copy_half(&mut cr, &mut tw, &up));
        let b = std::pin::pin!(copy_half(&mut tr, &mut cw, &down));
        let mut a = a;
        let mut b = b;
        tokio::select! {
            r = &mut a => match r { Ok(()) => b.await, Err(e) => Err(e) },
            r = &mut b => match r { Ok(()) => a.await, Err(e) => Err(e) },
        }
    };
    Relayed {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        result,
    }
}

async fn copy_half<R, W>(from: &mut R, to: &mut W, count: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        let Some(chunk) = buf.get(..n) else {
            return Err(io::Error::other("read past its buffer"));
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(chunk).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Logs the end of a forward: peer, kind, port and bytes at info; the target host only at
/// debug (where a peer goes is its business, not the log's).
pub fn log_end(peer: &str, kind: &'static str, host: &str, port: u16, r: &Relayed) {
    match &r.result {
        Ok(()) => info!(
            peer,
            kind,
            port,
            bytes_up = r.up,
            bytes_down = r.down,
            "forward ended"
        ),
        Err(e) => info!(
            peer,
            kind,
            port,
            bytes_up = r.up,
            bytes_down = r.down,
            error = %e,
            "forward ended"
        ),
    }
    debug!(peer, kind, host, port, "forward destination");
}

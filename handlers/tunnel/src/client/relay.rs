//! The client's half of a tunnel stream: a local TCP connection copied both ways over one
//! QUIC stream, on the client's monoio runtime (no bridge: the QUIC driver and the sockets
//! share one thread).
//!
//! A TCP end of stream (FIN) finishes the QUIC stream and a QUIC FIN half-closes the TCP
//! connection, so each direction ends on its own. An error in either direction ends both:
//! the QUIC stream is reset and stopped with [`reset_code::TCP_RESET`] and the TCP
//! connection is closed with a reset, so neither side takes a cut connection for a
//! complete one.

use alknet_core::{RecvStream, SendStream, StreamError};
use alknet_proto::tunnel::{Decoded, HeaderError, MAX_HEADER_LEN, Verdict, reset_code};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::time::Duration;

/// Bytes read from a TCP connection at a time.
const CHUNK: usize = 64 << 10;

/// The most bytes of waiting chunks gathered into one TCP write.
const BATCH: usize = 256 << 10;

/// Reads smaller than this are copied out, so the read buffer is reused and a small chunk
/// does not pin a whole one while it waits for its acknowledgement.
const COPY_BELOW: usize = 16 << 10;

/// How a relay ended.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// Bytes from the local connection into the tunnel.
    pub(crate) up: u64,
    /// Bytes from the tunnel to the local connection.
    pub(crate) down: u64,
    /// What broke it, if anything did.
    pub(crate) error: Option<String>,
}

enum Broke {
    Tcp(std::io::Error),
    Quic(StreamError),
}

impl std::fmt::Display for Broke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broke::Tcp(e) => write!(f, "local connection: {e}"),
            Broke::Quic(e) => write!(f, "tunnel stream: {e}"),
        }
    }
}

/// Copies `tcp` and the stream both ways until both directions have ended. `early_up` is
/// sent into the tunnel first and `early_down` written to `tcp` first: bytes read past a
/// header on either side.
pub(crate) async fn relay(
    tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    early_up: Bytes,
    early_down: Bytes,
) -> Relayed {
    let fd = tcp.as_raw_fd();
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let (up, down) = (Cell::new(0u64), Cell::new(0u64));
    let result = {
        let a = pin!(upload(&mut rd, &mut send, early_up, &up));
        let b = pin!(download(&mut wr, &mut recv, early_down, &down));
        match select(a, b).await {
            Either::Left((Ok(()), b)) => b.await,
            Either::Right((Ok(()), a)) => a.await,
            Either::Left((Err(e), _)) | Either::Right((Err(e), _)) => Err(e),
        }
    };
    let error = match result {
        Ok(()) => None,
        Err(e) => {
            send.reset(reset_code::TCP_RESET);
            recv.stop(reset_code::TCP_RESET);
            // The halves still hold the socket open: the reset goes out when they drop.
            let _ = alknet_core::net::sys::set_linger_zero(fd);
            Some(e.to_string())
        }
    };
    drop((rd, wr));
    Relayed {
        up: up.get(),
        down: down.get(),
        error,
    }
}

async fn upload<R: AsyncReadRent>(
    rd: &mut R,
    send: &mut SendStream,
    early: Bytes,
    count: &Cell<u64>,
) -> Result<(), Broke> {
    if !early.is_empty() {
        count.set(count.get() + early.len() as u64);
        send.write_chunk(early).await.map_err(Broke::Quic)?;
    }
    let mut buf = Vec::with_capacity(CHUNK);
    loop {
        buf.clear();
        let (r, b) = rd.read(buf).await;
        buf = b;
        let n = r.map_err(Broke::Tcp)?;
        if n == 0 {
            return send.finish().map_err(Broke::Quic);
        }
        let chunk = if n < COPY_BELOW {
            Bytes::copy_from_slice(buf.get(..n).unwrap_or_default())
        } else {
            Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)))
        };
        count.set(count.get() + n as u64);
        send.write_chunk(chunk).await.map_err(Broke::Quic)?;
    }
}

async fn download<W: AsyncWriteRent>(
    wr: &mut W,
    recv: &mut RecvStream,
    early: Bytes,
    count: &Cell<u64>,
) -> Result<(), Broke> {
    if !early.is_empty() {
        let n = early.len() as u64;
        wr.write_all(early).await.0.map_err(Broke::Tcp)?;
        count.set(count.get() + n);
    }
    // QUIC hands over about one datagram per chunk: the chunks already waiting are written
    // in one go (up to BATCH bytes), not one write per datagram.
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = recv.read_chunk(CHUNK).await.map_err(Broke::Quic)? else {
            return wr.shutdown().await.map_err(Broke::Tcp);
        };
        let mut end = None;
        let out = if first.len() >= CHUNK / 2 {
            first
        } else {
            batch.extend_from_slice(&first);
            while batch.len() < BATCH {
                // Polled once: a chunk not there yet stays in the stream (cancel-safe).
                match recv.read_chunk(CHUNK).now_or_never() {
                    Some(Ok(Some(more))) => batch.extend_from_slice(&more),
                    Some(r) => {
                        end = Some(r);
                        break;
                    }
                    None => break,
                }
            }
            Bytes::from(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
        };
        let n = out.len() as u64;
        wr.write_all(out).await.0.map_err(Broke::Tcp)?;
        count.set(count.get() + n);
        match end {
            None => {}
            Some(Ok(_)) => return wr.shutdown().await.map_err(Broke::Tcp),
            Some(Err(e)) => return Err(Broke::Quic(e)),
        }
    }
}

/// Why a header could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderReadError {
    /// The stream failed or ended first.
    #[error("the gateway ended the stream before its answer ({0})")]
    Stream(String),
    /// Not a header.
    #[error("the gateway's answer is not a tunnel header: {0}")]
    Bad(HeaderError),
    /// Nothing came in time.
    #[error("no answer from the gateway within {0:?}")]
    Timeout(Duration),
}

/// Reads one header decoded by `decode` from the start of `recv`, within `limit`; the bytes
/// read past it come back with it.
pub(crate) async fn read_header<T>(
    recv: &mut RecvStream,
    limit: Duration,
    decode: impl Fn(&[u8]) -> Result<Decoded<T>, HeaderError>,
) -> Result<(T, Bytes), HeaderReadError> {
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(64);
        loop {
            match decode(&buf).map_err(HeaderReadError::Bad)? {
                Decoded::Done(v, n) => {
                    let rest = Bytes::copy_from_slice(buf.get(n..).unwrap_or_default());
                    return Ok((v, rest));
                }
                Decoded::Incomplete => {}
            }
            let want = MAX_HEADER_LEN.saturating_sub(buf.len()).max(1);
            match recv.read_chunk(want).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) => return Err(HeaderReadError::Stream("end of stream".into())),
                Err(e) => return Err(HeaderReadError::Stream(e.to_string())),
            }
        }
    };
    match monoio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(HeaderReadError::Timeout(limit)),
    }
}

/// Reads the gateway's verdict on a request.
pub(crate) async fn read_verdict(
    recv: &mut RecvStream,
    limit: Duration,
) -> Result<(Verdict, Bytes), HeaderReadError> {
    read_header(recv, limit, Verdict::decode).await
}

/// Closes `tcp` with a reset (a refused or failed forward).
pub(crate) fn reset(tcp: TcpStream) {
    let _ = alknet_core::net::sys::set_linger_zero(tcp.as_raw_fd());
    drop(tcp);
}

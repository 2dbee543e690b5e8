//! `alknet connect`: one bidirectional stream piped to stdin/stdout.
//!
//! stdin and stdout are read and written on their own threads (they block), connected to the
//! runtime by small bounded queues so a slow consumer pushes back on the stream instead of
//! stalling the QUIC driver.
//!
//! The connection always ends with a CONNECTION_CLOSE, so the server frees the session (and
//! its slot under the peer's session cap) at once instead of at its idle timeout:
//! - stdin at EOF finishes the stream; once the server's side has ended too, the connection
//!   is closed with `NO_ERROR`;
//! - the connection closing or failing ends both directions at once, whatever stdin does
//!   (OpenSSH keeps its `ProxyCommand`'s stdin open until it gives up on the server);
//! - SIGHUP (sent by OpenSSH to its `ProxyCommand` when `ssh` exits), SIGTERM and SIGINT
//!   close the connection with `NO_ERROR` and exit with 128 + the signal number.

use alknet_core::client::{KnownServers, TrustedConnect, connect_trusted};
use alknet_core::config::{Config, DriverKind};
use alknet_core::{Connection, ConnectionError, StreamError, VarInt, close_code};
use alknet_proto::Fingerprint;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use std::io::{Read, Write};
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 64 * 1024;
/// The most bytes of waiting stream chunks gathered into one stdout write.
const BATCH: usize = 256 * 1024;
/// Reads of stdin queued for the runtime: with `BATCH`, at most 1 MiB.
const IN_QUEUE: usize = 4;
/// The size asked for stdin's and stdout's pipes: four batches.
const PIPE_SIZE: usize = 1 << 20;
/// Batches queued for the stdout thread: with `BATCH`, at most 512 KiB waits for the reader.
const OUT_QUEUE: usize = 2;

/// How long the close may take to be sent and acknowledged before the process exits anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The signals that end a session cleanly.
const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGINT,
];

/// How a session ended without an error.
enum Ended {
    /// Both directions reached their end.
    Done,
    /// Stopped by this signal.
    Signal(i32),
}

pub(crate) fn run(
    data_dir: &Path,
    addr: &str,
    alpn: &str,
    fingerprint: Option<&str>,
    passphrase_file: Option<&Path>,
) -> Result<()> {
    let pinned =
        alknet_core::client::parse_pin("--fingerprint", fingerprint).map_err(anyhow::Error::msg)?;
    if alpn.is_empty() || alpn.len() > 255 {
        bail!("--alpn must be 1..=255 bytes, e.g. alknet/echo");
    }
    pipe(data_dir, addr, alpn, pinned, passphrase_file, None, &|| {
        Ok(())
    })
}

/// What a client connection needs before it dials: the server resolved (a stored name or
/// `HOST:PORT`), this node's key, the known servers.
struct Dial {
    server: alknet_core::client::ResolvedServer,
    node: crate::node::LoadedKey,
    known: KnownServers,
}

impl Dial {
    fn new(data_dir: &Path, addr: &str, passphrase_file: Option<&Path>) -> Result<Self> {
        Ok(Self {
            server: alknet_core::client::resolve_server(data_dir, addr)?,
            node: crate::node::load(data_dir, passphrase_file)?,
            known: KnownServers::in_dir(data_dir),
        })
    }

    /// The connection to `alpn`, the server's key pinned to `pinned`, else the stored one.
    fn target<'a>(&'a self, alpn: &'a str, pinned: Option<Fingerprint>) -> TrustedConnect<'a> {
        TrustedConnect {
            config: Arc::new(Config::default()),
            node_key: &self.node.key,
            known: &self.known,
            server_name: &self.server.server_name,
            addr: self.server.addr,
            alpn: alpn.as_bytes(),
            pinned: pinned.or(self.server.pinned),
        }
    }
}

/// Connects to `addr` on `alpn`, opens one stream, sends `preamble` on it, calls `opened`,
/// then pipes stdin and stdout through it (what `alknet connect` and `git-remote-alknet`
/// do).
pub(crate) fn pipe(
    data_dir: &Path,
    addr: &str,
    alpn: &str,
    pinned: Option<Fingerprint>,
    passphrase_file: Option<&Path>,
    preamble: Option<Bytes>,
    opened: &dyn Fn() -> std::io::Result<()>,
) -> Result<()> {
    let dial = Dial::new(data_dir, addr, passphrase_file)?;
    let target = dial.target(alpn, pinned);
    let stop = stop_signals()?;

    let mut result: Result<Ended> = Ok(Ended::Done);
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async {
        result = session(&target, &stop, preamble, opened).await;
    })
    .context("cannot start the runtime")?;
    match result? {
        Ended::Done => Ok(()),
        // The stdin and stdout threads may still be blocked: leave without waiting for them.
        Ended::Signal(sig) => std::process::exit(128 + sig),
    }
}

/// Connects to `addr` on `alpn`, sends `body` on one stream and finishes it, and returns the
/// server's answer (at most `limit` bytes), for one-shot requests such as `alknet git repos`.
#[cfg(feature = "git")]
pub(crate) fn request(
    data_dir: &Path,
    addr: &str,
    alpn: &str,
    pinned: Option<Fingerprint>,
    passphrase_file: Option<&Path>,
    body: Bytes,
    limit: usize,
) -> Result<Vec<u8>> {
    let dial = Dial::new(data_dir, addr, passphrase_file)?;
    let target = dial.target(alpn, pinned);
    let mut result: Result<Vec<u8>> = Ok(Vec::new());
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async {
        result = async {
            let (endpoint, conn) = connect_trusted(&target).await?;
            let answer = async {
                let (mut send, mut recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| anyhow!("connection closed: {e}"))?;
                send.write_chunk(body)
                    .await
                    .map_err(|e| describe(e, &conn))?;
                send.finish().map_err(|e| describe(e, &conn))?;
                recv.read_to_end(limit)
                    .await
                    .map_err(|e| describe(e, &conn))
            }
            .await;
            close(&endpoint, &conn, b"").await;
            answer
        }
        .await;
    })
    .context("cannot start the runtime")?;
    result
}

/// A queue that yields each stop signal as it arrives (from a thread of its own).
pub(crate) fn stop_signals() -> Result<flume::Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new(STOP_SIGNALS)
        .context("cannot install signal handlers")?;
    let (tx, rx) = flume::bounded(1);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(sig).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The next stop signal; pending for ever if the signal thread is gone.
async fn next_signal(stop: &flume::Receiver<i32>) -> i32 {
    match stop.recv_async().await {
        Ok(sig) => sig,
        Err(_) => std::future::pending().await,
    }
}

async fn session(
    target: &TrustedConnect<'_>,
    stop: &flume::Receiver<i32>,
    preamble: Option<Bytes>,
    opened: &dyn Fn() -> std::io::Result<()>,
) -> Result<Ended> {
    let connected = match select(pin!(connect_trusted(target)), pin!(next_signal(stop))).await {
        Either::Left((r, _)) => r?,
        // Nothing was said yet; the server forgets the handshake.
        Either::Right((sig, _)) => return Ok(Ended::Signal(sig)),
    };
    let (endpoint, conn) = connected;
    let streams = match select(pin!(conn.open_bi()), pin!(next_signal(stop))).await {
        Either::Left((r, _)) => r.map_err(|e| anyhow!("connection closed: {e}")),
        Either::Right((sig, _)) => {
            close(&endpoint, &conn, b"client stopped by a signal").await;
            return Ok(Ended::Signal(sig));
        }
    };
    let (mut send, mut recv) = match streams {
        Ok(s) => s,
        Err(e) => {
            close(&endpoint, &conn, b"").await;
            return Err(e);
        }
    };
    if let Some(p) = preamble
        && let Err(e) = send.write_chunk(p).await
    {
        close(&endpoint, &conn, b"").await;
        return Err(describe(e, &conn));
    }
    if let Err(e) = opened() {
        close(&endpoint, &conn, b"").await;
        return Err(anyhow!("cannot write to stdout: {e}"));
    }

    // stdin -> stream: whatever the pipe holds (up to BATCH bytes) in one read and one
    // hand-over to the runtime.
    let (in_tx, in_rx) = flume::bounded::<Bytes>(IN_QUEUE);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; BATCH];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if in_tx.send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    // stream -> stdout
    // QUIC hands over one chunk per STREAM frame (about a datagram). The runtime gathers the
    // chunks already waiting (up to BATCH bytes) into one buffer, so the writer thread wakes
    // once per batch rather than once per datagram, and writes each in one syscall on
    // stdout's fd itself (std's `Stdout` is line-buffered: it scans binary data for newlines
    // and splits writes at them).
    let (out_tx, out_rx) = flume::bounded::<Bytes>(OUT_QUEUE);
    let out_fd = {
        use std::os::fd::AsFd;
        std::io::stdout().as_fd().try_clone_to_owned()?
    };
    {
        // A pipe (as under ssh's ProxyCommand) big enough for a whole batch; anything else
        // (a file, a terminal) is left as it is.
        use std::os::fd::AsFd;
        let _ = alknet_core::net::sys::set_pipe_size(out_fd.as_fd(), PIPE_SIZE);
        let _ = alknet_core::net::sys::set_pipe_size(std::io::stdin().as_fd(), PIPE_SIZE);
    }
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdout = std::fs::File::from(out_fd);
        while let Ok(batch) = out_rx.recv() {
            stdout.write_all(&batch)?;
        }
        Ok(())
    });

    let upload = async {
        // The connection ending is the end of the upload too: stdin may stay open.
        let mut closed = pin!(conn.closed());
        loop {
            match select(in_rx.recv_async(), closed.as_mut()).await {
                Either::Left((Ok(chunk), _)) => send.write_chunk(chunk).await?,
                Either::Left((Err(_), _)) => break,
                Either::Right((e, _)) => return Err(StreamError::ConnectionLost(e)),
            }
        }
        send.finish()?;
        Ok::<_, StreamError>(())
    };
    let download = async {
        let mut batch: Vec<u8> = Vec::with_capacity(BATCH);
        while let Some(first) = recv.read_chunk(CHUNK).await? {
            let mut end = None;
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
            let out = Bytes::from(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            if out_tx.send_async(out).await.is_err() {
                break;
            }
            match end {
                None => {}
                Some(Ok(_)) => break,
                Some(Err(e)) => return Err(e),
            }
        }
        drop(out_tx);
        Ok::<_, StreamError>(())
    };
    let transfer = pin!(futures_util::future::join(upload, download));
    let (up, down) = match select(transfer, pin!(next_signal(stop))).await {
        Either::Left((r, _)) => r,
        Either::Right((sig, _)) => {
            close(&endpoint, &conn, b"client stopped by a signal").await;
            return Ok(Ended::Signal(sig));
        }
    };
    let outcome = match (up, down) {
        (_, Err(e)) => Err(describe(e, &conn)),
        // The server closed the connection normally after its side ended: nothing is lost.
        (Err(StreamError::ConnectionLost(e)), Ok(())) if closed_normally(&e) => Ok(Ended::Done),
        (Err(e), _) => Err(describe(e, &conn)),
        (Ok(()), Ok(())) => Ok(Ended::Done),
    };
    // Everything received reaches stdout before the process ends.
    let _ = writer.join();
    close(&endpoint, &conn, b"").await;
    outcome
}

/// Closes the connection with `NO_ERROR` and waits (bounded) until the close is through.
async fn close(endpoint: &alknet_core::client::ClientEndpoint, conn: &Connection, reason: &[u8]) {
    conn.close(close_code::NO_ERROR, reason);
    endpoint.wait_idle(CLOSE_GRACE).await;
}

fn closed_normally(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ApplicationClosed(c)
        if c.error_code == VarInt::from_u32(close_code::NO_ERROR))
}

fn describe(e: StreamError, conn: &Connection) -> anyhow::Error {
    match conn.close_reason() {
        Some(reason) => anyhow!("connection closed: {reason}"),
        None => anyhow!("stream failed: {e}"),
    }
}

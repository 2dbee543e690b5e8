//! `alknet connect`: one bidirectional stream piped to stdin/stdout.
//!
//! stdin and stdout are read and written on their own threads (they block), connected to the
//! runtime by small bounded queues so a slow consumer pushes back on the stream instead of
//! stalling the QUIC driver.

use alknet_core::client::{KnownServers, TrustedConnect, connect_trusted};
use alknet_core::config::{Config, DriverKind};
use alknet_proto::Fingerprint;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 64 * 1024;

pub(crate) fn run(
    data_dir: &Path,
    addr: &str,
    alpn: &str,
    fingerprint: Option<&str>,
    passphrase_file: Option<&Path>,
) -> Result<()> {
    let pinned = fingerprint
        .map(|f| {
            f.parse::<Fingerprint>()
                .map_err(|e| anyhow!("--fingerprint {f:?}: {e}"))
        })
        .transpose()?;
    if alpn.is_empty() || alpn.len() > 255 {
        bail!("--alpn must be 1..=255 bytes, e.g. alknet/echo");
    }
    let server = alknet_core::client::resolve_server(data_dir, addr)?;
    let node = crate::node::load(data_dir, passphrase_file)?;
    let known = KnownServers::in_dir(data_dir);
    let target = TrustedConnect {
        config: Arc::new(Config::default()),
        node_key: &node.key,
        known: &known,
        server_name: &server.server_name,
        addr: server.addr,
        alpn: alpn.as_bytes(),
        pinned: pinned.or(server.pinned),
    };

    let mut result: Result<()> = Ok(());
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async {
        result = session(&target).await;
    })
    .context("cannot start the runtime")?;
    result
}

async fn session(target: &TrustedConnect<'_>) -> Result<()> {
    let (endpoint, conn) = connect_trusted(target).await?;
    let (mut send, mut recv) = conn.open_bi().await?;

    // stdin -> stream
    let (in_tx, in_rx) = flume::bounded::<Bytes>(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
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
    let (out_tx, out_rx) = flume::bounded::<Bytes>(8);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        while let Ok(chunk) = out_rx.recv() {
            stdout.write_all(&chunk)?;
            stdout.flush()?;
        }
        Ok(())
    });

    let upload = async {
        while let Ok(chunk) = in_rx.recv_async().await {
            send.write_chunk(chunk).await?;
        }
        send.finish()?;
        Ok::<_, alknet_core::StreamError>(())
    };
    let download = async {
        while let Some(chunk) = recv.read_chunk(CHUNK).await? {
            if out_tx.send_async(chunk).await.is_err() {
                break;
            }
        }
        drop(out_tx);
        Ok::<_, alknet_core::StreamError>(())
    };
    let (up, down) = futures_util::future::join(upload, download).await;
    let outcome = match (up, down) {
        (_, Err(e)) | (Err(e), _) => Err(describe(e, &conn)),
        _ => Ok(()),
    };
    let _ = writer.join();
    conn.close(alknet_core::close_code::NO_ERROR, b"");
    endpoint.wait_idle(Duration::from_secs(1)).await;
    outcome
}

fn describe(e: alknet_core::StreamError, conn: &alknet_core::Connection) -> anyhow::Error {
    match conn.close_reason() {
        Some(reason) => anyhow!("connection closed: {reason}"),
        None => anyhow!("stream failed: {e}"),
    }
}

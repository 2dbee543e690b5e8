//! Sessions that survive a network change: the client's source port changes in the middle of
//! a transfer (a UDP relay between `alknet connect` and the server switches to a new
//! upstream socket, as after a NAT rebinding), and the transfer completes byte-exact while
//! the server's answers move to the new path.
//!
//! The client is `alknet connect` as people run it: piping a stream through `alknet/echo`,
//! and as OpenSSH's `ProxyCommand` under `scp` and `sftp` for `alknet/ssh`.

use crate::support::*;
use alknet_testkit::relay::{PathStats, UdpRelay};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// Bytes through the echo service: enough to take a few seconds through the relay.
const ECHO_BYTES: u64 = 64 << 20;
/// The relay switches once this much has come back.
const SWITCH_AFTER: u64 = 8 << 20;
/// What a transfer may take in all (a loaded 2-core machine, debug build).
const TRANSFER_LIMIT: Duration = Duration::from_secs(180);
/// After the switch, at least this much of the server's traffic must take the new path
/// (the switch happens with most of the transfer still to come).
const NEW_PATH_MIN_BYTES: u64 = 4 << 20;

fn client_id(dir: &Path) -> String {
    let (code, fp, err) = run_cli(&["id"], dir, b"");
    assert_eq!(code, 0, "{err}");
    fp.trim().to_owned()
}

fn sha256_hex(ctx: ring::digest::Context) -> String {
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The path checks every variant makes once its transfer is done: exactly one switch, the
/// first path carried traffic before it, the second carried both directions after it, and
/// the server stopped answering on the old path.
fn assert_moved(before: &[PathStats], after: &[PathStats], new_port: u16) {
    assert_eq!(after.len(), 2, "one switch, two paths: {after:?}");
    let (old, new) = (after[0], after[1]);
    assert_eq!(new.local_port, new_port);
    assert_ne!(old.local_port, new.local_port);
    assert!(
        old.to_server_bytes > 0 && old.from_server_bytes >= SWITCH_AFTER,
        "the first path carried the start of the transfer: {old:?}"
    );
    assert!(
        new.to_server_datagrams > 0 && new.from_server_bytes >= NEW_PATH_MIN_BYTES,
        "the server moved to the new source port: {new:?}"
    );
    // Nothing from the client took the old path after the switch but the one datagram the
    // relay's single forwarding thread may have had in hand when it switched.
    let late = old.to_server_datagrams - before[0].to_server_datagrams;
    assert!(
        late <= 1,
        "{late} client datagrams took the old path after the switch"
    );
}

/// 64 MiB piped through `alknet connect --alpn alknet/echo` via the relay; the relay's
/// source port changes once 8 MiB came back; both directions' checksums match.
#[test]
fn echo_transfer_survives_a_source_port_change() {
    let client = tempfile::tempdir().unwrap();
    let fp = client_id(client.path());
    let server = Server::start(&format!(
        "workers = 2\n[services.echo]\nenabled = true\n[[peers]]\nid = \"mover\"\n\
         fingerprints = [\"{fp}\"]\nscopes = [\"echo\"]\n"
    ));
    let relay = UdpRelay::start(server.addr).unwrap();
    let mut child = Command::new(ALKNET)
        .args([
            "connect",
            &relay.addr().to_string(),
            "--alpn",
            "alknet/echo",
        ])
        .args(["--fingerprint", &server.fingerprint, "--data-dir"])
        .arg(client.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut sent = 0u64;
        let mut seed = 1;
        while sent < ECHO_BYTES {
            let block = pattern(seed, 1 << 20);
            seed += 1;
            ctx.update(&block);
            if stdin.write_all(&block).is_err() {
                break;
            }
            sent += block.len() as u64;
        }
        // Dropping stdin is the end of the upload.
        (sent, sha256_hex(ctx))
    });
    let mut stdout = child.stdout.take().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let (reached, switch_point) = mpsc::channel::<()>();
    let got = received.clone();
    let reader = std::thread::spawn(move || {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        let mut reached = Some(reached);
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    ctx.update(&buf[..n]);
                    let total = got.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                    if total >= SWITCH_AFTER
                        && let Some(tx) = reached.take()
                    {
                        let _ = tx.send(());
                    }
                }
            }
        }
        sha256_hex(ctx)
    });

    switch_point
        .recv_timeout(TRANSFER_LIMIT)
        .unwrap_or_else(|_| {
            panic!(
                "{} bytes echoed, never 8 MiB",
                received.load(Ordering::Relaxed)
            )
        });
    let before = relay.paths();
    let new_port = relay.switch().unwrap();

    let status = wait_exit(&mut child, TRANSFER_LIMIT);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "alknet connect: {status}: {err}");
    let (sent, sent_hash) = writer.join().unwrap();
    let echoed_hash = reader.join().unwrap();
    assert_eq!(sent, ECHO_BYTES);
    assert_eq!(received.load(Ordering::Relaxed), ECHO_BYTES);
    assert_eq!(
        sent_hash, echoed_hash,
        "echoed bytes differ from those sent"
    );
    assert_moved(&before, &relay.paths(), new_port);
    assert_eq!(server.counter("migrations_refused"), 0);
}

/// Waits for the child, killing it after `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    match alknet_testkit::openssh::wait_child(child, limit, "the transfer") {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    }
}

//! Sessions that survive a network change: the client's source port changes in the middle of
//! a transfer (a UDP relay between `alknet connect` and the server switches to a new
//! upstream socket, as after a NAT rebinding), and the transfer completes byte-exact while
//! the server's answers move to the new path.
//!
//! The client is `alknet connect` as people run it: piping a stream through `alknet/echo`,
//! and as OpenSSH's `ProxyCommand` under `ssh`, `scp` and `sftp` for `alknet/ssh`. The relay
//! switches once the transfer has visibly passed a byte count (bytes echoed, bytes of the
//! file on disk), and reports exactly what the old path carried up to the switch.

use crate::support::*;
use alknet_testkit::relay::{PathStats, Switched, UdpRelay};
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
fn assert_moved(switched: Switched, after: &[PathStats], switch_after: u64) {
    assert_eq!(after.len(), 2, "one switch, two paths: {after:?}");
    let (old, new) = (after[0], after[1]);
    assert_eq!(new.local_port, switched.new_port);
    assert_ne!(old.local_port, new.local_port);
    assert!(
        old.to_server_bytes > 0 && old.from_server_bytes >= switch_after,
        "the first path carried the start of the transfer: {old:?}"
    );
    assert!(
        new.to_server_datagrams > 0 && new.from_server_bytes >= NEW_PATH_MIN_BYTES,
        "the server moved to the new source port: {new:?}"
    );
    // Nothing from the client took the old path after the switch.
    assert_eq!(
        old.to_server_datagrams, switched.old_at_switch.to_server_datagrams,
        "client datagrams took the old path after the switch"
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
    // The upload ends (stdin is dropped) once the listing was checked.
    let (release, released) = mpsc::channel::<()>();
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
        let _ = released.recv_timeout(TRANSFER_LIMIT);
        // Dropping stdin is the end of the upload.
        (sent, sha256_hex(ctx))
    });
    let mut stdout = child.stdout.take().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let (reached, switch_point) = mpsc::channel::<()>();
    let (all_back, all_echoed) = mpsc::channel::<()>();
    let got = received.clone();
    let reader = std::thread::spawn(move || {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        let mut reached = Some(reached);
        let mut all_back = Some(all_back);
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
                    if total >= ECHO_BYTES
                        && let Some(tx) = all_back.take()
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
    let switched = relay.switch().unwrap();

    // With everything echoed and the connection still open, the listing shows where the
    // connection is now, and where it started.
    all_echoed.recv_timeout(TRANSFER_LIMIT).unwrap_or_else(|_| {
        panic!(
            "{} of {ECHO_BYTES} bytes echoed",
            received.load(Ordering::Relaxed)
        )
    });
    let listed = sessions(&server);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let paths = relay.paths();
    assert_eq!(
        listed[0]["remote"],
        format!("127.0.0.1:{}", switched.new_port),
        "alknet sessions shows the current path: {listed:?}"
    );
    assert_eq!(
        listed[0]["handshake_remote"],
        format!("127.0.0.1:{}", paths[0].local_port),
        "{listed:?}"
    );
    release.send(()).unwrap();

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
    assert_moved(switched, &relay.paths(), SWITCH_AFTER);
    assert_eq!(server.counter("migrations_refused"), 0);
}

/// Waits for the child, killing it after `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    match alknet_testkit::openssh::wait_child(child, limit, "the transfer") {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    }
}

/// The file `scp` and `sftp` fetch through the relay.
const SSH_BYTES: u64 = 64 << 20;
/// The relay switches once this much of it arrived.
const SSH_SWITCH_AFTER: u64 = 16 << 20;

#[derive(Clone, Copy, Debug)]
enum Fetch {
    /// `ssh gw cat FILE > LOCAL`: an exec channel, no SFTP.
    SshCat,
    Scp,
    SftpGet,
}

/// A 64 MiB file fetched from the SSH service's `sftp_root` with `ssh cat`, `scp` or `sftp` through
/// `alknet connect` as `ProxyCommand` via the relay; the relay's source port changes once
/// 16 MiB arrived; the file is complete and its SHA-256 matches.
async fn ssh_fetch_survives_a_source_port_change(fetch: Fetch) {
    use alknet_testkit::openssh::{
        SshClient, SshTarget, alknet_proxy_command, current_user, sha256_file, write_pattern_file,
    };
    let client = tempfile::tempdir().unwrap();
    let fp = client_id(client.path());
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("big.bin");
    write_pattern_file(&src, 11, SSH_BYTES).unwrap();
    let server = Server::start(&format!(
        "workers = 2\n[services.ssh]\nenabled = true\nsftp_root = \"{}\"\n[[peers]]\n\
         id = \"mover\"\nfingerprints = [\"{fp}\"]\nscopes = [\"ssh\"]\n",
        root.path().display()
    ));
    let (code, line, err) = run_cli(&["ssh", "host-key"], &server.data_dir(), b"");
    assert_eq!(code, 0, "alknet ssh host-key: {err}");
    let host_key =
        alknet_testkit::serve::host_key_of(&line).unwrap_or_else(|| panic!("no key in {line:?}"));
    let relay = UdpRelay::start(server.addr).unwrap();
    let ssh_dir = client.path().join("ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let ssh = SshClient::new(
        &ssh_dir,
        SshTarget {
            alias: "gw".into(),
            host_name: "127.0.0.1".into(),
            port: None,
            user: current_user().unwrap(),
            identity: None,
            known_host_key: host_key,
            proxy_command: Some(alknet_proxy_command(
                Path::new(ALKNET),
                relay.addr(),
                client.path(),
                &server.fingerprint,
            )),
        },
    )
    .unwrap();
    let dst = client.path().join("fetched.bin");
    let mut child = match fetch {
        Fetch::SshCat => ssh
            .command("ssh")
            .arg("gw")
            .arg("--")
            .arg(format!("cat {}", src.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&dst).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(anyhow::Error::from),
        Fetch::Scp => ssh.scp("gw:big.bin", &dst.display().to_string()),
        Fetch::SftpGet => ssh.sftp_batch(&format!("get big.bin {}\n", dst.display()), &ssh_dir),
    }
    .unwrap();

    let size = || std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
    wait_for(TRANSFER_LIMIT, "16 MiB of the file to arrive", || {
        size() >= SSH_SWITCH_AFTER || matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "{fetch:?} ended ({status}) before the switch with {} of {SSH_BYTES} bytes",
            size()
        );
    }
    let switched = relay.switch().unwrap();

    let status = wait_exit(&mut child, TRANSFER_LIMIT);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    assert!(
        status.success(),
        "{fetch:?}: {status}: {err}\n{}",
        server.stderr()
    );
    assert_eq!(
        size(),
        SSH_BYTES,
        "{fetch:?} succeeded with a truncated file"
    );
    assert_eq!(sha256_file(&dst).unwrap(), sha256_file(&src).unwrap());
    assert_moved(switched, &relay.paths(), SSH_SWITCH_AFTER);
    assert_eq!(server.counter("migrations_refused"), 0);
}

#[tokio::test]
async fn ssh_exec_output_survives_a_source_port_change() {
    ssh_fetch_survives_a_source_port_change(Fetch::SshCat).await;
}

#[tokio::test]
async fn scp_survives_a_source_port_change() {
    ssh_fetch_survives_a_source_port_change(Fetch::Scp).await;
}

#[tokio::test]
async fn sftp_get_survives_a_source_port_change() {
    ssh_fetch_survives_a_source_port_change(Fetch::SftpGet).await;
}

/// The server's idle timeout in the close tests: far beyond their waits, so a session that
/// goes away within them was closed by the client, not timed out.
const LONG_IDLE: &str = "[transport]\nidle_timeout = \"300s\"\n";
/// How long the server may take to see a closed connection gone.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

fn sessions(server: &Server) -> Vec<serde_json::Value> {
    let (code, out, err) = run_cli(&["sessions", "--json"], &server.data_dir(), b"");
    assert_eq!(code, 0, "alknet sessions: {err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("alknet sessions --json: {e}: {out}"))
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("alknet sessions --json: not a list: {out}"))
}

/// After `ssh gw true` exits, its `alknet connect` (stdin at EOF, then SIGHUP from ssh) has
/// closed the QUIC connection: the server lists no session long before its idle timeout.
#[tokio::test]
async fn ssh_exiting_ends_the_session_at_once() {
    use alknet_testkit::openssh::{SshClient, SshTarget, alknet_proxy_command, current_user};
    let client = tempfile::tempdir().unwrap();
    let fp = client_id(client.path());
    let server = Server::start(&format!(
        "{LONG_IDLE}[services.ssh]\nenabled = true\nmax_sessions_per_peer = 1\n[[peers]]\n\
         id = \"laptop\"\nfingerprints = [\"{fp}\"]\nscopes = [\"ssh\"]\n"
    ));
    let (code, line, err) = run_cli(&["ssh", "host-key"], &server.data_dir(), b"");
    assert_eq!(code, 0, "alknet ssh host-key: {err}");
    let host_key =
        alknet_testkit::serve::host_key_of(&line).unwrap_or_else(|| panic!("no key in {line:?}"));
    let ssh_dir = client.path().join("ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let ssh = SshClient::new(
        &ssh_dir,
        SshTarget {
            alias: "gw".into(),
            host_name: "127.0.0.1".into(),
            port: None,
            user: current_user().unwrap(),
            identity: None,
            known_host_key: host_key,
            proxy_command: Some(alknet_proxy_command(
                Path::new(ALKNET),
                server.addr,
                client.path(),
                &server.fingerprint,
            )),
        },
    )
    .unwrap();
    // With a cap of one session per peer, each run also needs the previous one gone.
    for run in 0..3 {
        let (code, out, err) = ssh.ssh("echo in").unwrap();
        assert_eq!((code, out.as_str()), (0, "in\n"), "run {run}: {err}");
        // The end is clean: `alknet connect` (whose stderr is ssh's) reports no failure.
        assert!(
            !err.contains("stream failed") && !err.contains("connection closed"),
            "run {run}: {err}"
        );
        wait_for(CLOSE_LIMIT, "the server to drop the ended session", || {
            sessions(&server).is_empty()
        })
        .await;
    }
}

/// `alknet connect` closes its connection when stdin ends and the echo came back (exit 0),
/// and on SIGHUP, SIGTERM and SIGINT while stdin stays open (exit 128 + the signal): the
/// server lists no session right after.
#[tokio::test]
async fn connect_closes_its_connection_at_eof_and_on_signals() {
    let client = tempfile::tempdir().unwrap();
    let fp = client_id(client.path());
    let server = Server::start(&format!(
        "{LONG_IDLE}[services.echo]\nenabled = true\n[[peers]]\nid = \"pipe\"\n\
         fingerprints = [\"{fp}\"]\nscopes = [\"echo\"]\n"
    ));
    let start = || {
        Command::new(ALKNET)
            .args(["connect", &server.addr.to_string(), "--alpn", "alknet/echo"])
            .args(["--fingerprint", &server.fingerprint, "--data-dir"])
            .arg(client.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Echoes one line, proving the stream is up.
    let ping = |child: &mut Child| {
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"ping\n").unwrap();
        stdin.flush().unwrap();
        let mut got = [0u8; 5];
        child.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping\n");
    };

    let mut child = start();
    ping(&mut child);
    drop(child.stdin.take());
    let status = wait_exit(&mut child, CLOSE_LIMIT);
    assert!(status.success(), "alknet connect after EOF: {status}");
    wait_for(
        CLOSE_LIMIT,
        "the server to drop the session ended by EOF",
        || sessions(&server).is_empty(),
    )
    .await;

    for (name, number) in [("HUP", 1), ("TERM", 15), ("INT", 2)] {
        let mut child = start();
        ping(&mut child);
        assert_eq!(
            sessions(&server).len(),
            1,
            "the SIG{name} session is listed"
        );
        let killed = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = wait_exit(&mut child, CLOSE_LIMIT);
        assert_eq!(
            status.code(),
            Some(128 + number),
            "after SIG{name}: {status}"
        );
        wait_for(
            CLOSE_LIMIT,
            "the server to drop the signalled session",
            || sessions(&server).is_empty(),
        )
        .await;
    }
}

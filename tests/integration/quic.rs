//! quinn against a real `alknet serve` with two workers.

use crate::support::*;
use std::collections::HashSet;
use std::time::Duration;

const ECHO: &[u8] = b"alknet/echo";

fn echo_server(key: &ClientKey, extra: &str) -> Server {
    Server::start(&format!(
        "workers = 2\n{extra}\n[services.echo]\nenabled = true\n{}",
        peer_toml("tester", key, &["echo"])
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    let data = pattern(1, 300_000);
    assert_eq!(echo(&conn, &data).await.unwrap(), data);
    // The server presented the key it printed.
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    let fp = alknet_proto::Fingerprint::from_certificate(certs[0].as_ref()).unwrap();
    assert_eq!(fp.to_string(), server.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_alpn_fails_with_no_application_protocol() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let ep = quinn_endpoint();
    let err = connect(&ep, server.addr, Some(&key), b"alknet/nothing")
        .await
        .expect_err("handshake must fail");
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => {
            // TLS alert 120 (no_application_protocol) as a QUIC crypto error (0x100 + alert).
            assert_eq!(close.error_code, quinn::TransportErrorCode::crypto(120));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_key_is_refused() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let ep = quinn_endpoint();
    for stranger in [Some(ClientKey::generate().unwrap()), None] {
        let result = async {
            let conn = connect(&ep, server.addr, stranger.as_ref(), ECHO).await?;
            let r = echo(&conn, b"should not echo").await;
            assert!(r.is_err(), "a stranger got an echo");
            Ok::<_, quinn::ConnectionError>(conn.closed().await)
        }
        .await;
        let reason = match result {
            Ok(reason) | Err(reason) => reason,
        };
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(2));
                let text = String::from_utf8_lossy(&close.reason).into_owned();
                assert!(
                    text.contains("unknown client key") || text.contains("certificate required"),
                    "{text}"
                );
            }
            // Without a certificate the TLS layer may refuse first.
            quinn::ConnectionError::ConnectionClosed(_) if stranger.is_none() => {}
            other => panic!("unexpected close {other:?}"),
        }
    }
    assert!(server.counter("auth_failures") >= 1);
    assert!(server.stderr().contains("authentication failed"));
    // The legitimate key still works.
    let conn = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    assert_eq!(echo(&conn, b"hi").await.unwrap(), b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_and_streams_keep_every_byte() {
    let key = std::sync::Arc::new(ClientKey::generate().unwrap());
    let server = echo_server(&key, "");
    let addr = server.addr;
    // Several client sockets, so the kernel spreads flows over both shards.
    let endpoints: Vec<quinn::Endpoint> = (0..8).map(|_| quinn_endpoint()).collect();
    let mut tasks = Vec::new();
    for c in 0..200u64 {
        let ep = endpoints[c as usize % endpoints.len()].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let conn = connect(&ep, addr, Some(&key), ECHO).await.unwrap();
            let mut streams = Vec::new();
            for s in 0..10u64 {
                let conn = conn.clone();
                streams.push(tokio::spawn(async move {
                    let data = pattern(c * 100 + s, 4096 + (s as usize * 977));
                    let back = echo(&conn, &data).await.unwrap();
                    assert!(back == data, "stream {s} of connection {c} corrupted");
                }));
            }
            for s in streams {
                s.await.unwrap();
            }
            conn.close(0u32.into(), b"done");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = server.stats();
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for (i, s) in shards.iter().enumerate() {
        assert!(
            s["connections_established"].as_u64().unwrap() > 0,
            "shard {i} served no connection: {stats}"
        );
    }
    assert_eq!(
        stats["counters"]["connections_established"].as_u64(),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_client_keeps_its_connection_through_forwarding() {
    let key = ClientKey::generate().unwrap();
    // Without kernel steering, datagrams from a new port may land on the other shard and
    // must be forwarded to the owner.
    let server = echo_server(&key, "[udp]\nsteer_by_cid = false");
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    let before = server.counter("forwarded_out");

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let total = 2 << 20;
    let data = pattern(7, total);
    // How many bytes have come back so far.
    let (echoed_tx, mut echoed) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut back = Vec::with_capacity(total);
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(n) = recv.read(&mut buf).await.unwrap() {
            back.extend_from_slice(&buf[..n]);
            echoed_tx.send_replace(back.len());
        }
        back
    });
    let mut rebinds = 0;
    let mut ports = HashSet::new();
    let mut sent = 0;
    // Bytes written before the last rebind: any byte past them left from the new port.
    let mut sent_at_rebind = None;
    while sent < total {
        let end = (sent + 32 * 1024).min(total);
        send.write_all(&data[sent..end]).await.unwrap();
        sent = end;
        if sent % (128 * 1024) == 0 && rebinds < 40 {
            let forwarded = server.counter("forwarded_out") > before;
            if rebinds >= 4 && forwarded {
                continue;
            }
            // Move on only once the last port carried data to the server and back.
            if let Some(mark) = sent_at_rebind {
                tokio::time::timeout(Duration::from_secs(10), echoed.wait_for(|&n| n > mark))
                    .await
                    .expect("no echo through the new port within 10s")
                    .unwrap();
            }
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            ports.insert(sock.local_addr().unwrap().port());
            ep.rebind(sock).unwrap();
            rebinds += 1;
            sent_at_rebind = Some(sent);
        }
    }
    send.finish().unwrap();
    let back = reader.await.unwrap();
    assert!(back == data, "echoed data differs after {rebinds} rebinds");
    assert!(rebinds >= 4, "only {rebinds} rebinds");
    assert!(ports.len() >= 4);
    // Still the same, healthy connection: no stateless reset reached the client.
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(echo(&conn, b"still here").await.unwrap(), b"still here");
    let forwarded = server.counter("forwarded_out") - before;
    assert!(
        forwarded > 0,
        "no datagram was forwarded across {rebinds} rebinds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_steering_delivers_rebound_clients_to_their_shard() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    assert_eq!(echo(&conn, b"warm").await.unwrap(), b"warm");
    let before = server.counter("forwarded_out");
    let total = 1 << 20;
    let data = pattern(9, total);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let reader = tokio::spawn(async move { recv.read_to_end(total + 1).await.unwrap() });
    for (i, part) in data.chunks(64 * 1024).enumerate() {
        send.write_all(part).await.unwrap();
        if i % 2 == 1 {
            ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
        }
    }
    send.finish().unwrap();
    assert!(reader.await.unwrap() == data);
    assert!(conn.close_reason().is_none());
    // Eight new 4-tuples, and the kernel sent every datagram straight to the owner.
    assert_eq!(server.counter("forwarded_out"), before);
    assert!(
        !server.stderr().contains("cannot attach"),
        "{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_clients_an_application_close() {
    let key = ClientKey::generate().unwrap();
    let mut server = echo_server(&key, "drain_period = \"500ms\"");
    let ep = quinn_endpoint();
    let mut conns = Vec::new();
    let mut pumps = Vec::new();
    // One message per connection once its first round trip is back.
    let (flowing_tx, mut flowing) = tokio::sync::mpsc::channel(6);
    for i in 0..6u64 {
        let conn = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
        // Keep traffic flowing on every connection until it is closed.
        let c = conn.clone();
        let mut flowing_tx = Some(flowing_tx.clone());
        pumps.push(tokio::spawn(async move {
            let Ok((mut send, mut recv)) = c.open_bi().await else {
                return;
            };
            let chunk = pattern(i, 8192);
            let mut buf = vec![0u8; 8192];
            loop {
                if send.write_all(&chunk).await.is_err() {
                    return;
                }
                if recv.read_exact(&mut buf).await.is_err() {
                    return;
                }
                if let Some(tx) = flowing_tx.take() {
                    let _ = tx.try_send(());
                }
            }
        }));
        conns.push(conn);
    }
    for _ in 0..6 {
        tokio::time::timeout(Duration::from_secs(10), flowing.recv())
            .await
            .expect("traffic not flowing on every connection within 10s");
    }
    server.signal(15);
    for conn in &conns {
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("connection not closed within 10s");
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(1));
            }
            other => panic!("expected an application close, got {other:?}"),
        }
    }
    let status = server
        .wait(Duration::from_secs(10))
        .expect("server did not exit");
    assert!(status.success(), "exit status {status:?}");
    for p in pumps {
        p.await.unwrap();
    }
}

async fn concurrent_handshakes(server: &Server, key: &std::sync::Arc<ClientKey>, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let ep = quinn_endpoint();
        let key = key.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let conn = connect(&ep, addr, Some(&key), ECHO).await.unwrap();
            let msg = format!("client {i}");
            assert_eq!(echo(&conn, msg.as_bytes()).await.unwrap(), msg.as_bytes());
            conn.close(0u32.into(), b"");
            ep.wait_idle().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_engages_above_the_handshake_cap_and_never_below() {
    let key = std::sync::Arc::new(ClientKey::generate().unwrap());
    let tight = echo_server(&key, "[transport]\nmax_handshakes_per_shard = 1");
    concurrent_handshakes(&tight, &key, 40).await;
    let retries = tight.counter("retries_sent");
    assert!(
        retries > 0,
        "40 simultaneous handshakes against a cap of 1 sent no Retry"
    );
    assert_eq!(tight.counter("connections_established"), 40);

    let roomy = echo_server(&key, "[transport]\nmax_handshakes_per_shard = 1000");
    concurrent_handshakes(&roomy, &key, 40).await;
    assert_eq!(roomy.counter("retries_sent"), 0);
    assert_eq!(roomy.counter("connections_established"), 40);
}

/// The path MTU the server lists for its only session (`alknet sessions --json`).
fn listed_mtu(server: &Server) -> Option<u64> {
    let (code, out, err) = run_cli(&["sessions", "--json"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()?.first()?["mtu"].as_u64()
}

/// Pipes 4 MiB through `alknet connect` to the echo service and back, then waits (bounded)
/// for the session to be listed above `climbed` bytes; returns the MTU listed last and the
/// data sent and echoed.
async fn mtu_after_echo(
    server: &Server,
    client: &std::path::Path,
    climbed: u64,
) -> (u64, Vec<u8>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new(ALKNET)
        .args(["connect", &server.addr.to_string(), "--alpn", "alknet/echo"])
        .args(["--fingerprint", &server.fingerprint, "--data-dir"])
        .arg(client)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let data = pattern(7, 4 << 20);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent).map(|()| stdin));
    let mut got = vec![0u8; data.len()];
    stdout.read_exact(&mut got).unwrap();
    // Discovery probes run in the background: the session is listed while stdin is open.
    let mut mtu = 0;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        mtu = listed_mtu(server).unwrap_or(0);
        if mtu > climbed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(writer.join().unwrap().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    (mtu, data, got)
}

/// On loopback MTU discovery climbs past Ethernet's 1452 bytes (fewer packets per byte), and
/// `[transport] max_udp_payload` caps it: a session of a server capped at 1400 is listed at
/// no more than 1400 and still carries every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtu_discovery_uses_the_loopback_path_and_max_udp_payload_caps_it() {
    let client = tempfile::tempdir().unwrap();
    let (code, fp, err) = run_cli(&["id"], client.path(), b"");
    assert_eq!(code, 0, "{err}");
    let peer = format!(
        "[[peers]]\nid = \"pipe\"\nfingerprints = [\"{}\"]\nscopes = [\"echo\"]\n",
        fp.trim()
    );

    let open = Server::start(&format!("[services.echo]\nenabled = true\n{peer}"));
    let (mtu, data, got) = mtu_after_echo(&open, client.path(), 1452).await;
    assert!(got == data, "the echo through alknet connect differs");
    assert!(mtu > 1452, "loopback session listed at MTU {mtu}");

    let capped = Server::start(&format!(
        "[transport]\nmax_udp_payload = 1400\n[services.echo]\nenabled = true\n{peer}"
    ));
    // Discovery halves the 1200..1400 range until it is under 20 bytes wide: past 1350.
    let (mtu, data, got) = mtu_after_echo(&capped, client.path(), 1350).await;
    assert!(
        got == data,
        "the echo through alknet connect differs (capped)"
    );
    assert!(
        (1351..=1400).contains(&mtu),
        "capped session listed at MTU {mtu}"
    );
}

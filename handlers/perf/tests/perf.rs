//! The perf service in-process on two shards, with quinn as an independent client speaking
//! the protocol as quinn's `perf` tool does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_core::config::Config;
use alknet_core::identity::MemoryIdentities;
use alknet_core::{PeerEntry, Registry};
use alknet_testkit::{AnyServer, ClientKey, quinn_client_config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn client_config(key: &ClientKey) -> quinn::ClientConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into().unwrap()));
    quinn_client_config(
        Some(key),
        alknet_perf::ALPN,
        Arc::new(AnyServer::default()),
        transport,
    )
    .unwrap()
}

/// A server with the perf service, knowing `known` with the `perf` scope.
fn start(anonymous: bool, known: &ClientKey) -> alknet_core::ServerHandle {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        ..Config::default()
    };
    let mut registry = Registry::new();
    registry
        .register(alknet_perf::Perf, alknet_perf::PerfConfig { anonymous })
        .unwrap();
    let ids = MemoryIdentities::with_peers([PeerEntry {
        peer_id: "bench".into(),
        fingerprints: vec![known.fingerprint.parse().unwrap()],
        auth_token_hash: None,
        scopes: vec![alknet_perf::SCOPE.into()],
        resources: vec![],
        display_name: None,
        ssh_keys: Vec::new(),
        enabled: true,
    }]);
    alknet_core::start(
        Arc::new(config),
        alknet_core::identity::tls::NodeKey::generate(),
        registry,
        Arc::new(ids),
    )
    .unwrap()
}

async fn connect(
    addr: SocketAddr,
    key: &ClientKey,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(client_config(key), addr, "alknet")
        .unwrap()
        .await?;
    Ok((ep, conn))
}

/// One perf request; returns the number of response bytes, checking they are what the
/// server sends.
async fn request(conn: &quinn::Connection, want: u64, body: usize) -> anyhow::Result<u64> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let writer = async {
        send.write_all(&want.to_be_bytes()).await?;
        let chunk = vec![0xa5u8; 16 * 1024];
        let mut left = body;
        while left > 0 {
            let n = left.min(chunk.len());
            send.write_all(&chunk[..n]).await?;
            left -= n;
        }
        send.finish()?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        anyhow::Ok(got)
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    r
}

#[tokio::test]
async fn answers_exactly_the_requested_bytes() {
    let key = ClientKey::generate().unwrap();
    let server = start(false, &key);
    let (_ep, conn) = connect(server.local_addr(), &key).await.unwrap();
    for (want, body) in [
        (0u64, 0usize),
        (1, 0),
        (64, 64),
        (1200, 5000),
        (65_536, 0),
        (65_537, 1),
        (5 << 20, 100_000),
    ] {
        let got = tokio::time::timeout(Duration::from_secs(30), request(&conn, want, body))
            .await
            .expect("request timed out")
            .unwrap();
        assert_eq!(got, want, "asked {want} bytes with a {body}-byte body");
    }
    // Concurrent requests on one connection.
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let c = conn.clone();
        tasks.push(tokio::spawn(async move { request(&c, i * 1000, 10).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), i as u64 * 1000);
    }
    conn.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn oversized_request_is_reset() {
    let key = ClientKey::generate().unwrap();
    let server = start(false, &key);
    let (_ep, conn) = connect(server.local_addr(), &key).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), request(&conn, u64::MAX, 0))
        .await
        .expect("timed out");
    assert!(r.is_err(), "a request for 2^64-1 bytes must be refused");
    // The connection survives and serves the next request.
    assert_eq!(request(&conn, 10, 0).await.unwrap(), 10);
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn unknown_key_refused_unless_anonymous() {
    let known = ClientKey::generate().unwrap();
    let stranger = ClientKey::generate().unwrap();

    let server = start(false, &known);
    let refused = async {
        let (_ep, conn) = connect(server.local_addr(), &stranger).await?;
        let r = request(&conn, 10, 0).await;
        anyhow::Ok(r.is_err())
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("timed out");
    assert!(
        !matches!(refused, Ok(false)),
        "an unknown key was served by a non-anonymous perf service"
    );
    server.shutdown();
    server.join();

    let server = start(true, &known);
    let (_ep, conn) = connect(server.local_addr(), &stranger).await.unwrap();
    assert_eq!(request(&conn, 1000, 10).await.unwrap(), 1000);
    // A known key is served as well.
    let (_ep2, conn2) = connect(server.local_addr(), &known).await.unwrap();
    assert_eq!(request(&conn2, 5, 0).await.unwrap(), 5);
    server.shutdown();
    server.join();
}

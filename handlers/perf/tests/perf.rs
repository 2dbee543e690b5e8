//! The perf service in-process on two shards, with quinn as an independent client speaking
//! the protocol as quinn's `perf` tool does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_core::config::Config;
use alknet_core::identity::MemoryIdentities;
use alknet_core::{PeerEntry, Registry};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct ClientKey {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: String,
}

impl ClientKey {
    fn generate() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let fingerprint = format!("ed25519:{}", hex::encode(kp.public_key_raw()));
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(kp.serialize_der()),
            fingerprint,
        }
    }
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _e: &CertificateDer<'_>,
        _i: &[CertificateDer<'_>],
        _n: &rustls::pki_types::ServerName<'_>,
        _o: &[u8],
        _t: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls12".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ED25519]
    }
}

fn client_config(key: &ClientKey) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(
            vec![key.cert.clone()],
            PrivateKeyDer::Pkcs8(key.key.clone_key()),
        )
        .unwrap();
    tls.alpn_protocols = vec![alknet_perf::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into().unwrap()));
    cfg.transport_config(Arc::new(transport));
    cfg
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
    registry.register(alknet_perf::factory(anonymous)).unwrap();
    let ids = MemoryIdentities::with_peers([PeerEntry {
        peer_id: "bench".into(),
        fingerprints: vec![known.fingerprint.parse().unwrap()],
        auth_token_hash: None,
        scopes: vec![alknet_perf::SCOPE.into()],
        resources: vec![],
        display_name: None,
        enabled: true,
    }]);
    alknet_core::start(
        Arc::new(config),
        alknet_core::tls::NodeKey::generate(),
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
    let key = ClientKey::generate();
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
    let key = ClientKey::generate();
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
    let known = ClientKey::generate();
    let stranger = ClientKey::generate();

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

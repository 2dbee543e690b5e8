//! Client-side TLS for the load generator, the benchmarks and the tests: an Ed25519 client
//! key (loaded or generated) and a server verifier that checks the handshake signature but
//! trusts any key, recording the server's fingerprint, as Alknet's own clients do on first
//! contact. One copy, used by `alknet-bench`, the handlers' tests and the integration tests.
//!
//! Also the pieces for measuring SSH against OpenSSH: [`openssh`] (a real `sshd` and the
//! `ssh`/`sftp`/`scp` clients with generated configs), [`relay`] (a UDP relay whose source
//! port changes on demand, for migration tests), [`procstat`] (CPU times from `/proc`) and
//! [`netns`] (a lossy wire between two network namespaces).

pub mod netns;
pub mod openssh;
pub mod procstat;
pub mod relay;
pub mod serve;

use alknet_proto::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An Ed25519 client identity presented in the handshake.
pub struct ClientKey {
    /// The self-signed certificate carrying the key.
    pub cert: CertificateDer<'static>,
    /// The private key, PKCS#8.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// `ed25519:<hex>` of the public key.
    pub fingerprint: String,
}

impl ClientKey {
    /// A fresh random key.
    pub fn generate() -> anyhow::Result<Self> {
        Self::from_keypair(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?)
    }

    /// An Ed25519 PKCS#8 PEM key from a file (e.g. an Alknet `node.key`).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let kp = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", path.display()))?;
        if !kp.is_compatible(&rcgen::PKCS_ED25519) {
            anyhow::bail!("{}: not an Ed25519 key", path.display());
        }
        Self::from_keypair(kp)
    }

    /// The certificate and the key as PEM (for curl's `--cert`/`--key` and the like).
    pub fn pem(&self) -> anyhow::Result<(String, String)> {
        let kp = rcgen::KeyPair::try_from(&self.key)?;
        let cert = rcgen::CertificateParams::new(vec!["alknet-client".into()])?.self_signed(&kp)?;
        Ok((cert.pem(), kp.serialize_pem()))
    }

    /// The same key in a different certificate (other subject, serial and validity).
    pub fn rewrap(&self) -> anyhow::Result<Self> {
        let kp = rcgen::KeyPair::try_from(&self.key)?;
        let mut params = rcgen::CertificateParams::new(vec!["another-name.example".into()])?;
        params.serial_number = Some(rcgen::SerialNumber::from(vec![7, 7, 7]));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let cert = params.self_signed(&kp)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint.clone(),
        })
    }

    fn from_keypair(kp: rcgen::KeyPair) -> anyhow::Result<Self> {
        let fingerprint = Fingerprint::from_key(
            kp.public_key_raw()
                .try_into()
                .map_err(|_| anyhow::anyhow!("Ed25519 public key is not 32 bytes"))?,
        )
        .to_string();
        let cert = rcgen::CertificateParams::new(vec!["alknet-load".into()])?.self_signed(&kp)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(kp.serialize_der()),
            fingerprint,
        })
    }
}

/// Trusts any server key (loopback benchmarks), checks the TLS 1.3 signature, and keeps the
/// last fingerprint seen.
#[derive(Debug, Default)]
pub struct AnyServer {
    /// The server fingerprint of the last handshake.
    pub seen: Mutex<Option<String>>,
}

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _i: &[CertificateDer<'_>],
        _n: &rustls::pki_types::ServerName<'_>,
        _o: &[u8],
        _t: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Ok(fp) = Fingerprint::from_peer_der(end_entity.as_ref())
            && let Ok(mut g) = self.seen.lock()
            && g.is_none()
        {
            *g = Some(fp.to_string());
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
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

/// TLS 1.3 with ring, `alpn`, the key if any, and `verifier` for the server.
pub fn tls_client_config(
    key: Option<&ClientKey>,
    alpn: &[u8],
    verifier: Arc<AnyServer>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match key {
        Some(k) => builder.with_client_auth_cert(
            vec![k.cert.clone()],
            PrivateKeyDer::Pkcs8(k.key.clone_key()),
        )?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// A quinn client configuration from [`tls_client_config`] with `transport`.
pub fn quinn_client_config(
    key: Option<&ClientKey>,
    alpn: &[u8],
    verifier: Arc<AnyServer>,
    transport: quinn::TransportConfig,
) -> anyhow::Result<quinn::ClientConfig> {
    let tls = tls_client_config(key, alpn, verifier)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

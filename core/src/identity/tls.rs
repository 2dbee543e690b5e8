//! The node's Ed25519 key, its certificate, and the rustls configurations built on it.
//!
//! Alknet authenticates keys, not names: the server presents a self-signed X.509 certificate
//! around its Ed25519 key (so any QUIC client can connect), asks every client for a
//! certificate, and turns the client's key into a [`Fingerprint`]. Certificates' names and
//! dates are ignored; the handshake signature is checked against the key inside. Whether the
//! key belongs to a known peer is decided after the handshake by the shard, which knows the
//! ALPN and the remote address (needed for the failure log line).
//!
//! Not here: deciding who is allowed (see `identity`), and the vault (the seed may come from
//! it; this module only holds the resulting key).

use alknet_proto::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use zeroize::Zeroizing;

/// File name of the node key inside the data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// Largest node key file read: a PEM Ed25519 key is 119 bytes; room for comments and other
/// PEM sections, but a file (or a link to a device) is never read without end.
const MAX_KEY_FILE: u64 = 64 << 10;

const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// TLS set-up failures.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error(
        "{path}: not an Ed25519 private key (expected PKCS#8 PEM); move it away to create a new identity"
    )]
    BadKeyFile {
        /// The key file.
        path: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate could not be generated.
    #[error("certificate generation: {0}")]
    Certificate(String),
}

/// Reads at most [`MAX_KEY_FILE`] bytes of `path` (one more, to tell a larger file, which
/// [`NodeKey::from_pem`] refuses).
fn read_bounded(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)?
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// A node key file's bytes: a key that parses writes back to a file that parses to the same
/// key, and the written form is canonical (written again, byte for byte the same).
pub(crate) fn fuzz_node_key(data: &[u8]) {
    let Some(key) = NodeKey::from_pem(data) else {
        return;
    };
    let pem = key
        .to_pem()
        .unwrap_or_else(|e| panic!("a parsed key must encode: {e}"));
    let again = NodeKey::from_pem(pem.as_bytes())
        .unwrap_or_else(|| panic!("the written node key must parse"));
    assert_eq!(
        again.fingerprint(),
        key.fingerprint(),
        "round trip changed the key"
    );
    let pem2 = again
        .to_pem()
        .unwrap_or_else(|e| panic!("a parsed key must encode: {e}"));
    assert_eq!(pem.as_str(), pem2.as_str(), "written form is not canonical");
}

/// The node's Ed25519 key pair. The seed is zeroized on drop and never printed.
pub struct NodeKey {
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl NodeKey {
    /// The key whose RFC 8032 secret is `seed`.
    pub fn from_seed(seed: Zeroizing<[u8; 32]>) -> Self {
        let public = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed[..])
            .map(|kp| {
                let mut out = [0u8; 32];
                out.copy_from_slice(ring::signature::KeyPair::public_key(&kp).as_ref());
                out
            })
            .unwrap_or([0; 32]);
        Self { seed, public }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::fill(&mut seed[..]);
        Self::from_seed(seed)
    }

    /// Loads `<dir>/node.key`, creating it (mode 0600) when absent.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let path = dir.join(NODE_KEY_FILE);
        match read_bounded(&path) {
            Ok(text) => Self::from_pem(&text).ok_or_else(|| TlsError::BadKeyFile {
                path: path.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.write_pem(&path)?;
                Ok(key)
            }
            Err(source) => Err(TlsError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn pkcs8(&self) -> Zeroizing<Vec<u8>> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(&self.seed[..]);
        der
    }

    /// The key in a node key file's bytes: the first `PRIVATE KEY` PEM section, which must
    /// be an Ed25519 PKCS#8 v1 key. `None` for anything else.
    pub(crate) fn from_pem(text: &[u8]) -> Option<Self> {
        use rustls::pki_types::pem::PemObject;
        if text.len() as u64 > MAX_KEY_FILE {
            return None;
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(text).ok()?;
        let seed = der
            .secret_pkcs8_der()
            .strip_prefix(&PKCS8_ED25519_PREFIX[..])?;
        let seed: [u8; 32] = seed.try_into().ok()?;
        Some(Self::from_seed(Zeroizing::new(seed)))
    }

    fn write_pem(&self, path: &Path) -> Result<(), TlsError> {
        let io = |source| TlsError::Io {
            path: path.display().to_string(),
            source,
        };
        let pem = self.to_pem()?;
        crate::fsutil::write_private_atomic(path, pem.as_bytes()).map_err(io)
    }

    /// The key as a node key file holds it (PKCS#8 PEM).
    pub(crate) fn to_pem(&self) -> Result<Zeroizing<String>, TlsError> {
        let pkcs8 = self.pkcs8();
        let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Zeroizing::new(kp.serialize_pem()))
    }

    /// A 32-byte key for `purpose`, derived from the seed (HMAC-SHA-256 keyed by the seed).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.seed[..]);
        let tag = ring::hmac::sign(&key, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// This key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_key(self.public)
    }

    /// A self-signed certificate and signing key for rustls.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let pkcs8 = self.pkcs8();
        let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec!["alknet".to_owned()])
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let cert = params
            .self_signed(&kp)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&der)?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signer,
        )))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The one signature scheme Alknet identities use, on both sides of a handshake.
const SIGNATURE_SCHEME: SignatureScheme = SignatureScheme::ED25519;

/// Alknet speaks TLS 1.3 only; a TLS 1.2 signature is never checked.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Checks a TLS 1.3 handshake signature against the Ed25519 key inside `cert` (X.509 or a
/// raw SPKI); used by both verifiers.
fn verify_ed25519(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SIGNATURE_SCHEME {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    let fp = Fingerprint::from_peer_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, fp.key())
        .verify(message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// Accepts any client presenting an Ed25519 key and proving possession of it; whether the key
/// is allowed in is decided after the handshake.
#[derive(Debug)]
struct ClientKeyVerifier {
    mandatory: bool,
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Fingerprint::from_peer_der(end_entity.as_ref())
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SIGNATURE_SCHEME]
    }
}

/// The rustls server configuration: TLS 1.3 only, the node certificate, client keys requested
/// (required unless an anonymous service is offered), and the ALPNs of enabled services.
pub fn server_config(
    key: &NodeKey,
    alpns: Vec<Vec<u8>>,
    client_key_required: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let certified = key.certified_key()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientKeyVerifier {
            mandatory: client_key_required,
        }))
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = alpns;
    // 0-RTT data can be replayed; no Alknet service accepts it.
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// Picks the node's Ed25519 certificate for clients that can verify it, and an ECDSA P-256
/// one for those that cannot (browsers: BoringSSL and NSS offer no Ed25519 signature
/// scheme). The P-256 key is made at start and lives as long as the process; it identifies
/// nothing (pinning clients all speak Ed25519), it only lets a browser finish the handshake
/// and then authenticate with a token.
#[derive(Debug)]
struct BrowserFallback {
    ed25519: Arc<rustls::sign::CertifiedKey>,
    p256: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for BrowserFallback {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if hello.signature_schemes().contains(&SIGNATURE_SCHEME) {
            Some(self.ed25519.clone())
        } else {
            Some(self.p256.clone())
        }
    }
}

fn p256_certified_key() -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let cert_err = |e: rcgen::Error| TlsError::Certificate(e.to_string());
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let cert = rcgen::CertificateParams::new(vec!["alknet".to_owned()])
        .map_err(cert_err)?
        .self_signed(&kp)
        .map_err(cert_err)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// [`server_config`] for the TCP+TLS listener, which browsers reach: the same, with an ECDSA
/// P-256 certificate for clients that cannot verify Ed25519 (see [`BrowserFallback`]).
pub fn tcp_server_config(
    key: &NodeKey,
    alpns: Vec<Vec<u8>>,
    client_key_required: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = server_config(key, alpns, client_key_required)?;
    cfg.cert_resolver = Arc::new(BrowserFallback {
        ed25519: key.certified_key()?,
        p256: p256_certified_key()?,
    });
    Ok(cfg)
}

/// How a client decides whether the server's key is the one it expects.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Exactly this key.
    Pinned(Fingerprint),
    /// Whatever key is presented; the caller checks [`ServerKeySeen`] after the handshake.
    Observe,
}

/// The server key a client saw during its handshake.
#[derive(Clone, Debug, Default)]
pub struct ServerKeySeen(Arc<Mutex<Option<Fingerprint>>>);

impl ServerKeySeen {
    /// The key, once a handshake got that far.
    pub fn get(&self) -> Option<Fingerprint> {
        match self.0.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    fn set(&self, fp: Fingerprint) {
        match self.0.lock() {
            Ok(mut g) => *g = Some(fp),
            Err(p) => *p.into_inner() = Some(fp),
        }
    }
}

#[derive(Debug)]
struct ServerKeyVerifier {
    trust: ServerTrust,
    seen: ServerKeySeen,
}

impl ServerCertVerifier for ServerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::from_peer_der(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        self.seen.set(fp);
        match &self.trust {
            ServerTrust::Pinned(want) if *want != fp => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SIGNATURE_SCHEME]
    }
}

/// The rustls client configuration: TLS 1.3, the node key as client certificate, one ALPN.
pub fn client_config(
    key: &NodeKey,
    alpn: &[u8],
    trust: ServerTrust,
) -> Result<(rustls::ClientConfig, ServerKeySeen), TlsError> {
    let certified = key.certified_key()?;
    let seen = ServerKeySeen::default();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier {
            trust,
            seen: seen.clone(),
        }))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok((cfg, seen))
}

/// Reads the first peer certificate's key from a finished handshake's `peer_identity`.
pub fn peer_fingerprint(identity: Option<Box<dyn std::any::Any>>) -> Option<Fingerprint> {
    let certs = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    Fingerprint::from_peer_der(certs.first()?.as_ref()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = NodeKey::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let b = NodeKey::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        // The certificate carries the same key.
        let ck = a.certified_key().unwrap_or_else(|e| panic!("{e}"));
        let fp = Fingerprint::from_certificate(ck.cert[0].as_ref());
        assert_eq!(fp, Ok(a.fingerprint()));
    }

    #[test]
    fn bad_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(NODE_KEY_FILE), "garbage").unwrap_or_else(|e| panic!("{e}"));
        let err = NodeKey::load_or_create(dir.path())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.unwrap_or_default()
                .contains("not an Ed25519 private key")
        );
    }

    #[test]
    fn key_files_bounded_and_not_utf8_are_refused_not_read_without_end() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = NodeKey::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(NODE_KEY_FILE);
        let pem = std::fs::read(&path).unwrap_or_default();
        // A comment line before the key is fine; padding past MAX_KEY_FILE is not.
        let mut text = b"# node key\n".to_vec();
        text.extend_from_slice(&pem);
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let again = NodeKey::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.fingerprint(), key.fingerprint());
        text.resize(MAX_KEY_FILE as usize + 1, b'\n');
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(
                NodeKey::load_or_create(dir.path()),
                Err(TlsError::BadKeyFile { .. })
            ),
            "a key file above MAX_KEY_FILE is refused"
        );
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            NodeKey::load_or_create(dir.path()),
            Err(TlsError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn rfc8032_public_key() {
        // RFC 8032 §7.1 test 1.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .ok()
                .and_then(|v| v.try_into().ok())
                .unwrap_or([0; 32]);
        let key = NodeKey::from_seed(Zeroizing::new(seed));
        assert_eq!(
            key.fingerprint().to_string(),
            "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}

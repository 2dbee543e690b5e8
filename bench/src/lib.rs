//! Alknet benchmarks: shared helpers for the criterion suite and the load generator.
//!
//! The criterion benches in `benches/` and the binaries in `src/bin/` drive the same rigs, so
//! a figure printed by a binary and one measured by criterion come from the same code.
#![forbid(unsafe_code)]

pub mod load;
pub mod udp_rate;

/// Starts `bin` with `args` pinned to CPU 0 (`taskset -c 0`) and reads the address it
/// prints as `listening ADDR` on its first stdout line: how the baseline servers of the
/// benches (`axum-call-server`, `hickory-doq-server`) report that they are ready.
pub fn start_pinned_server(
    bin: &str,
    args: &[&str],
) -> std::io::Result<(std::process::Child, std::net::SocketAddr)> {
    use std::io::{BufRead, Error, ErrorKind};
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", bin])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("{bin} printed {line:?}")))?;
    Ok((child, addr))
}

/// The TLS of the baseline servers: rustls with ring, TLS 1.3 only, a fresh self-signed
/// Ed25519 certificate, no client authentication, `alpns` offered.
pub fn baseline_tls(alpns: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&kp)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(kp.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

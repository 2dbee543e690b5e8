//! Client-side TLS of the load generator: the shared pieces of `alknet-testkit` and the
//! transport settings of a load-generator connection.

pub use alknet_testkit::{AnyServer, ClientKey};
use std::sync::Arc;

/// The quinn client configuration: TLS 1.3, ring, `alpn`, the key if any, an idle timeout
/// and optional keep-alives (idle sessions outlive the server's idle timeout only with them).
pub fn client_config(
    key: Option<&ClientKey>,
    alpn: &[u8],
    verifier: Arc<AnyServer>,
    keep_alive: Option<std::time::Duration>,
) -> anyhow::Result<quinn::ClientConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(std::time::Duration::from_secs(30).try_into()?))
        .keep_alive_interval(keep_alive)
        // The client accepts no streams; the server opens none in this protocol.
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    alknet_testkit::quinn_client_config(key, alpn, verifier, transport)
}

//! Alknet perf service: the QUIC performance protocol spoken by quinn's `perf` tool, on ALPN
//! `perf`, so Alknet can be measured with an independent client and compared with quinn.
//!
//! Per request the client opens a bidirectional stream, writes an 8-byte big-endian count of
//! the bytes it wants back, then a request body, and finishes the stream. The server reads to
//! the end (discarding the body) and answers with exactly that many bytes, then finishes.
//! Response bytes come from one static buffer as [`bytes::Bytes`] chunks, so a response of any
//! size costs no allocation; the size is bounded by [`request::MAX_RESPONSE`].
//!
//! On unless `[services.perf] enabled = false`. A peer needs the `perf` scope, unless
//! `anonymous = true` (benchmarks only, and only with `enabled = true` written beside it):
//! then clients whose key is unknown are served too, and the server logs a warning at start.
//!
//! Next to `handlers/echo`, this crate is the example of a service with a config key of its
//! own: [`PerfConfig`] is parsed from `[services.perf]` by serde (unknown keys are errors),
//! and the declaration ([`Perf::info`]) reads it. Its handler starts one guarded task per
//! stream ([`Connection::spawn`]); monoio's own spawn is denied in handler crates.
//!
//! Not here: the load generator and the quinn baseline (`bench/`).
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzzing;
pub mod request;

use alknet_core::{
    AuthContext, Connection, Handler, RecvStream, SendStream, Service, ServiceContext, ServiceInfo,
};
use bytes::Bytes;
use request::{ChunkSizes, RequestReader};
use serde::Deserialize;
use std::rc::Rc;
use tracing::debug;

/// The perf service's ALPN (the one quinn's `perf` tool offers).
pub const ALPN: &[u8] = b"perf";

/// The scope a known peer needs when the service is not anonymous.
pub const SCOPE: &str = "perf";

/// Stream error codes this service uses (above 0x100, as handlers do).
pub mod code {
    /// The request header asked for more than the limit.
    pub const TOO_LARGE: u32 = 0x101;
    /// The stream ended inside the request header.
    pub const TRUNCATED: u32 = 0x102;
}

/// Size of the static buffer responses are cut from, and of the largest chunk read at once.
/// 64 KiB lets quinn-proto fill a whole GSO batch from one `write_chunk`; larger chunks would
/// only sit in the send buffer.
pub const CHUNK: usize = 64 * 1024;

static RESPONSE_BYTES: [u8; CHUNK] = [0; CHUNK];

/// The keys of `[services.perf]` besides `enabled`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerfConfig {
    /// Serve clients whose key is unknown (benchmarks only).
    pub anonymous: bool,
}

/// The perf service; its handler keeps no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Perf;

impl Service for Perf {
    const NAME: &'static str = "perf";
    type Config = PerfConfig;
    type Handler = Perf;

    fn info(&self, config: &PerfConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: &[SCOPE],
            anonymous: config.anonymous,
            uni_streams: false,
        }
    }

    fn build(&self, _ctx: &ServiceContext<'_, PerfConfig>) -> Perf {
        Perf
    }
}

impl Handler for Perf {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            conn.spawn(serve_stream(send, recv));
        }
    }
}

/// Serves one request: read to the end, answer, finish.
async fn serve_stream(mut send: SendStream, mut recv: RecvStream) {
    let mut reader = RequestReader::new();
    loop {
        match recv.read_chunk(usize::MAX).await {
            Ok(Some(chunk)) => {
                if let Err(e) = reader.feed(&chunk) {
                    debug!(error = %e, "refusing perf request");
                    recv.stop(code::TOO_LARGE);
                    send.reset(code::TOO_LARGE);
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "perf request stream failed");
                send.reset(0);
                return;
            }
        }
    }
    let req = match reader.finish() {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "refusing perf request");
            send.reset(code::TRUNCATED);
            return;
        }
    };
    let body = Bytes::from_static(&RESPONSE_BYTES);
    for n in ChunkSizes::new(req.response_len, CHUNK) {
        if send.write_chunk(body.slice(..n)).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::{Perf, PerfConfig};
    use alknet_core::Registry;
    use alknet_core::config::Config;
    use alknet_core::service::Offer;
    use std::path::Path;

    fn registry(text: &str) -> Result<Registry, String> {
        let config = Config::parse(text, Path::new("alknet.toml")).map_err(|e| e.to_string())?;
        Registry::from_config(&config, [Offer::new(Perf)]).map_err(|e| e.to_string())
    }

    #[test]
    fn anonymous_key_is_read_by_perf() {
        let r = registry("[services.perf]\nenabled = true\nanonymous = true\n").unwrap();
        assert_eq!(r.alpns(), vec![b"perf".to_vec()]);
        assert!(r.any_anonymous());
        let r = registry("[services.perf]\nenabled = true\n").unwrap();
        assert!(!r.any_anonymous());
        let r = registry("[services.perf]\nanonymous = true\n").unwrap();
        assert!(r.is_empty(), "off unless enabled");
        assert_eq!(
            Config::parse("[services.perf]\nanonymous = true\n", Path::new("a.toml"))
                .unwrap()
                .service_section::<PerfConfig>("perf")
                .unwrap()
                .config,
            PerfConfig { anonymous: true }
        );
    }

    #[test]
    fn unknown_perf_key_names_file_line_and_key() {
        let e = registry("[services.perf]\nenabled = true\nanonymus = true\n").unwrap_err();
        assert!(
            e.starts_with(
                "alknet.toml:3: key `services.perf.anonymus`: unknown field `anonymus`, expected `anonymous`"
            ),
            "{e}"
        );
    }
}

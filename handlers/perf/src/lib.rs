//! Alknet perf service: the QUIC performance protocol spoken by quinn's `perf` tool, on ALPN
//! `perf`, so Alknet can be measured with an independent client and compared with quinn.
//!
//! Per request the client opens a bidirectional stream, writes an 8-byte big-endian count of
//! the bytes it wants back, then a request body, and finishes the stream. The server reads to
//! the end (discarding the body) and answers with exactly that many bytes, then finishes.
//! Response bytes come from one static buffer as [`bytes::Bytes`] chunks, so a response of any
//! size costs no allocation; the size is bounded by [`request::MAX_RESPONSE`].
//!
//! The service is off unless `[services.perf] enabled = true`. It needs the `perf` scope,
//! unless it is registered as anonymous (`anonymous = true`, for benchmarks only), in which
//! case clients whose key is unknown are served too (and `alknet serve` logs a warning).
//!
//! Not here: the load generator and the quinn baseline (`bench/`).
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzzing;
pub mod request;

use alknet_core::service::FnFactory;
use alknet_core::{
    AuthContext, Connection, HandlerFactory, LocalBoxFuture, ProtocolHandler, RecvStream,
    SendStream,
};
use bytes::Bytes;
use request::{ChunkSizes, RequestReader};
use std::rc::Rc;
use std::sync::Arc;
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

/// The perf handler (no per-shard state).
#[derive(Debug, Clone, Copy)]
pub struct Perf {
    anonymous: bool,
}

impl ProtocolHandler for Perf {
    fn alpn(&self) -> &'static [u8] {
        ALPN
    }

    fn scope(&self) -> Option<&str> {
        Some(SCOPE)
    }

    fn anonymous(&self) -> bool {
        self.anonymous
    }

    fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) -> LocalBoxFuture<()> {
        Box::pin(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                monoio::spawn(serve_stream(send, recv));
            }
        })
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

/// The factory registering `perf`. With `anonymous`, clients whose key is unknown are
/// served too (benchmarks only); the caller logs a warning at start when it asks for that
/// (`alknet serve` does).
pub fn factory(anonymous: bool) -> Arc<dyn HandlerFactory> {
    Arc::new(FnFactory::new(ALPN, anonymous, move |_| {
        Rc::new(Perf { anonymous }) as Rc<dyn ProtocolHandler>
    }))
}

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

/// Entry points shared by the cargo-fuzz target and the corpus replay test.
#[doc(hidden)]
pub mod fuzzing {
    use crate::request::{
        ChunkSizes, HEADER_LEN, MAX_RESPONSE, Request, RequestError, RequestReader,
    };

    /// Feeds arbitrary bytes to the request reader, split where the first byte says, and
    /// checks the answer against a one-shot decode; checks the chunking of small responses.
    pub fn fuzz_perf_request(data: &[u8]) {
        let (split_seed, stream) = match data.split_first() {
            Some((s, rest)) => (usize::from(*s), rest),
            None => (1, data),
        };
        // The oracle: decode the whole stream at once.
        let expected = match stream.get(..HEADER_LEN) {
            None => Err(RequestError::Truncated { got: stream.len() }),
            Some(h) => {
                let mut b = [0u8; HEADER_LEN];
                b.copy_from_slice(h);
                let n = u64::from_be_bytes(b);
                if n > MAX_RESPONSE {
                    Err(RequestError::TooLarge {
                        requested: n,
                        limit: MAX_RESPONSE,
                    })
                } else {
                    Ok(Request {
                        response_len: n,
                        body_len: (stream.len() - HEADER_LEN) as u64,
                    })
                }
            }
        };
        // Feed in pieces of 1..=split_seed+1 bytes.
        let step = split_seed % 13 + 1;
        let mut reader = RequestReader::new();
        let mut fed_err = None;
        for piece in stream.chunks(step) {
            if let Err(e) = reader.feed(piece) {
                fed_err = Some(e);
                break;
            }
        }
        let got = match fed_err {
            Some(e) => Err(e),
            None => reader.finish(),
        };
        assert_eq!(got, expected, "piecewise and one-shot decodes differ");
        if let Ok(req) = got
            && req.response_len <= 1 << 20
        {
            let chunk = (split_seed % 4096) + 1;
            let total: u64 = ChunkSizes::new(req.response_len, chunk)
                .map(|n| {
                    assert!(n > 0 && n <= chunk);
                    n as u64
                })
                .sum();
            assert_eq!(total, req.response_len);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn perf_request_corpus_replays() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz_perf_request");
        let n = alknet_proto::fuzzing::replay_corpus(&dir, super::fuzzing::fuzz_perf_request);
        assert!(matches!(n, Ok(k) if k > 0), "{n:?}");
    }
}

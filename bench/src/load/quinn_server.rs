//! The quinn baseline's serving loop, shared by `quinn-perf-server` and the criterion suite:
//! quinn on tokio answering the perf protocol with alknet's own TLS, transport and endpoint
//! settings (see `src/bin/quinn-perf-server.rs` for the list).

use alknet_core::config::Config;
use alknet_core::identity::tls::NodeKey;
use alknet_perf::request::{ChunkSizes, RequestReader};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

static RESPONSE_BYTES: [u8; alknet_perf::CHUNK] = [0; alknet_perf::CHUNK];

/// The endpoint and server configurations alknet would use for `config` and `node`, with
/// only the perf ALPN and client keys optional (as with an anonymous perf service).
pub fn configs(
    config: &Config,
    node: &NodeKey,
) -> anyhow::Result<(quinn::EndpointConfig, quinn::ServerConfig)> {
    let server_config = alknet_core::net::endpoint::server_config(
        config,
        node,
        vec![alknet_perf::ALPN.to_vec()],
        false,
    )?;
    let codec = alknet_core::net::endpoint::cid_codec(node, config.server_id);
    let endpoint_config = alknet_core::net::endpoint::endpoint_config(
        node,
        &codec,
        0,
        config.transport.max_udp_payload,
    );
    Ok((endpoint_config, server_config))
}

/// Accepts connections until the endpoint closes. Above `handshake_cap` handshakes in
/// flight, Initials without a token get a Retry, as alknet's shards do.
pub async fn serve(ep: quinn::Endpoint, handshake_cap: usize) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = ep.accept().await {
        if in_flight.load(Ordering::Relaxed) >= handshake_cap
            && !incoming.remote_address_validated()
        {
            let _ = incoming.retry();
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let r = incoming.await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Ok(conn) = r {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve_stream(send, recv));
                }
            }
        });
    }
}

/// One perf request on quinn: read to the end, answer from the static buffer, finish.
pub async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut reader = RequestReader::new();
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                if reader.feed(&chunk.bytes).is_err() {
                    let _ = recv.stop(alknet_perf::code::TOO_LARGE.into());
                    let _ = send.reset(alknet_perf::code::TOO_LARGE.into());
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => {
                let _ = send.reset(0u32.into());
                return;
            }
        }
    }
    let Ok(req) = reader.finish() else {
        let _ = send.reset(alknet_perf::code::TRUNCATED.into());
        return;
    };
    let body = Bytes::from_static(&RESPONSE_BYTES);
    for n in ChunkSizes::new(req.response_len, alknet_perf::CHUNK) {
        if send.write_chunk(body.slice(..n)).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

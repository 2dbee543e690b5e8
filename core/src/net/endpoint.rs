//! quinn-proto configuration for hostile networks, and the shard-aware CID generator.
//!
//! quinn-proto's defaults are permissive (an unbounded connection receive window, no
//! handshake deadline); everything here is bounded by the config file instead.

use crate::config::Config;
use crate::identity::tls::{NodeKey, TlsError};
use alknet_proto::cid::NONCE_LEN;
use alknet_proto::{CID_LEN, CidCodec};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid, VarInt};
use std::sync::Arc;
use std::time::Duration;

/// Issues connection IDs that carry the shard, and rejects the CIDs of other shards, so
/// quinn-proto never answers a stateless reset for a connection that lives elsewhere.
pub struct ShardCidGenerator {
    codec: CidCodec,
    shard: u8,
}

impl ShardCidGenerator {
    /// A generator for `shard` (must fit one byte; at most 256 shards).
    pub fn new(codec: CidCodec, shard: u8) -> Self {
        Self { codec, shard }
    }
}

impl ConnectionIdGenerator for ShardCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        ConnectionId::new(&self.codec.encode(self.shard, nonce))
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match self.codec.decode(cid) {
            Some(f) if f.shard == self.shard => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The CID codec of a server.
pub fn cid_codec(node: &NodeKey, server_id: u16) -> CidCodec {
    // Keys derived from the node key survive a restart: clients of a restarted server get a
    // stateless reset at once instead of waiting for their idle timeout.
    let k = node.derive("alknet cid key v1");
    let mut key = [0u8; 16];
    key.copy_from_slice(&k[..16]);
    CidCodec::new(key, server_id)
}

/// The endpoint configuration of one shard, accepting UDP payloads of up to
/// `max_udp_payload` bytes (`[transport] max_udp_payload`).
pub fn endpoint_config(
    node: &NodeKey,
    codec: &CidCodec,
    shard: u8,
    max_udp_payload: u16,
) -> quinn_proto::EndpointConfig {
    let reset = node.derive("alknet stateless reset key v1");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset);
    let mut cfg = quinn_proto::EndpointConfig::new(Arc::new(reset_key));
    // Out of range only if the config was not validated; quinn's default stays then.
    let _ = cfg.max_udp_payload_size(max_udp_payload);
    let codec = codec.clone();
    cfg.cid_generator(move || Box::new(ShardCidGenerator::new(codec.clone(), shard)));
    cfg
}

/// Transport limits from the config file.
pub fn transport_config(config: &Config) -> quinn_proto::TransportConfig {
    let t = &config.transport;
    let mut tc = quinn_proto::TransportConfig::default();
    tc.max_concurrent_bidi_streams(VarInt::from_u32(t.max_concurrent_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(t.max_concurrent_uni_streams))
        .stream_receive_window(VarInt::from_u32(t.stream_receive_window))
        .receive_window(VarInt::from_u32(t.connection_receive_window))
        .send_window(t.send_window)
        .max_idle_timeout(quinn_proto::IdleTimeout::try_from(t.idle_timeout.0).ok())
        .keep_alive_interval((!t.keep_alive.0.is_zero()).then_some(t.keep_alive.0))
        .datagram_receive_buffer_size(
            (t.datagram_receive_buffer > 0).then_some(t.datagram_receive_buffer),
        )
        .datagram_send_buffer_size(t.datagram_receive_buffer.max(1 << 16));
    let mut mtu = quinn_proto::MtuDiscoveryConfig::default();
    mtu.upper_bound(t.max_udp_payload);
    tc.mtu_discovery_config(Some(mtu));
    use quinn_proto::congestion;
    match t.congestion {
        crate::config::Congestion::Cubic => {
            tc.congestion_controller_factory(Arc::new(congestion::CubicConfig::default()))
        }
        crate::config::Congestion::NewReno => {
            tc.congestion_controller_factory(Arc::new(congestion::NewRenoConfig::default()))
        }
        crate::config::Congestion::Bbr => {
            tc.congestion_controller_factory(Arc::new(congestion::BbrConfig::default()))
        }
    };
    tc
}

/// The QUIC server configuration: TLS, transport limits, Retry tokens, migration on.
pub fn server_config(
    config: &Config,
    node: &NodeKey,
    alpns: Vec<Vec<u8>>,
    client_key_required: bool,
) -> Result<quinn_proto::ServerConfig, TlsError> {
    let tls = crate::identity::tls::server_config(node, alpns, client_key_required)?;
    let quic = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut sc = quinn_proto::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(Arc::new(transport_config(config)))
        .migration(true)
        // Clients return a Retry token at once; a short life bounds what a stolen or
        // replayed one is worth (the shard also takes each token once, `shard/sources.rs`).
        .retry_token_lifetime(config.admission.retry_token_lifetime.0)
        // Datagrams buffered for handshakes the shard has not decided on yet.
        .incoming_buffer_size(64 << 10)
        .incoming_buffer_size_total(8 << 20);
    Ok(sc)
}

/// The QUIC client configuration for `alknet connect` and the call client.
pub fn client_config(
    config: &Config,
    node: &NodeKey,
    alpn: &[u8],
    trust: crate::identity::tls::ServerTrust,
) -> Result<
    (
        quinn_proto::ClientConfig,
        crate::identity::tls::ServerKeySeen,
    ),
    TlsError,
> {
    let (tls, seen) = crate::identity::tls::client_config(node, alpn, trust)?;
    let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut cc = quinn_proto::ClientConfig::new(Arc::new(quic));
    cc.transport_config(Arc::new(transport_config(config)));
    Ok((cc, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_validates_only_its_shard() {
        let codec = CidCodec::new([5; 16], 0);
        let mut g0 = ShardCidGenerator::new(codec.clone(), 0);
        let g1 = ShardCidGenerator::new(codec.clone(), 1);
        for _ in 0..100 {
            let cid = g0.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert!(g0.validate(&cid).is_ok());
            assert!(g1.validate(&cid).is_err());
        }
        assert!(g0.validate(&ConnectionId::new(&[0u8; CID_LEN])).is_err());
    }

    #[test]
    fn keys_are_stable_per_node() {
        let a = NodeKey::generate();
        assert_eq!(a.derive("x"), a.derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
        assert_ne!(a.derive("x"), NodeKey::generate().derive("x"));
    }
}

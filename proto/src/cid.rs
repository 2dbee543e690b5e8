//! Connection-ID layout: which shard (worker core) and which server owns a connection.
//!
//! Every connection ID an Alknet endpoint issues is [`CID_LEN`] bytes:
//!
//! ```text
//! byte 0      QUIC-LB first octet: config rotation (3 bits) | length - 1 (5 bits)
//! bytes 1..3  server id, plaintext (QUIC-LB "plaintext" algorithm), for an L4 balancer
//! byte 3      shard id, plaintext
//! bytes 4..10 nonce, random
//! bytes 10..12 tag = SipHash-1-3(key, bytes 0..10), first two bytes
//! ```
//!
//! The routing part (server id and shard) is in plaintext at fixed offsets, as in QUIC-LB's
//! plaintext mode, so that the kernel can steer a datagram to its shard's socket before any
//! thread sees it (a classic BPF program attached with `SO_ATTACH_REUSEPORT_CBPF` reads the
//! shard byte; see `alknet-core`'s `sys` module). An observer learns which of at most 256
//! shards holds a connection, nothing more: the nonce is random per CID. The 16-bit keyed tag
//! lets a shard tell the CIDs it issued from a client's random Initial DCID of the same
//! length (a false match is harmless: routing stays a pure function of the DCID bytes, so
//! every shard makes the same choice and split ClientHellos still meet on one endpoint).
//!
//! This module does not generate randomness and does not know about quinn-proto; the core
//! crate wraps [`CidCodec`] in a `ConnectionIdGenerator`.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Length of every connection ID an Alknet endpoint issues.
pub const CID_LEN: usize = 12;

/// Length of the random part of a connection ID.
pub const NONCE_LEN: usize = 6;

/// QUIC-LB config rotation codepoint used by Alknet CIDs (the QUIC-LB "unroutable" value 0b111
/// is never used).
pub const CONFIG_ID: u8 = 0;

/// The first byte of every Alknet CID.
pub const FIRST_OCTET: u8 = (CONFIG_ID << 5) | ((CID_LEN - 1) as u8 & 0x1f);

/// Offset of the shard byte inside a CID.
pub const SHARD_OFFSET: usize = 3;

/// The fields of a connection ID issued by an Alknet endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CidFields {
    /// Server id for an L4 balancer (plaintext).
    pub server_id: u16,
    /// Worker shard that owns the connection.
    pub shard: u8,
}

/// Encodes and decodes Alknet connection IDs under one process-wide key.
///
/// Every shard of one server holds the same codec so they agree on ownership and on the
/// hash that places first Initials.
#[derive(Clone)]
pub struct CidCodec {
    k0: u64,
    k1: u64,
    server_id: u16,
}

impl std::fmt::Debug for CidCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs: with it, CIDs become linkable.
        f.debug_struct("CidCodec")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl CidCodec {
    /// A codec for `server_id` under a 128-bit key.
    pub fn new(key: [u8; 16], server_id: u16) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..]);
        Self {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
            server_id,
        }
    }

    /// The server id written into every CID.
    pub fn server_id(&self) -> u16 {
        self.server_id
    }

    fn mac(&self, head: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(head);
        h.finish()
    }

    /// Builds the CID for `shard` from a random nonce.
    pub fn encode(&self, shard: u8, nonce: [u8; NONCE_LEN]) -> [u8; CID_LEN] {
        let mut cid = [0u8; CID_LEN];
        cid[0] = FIRST_OCTET;
        cid[1..3].copy_from_slice(&self.server_id.to_be_bytes());
        cid[SHARD_OFFSET] = shard;
        cid[4..10].copy_from_slice(&nonce);
        let m = self.mac(&cid[..10]).to_le_bytes();
        cid[10] = m[0];
        cid[11] = m[1];
        cid
    }

    /// Decodes a CID this server issued; `None` for any other byte string (wrong length,
    /// foreign config or server id, bad tag).
    pub fn decode(&self, cid: &[u8]) -> Option<CidFields> {
        let cid: &[u8; CID_LEN] = cid.try_into().ok()?;
        if cid[0] != FIRST_OCTET {
            return None;
        }
        let server_id = u16::from_be_bytes([cid[1], cid[2]]);
        if server_id != self.server_id {
            return None;
        }
        let m = self.mac(&cid[..10]).to_le_bytes();
        if cid[10] != m[0] || cid[11] != m[1] {
            return None;
        }
        Some(CidFields {
            server_id,
            shard: cid[SHARD_OFFSET],
        })
    }

    /// The shard that handles a connection whose first packets carry this client-chosen
    /// DCID. Every shard computes the same answer.
    pub fn hash_shard(&self, dcid: &[u8], shards: usize) -> usize {
        if shards <= 1 {
            return 0;
        }
        let mut h = SipHasher13::new_with_keys(self.k1, self.k0);
        h.write(dcid);
        (h.finish() % shards as u64) as usize
    }
}

/// Where a received datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Handle it on the shard that received it.
    Local,
    /// Hand it to this shard.
    Forward(usize),
    /// Not a QUIC packet any shard can use; drop it without a reply.
    Drop,
}

/// Decides which shard handles a datagram, from its first packet's destination CID only.
///
/// * A CID this server issued goes to the shard written in it (a CID naming a shard that does
///   not exist is dropped: it cannot belong to a live connection).
/// * A long-header packet with any other DCID (a client's first Initial or 0-RTT) goes to the
///   shard that [`CidCodec::hash_shard`] names.
/// * A short-header packet with an unknown CID stays local: the endpoint's CID validation
///   drops it without a stateless reset.
pub fn route_datagram(codec: &CidCodec, data: &[u8], local: usize, shards: usize) -> Route {
    let Some(&first) = data.first() else {
        return Route::Drop;
    };
    let to = |shard: usize| {
        if shard >= shards {
            Route::Drop
        } else if shard == local {
            Route::Local
        } else {
            Route::Forward(shard)
        }
    };
    if first & 0x80 != 0 {
        // Long header: flags(1) version(4) dcid_len(1) dcid.
        let Some(&dcid_len) = data.get(5) else {
            return Route::Drop;
        };
        let Some(dcid) = data.get(6..6 + usize::from(dcid_len)) else {
            return Route::Drop;
        };
        match codec.decode(dcid) {
            Some(f) => to(usize::from(f.shard)),
            None => to(codec.hash_shard(dcid, shards)),
        }
    } else {
        let Some(dcid) = data.get(1..1 + CID_LEN) else {
            return Route::Drop;
        };
        match codec.decode(dcid) {
            Some(f) => to(usize::from(f.shard)),
            None => Route::Local,
        }
    }
}

/// The smallest UDP payload that may carry a client's Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_SIZE: usize = 1200;

/// What a shard does with a datagram [`route_datagram`] sent to another shard, decided from
/// its invariant header before it is handed over (see [`screen_handover`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Hand it to the owning shard.
    Forward,
    /// Answer it on the shard that received it: a version this server does not speak, in a
    /// datagram large enough to deserve version negotiation, which needs no connection.
    AnswerHere,
    /// No connection on any shard can use it; drop it without a reply.
    Drop,
}

/// Screens a datagram routed to another shard, so a flood of packets that no connection
/// can use never costs a cross-shard queue slot or the owner's time. Short headers are
/// always forwarded (their owner decides); the check reads four header fields and is only
/// made for datagrams that leave their shard.
///
/// `versions` are the QUIC versions the endpoints speak. Packet types are read as QUIC v1
/// numbers them (RFC 9000 §17.2), as its drafts do; a version that numbers them otherwise
/// (QUIC v2) needs its own rule here before an endpoint may speak it.
pub fn screen_handover(data: &[u8], versions: &[u32]) -> Handover {
    let Some(&first) = data.first() else {
        return Handover::Drop;
    };
    if first & 0x80 == 0 {
        return Handover::Forward;
    }
    let Some(&[a, b, c, d]) = data.get(1..5) else {
        return Handover::Drop;
    };
    let version = u32::from_be_bytes([a, b, c, d]);
    if version == 0 {
        // Version negotiation is sent by servers only: a server has no use for one.
        return Handover::Drop;
    }
    if !versions.contains(&version) {
        //= https://www.rfc-editor.org/rfc/rfc9000#section-5.2.2
        //# Servers MUST drop smaller packets that specify unsupported versions.
        return if data.len() >= MIN_INITIAL_SIZE {
            Handover::AnswerHere
        } else {
            Handover::Drop
        };
    }
    match (first & 0x30) >> 4 {
        //= https://www.rfc-editor.org/rfc/rfc9000#section-14.1
        //# A server MUST discard an Initial packet that is carried in a UDP datagram
        //# with a payload that is smaller than the smallest allowed maximum datagram
        //# size of 1200 bytes.
        0 if data.len() < MIN_INITIAL_SIZE => Handover::Drop,
        // Retry packets are sent by servers only.
        3 => Handover::Drop,
        _ => Handover::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[u32] = &[1];

    fn long(first: u8, version: u32, len: usize) -> Vec<u8> {
        let mut d = vec![first];
        d.extend_from_slice(&version.to_be_bytes());
        d.push(8);
        d.extend_from_slice(&[0xaa; 8]);
        d.resize(len, 0);
        d
    }

    #[test]
    fn handover_drops_what_no_connection_can_use() {
        // An Initial under 1 200 bytes, at 1 199 and below.
        assert_eq!(screen_handover(&long(0xc0, 1, 1199), V1), Handover::Drop);
        assert_eq!(screen_handover(&long(0xc0, 1, 40), V1), Handover::Drop);
        // Version negotiation and Retry reach a server only from an attacker.
        assert_eq!(screen_handover(&long(0x80, 0, 1200), V1), Handover::Drop);
        assert_eq!(screen_handover(&long(0xf0, 1, 1200), V1), Handover::Drop);
        // An unknown version: dropped when small, answered here when it may be a probe.
        assert_eq!(
            screen_handover(&long(0xc0, 0x1a2a_3a4a, 1199), V1),
            Handover::Drop
        );
        assert_eq!(
            screen_handover(&long(0xc0, 0x1a2a_3a4a, 1200), V1),
            Handover::AnswerHere
        );
        // Truncated before the version.
        assert_eq!(screen_handover(&[0xc0, 0, 0], V1), Handover::Drop);
        assert_eq!(screen_handover(&[], V1), Handover::Drop);
    }

    #[test]
    fn handover_forwards_what_a_connection_may_use() {
        assert_eq!(screen_handover(&long(0xc0, 1, 1200), V1), Handover::Forward);
        // Handshake and 0-RTT packets may be small (an ACK, a short request).
        assert_eq!(screen_handover(&long(0xe0, 1, 50), V1), Handover::Forward);
        assert_eq!(screen_handover(&long(0xd0, 1, 50), V1), Handover::Forward);
        // Short headers: the owner decides.
        assert_eq!(screen_handover(&[0x40; 30], V1), Handover::Forward);
    }

    fn codec() -> CidCodec {
        CidCodec::new(*b"0123456789abcdef", 7)
    }

    #[test]
    fn round_trip_every_shard() {
        let c = codec();
        for shard in 0..=255u8 {
            let cid = c.encode(shard, [shard, 1, 2, 3, 4, 5]);
            assert_eq!(
                c.decode(&cid),
                Some(CidFields {
                    server_id: 7,
                    shard
                })
            );
        }
    }

    #[test]
    fn other_key_or_server_rejects() {
        let cid = codec().encode(1, [9; NONCE_LEN]);
        assert_eq!(CidCodec::new(*b"fedcba9876543210", 7).decode(&cid), None);
        assert_eq!(CidCodec::new(*b"0123456789abcdef", 8).decode(&cid), None);
        assert_eq!(codec().decode(&cid[..CID_LEN - 1]), None);
    }

    #[test]
    fn tampered_cid_rejected() {
        let c = codec();
        let cid = c.encode(1, [9; NONCE_LEN]);
        for i in 0..CID_LEN {
            let mut bad = cid;
            bad[i] ^= 0x01;
            // Every byte, the shard included, is covered by the tag.
            assert_eq!(c.decode(&bad), None, "byte {i}");
        }
    }

    #[test]
    fn routing_fields_sit_at_fixed_offsets() {
        // The kernel's steering program reads these bytes; they must not move.
        let c = codec();
        for n in 0..64u8 {
            let cid = c.encode(5, [n, n, 0, 1, 2, 3]);
            assert_eq!(cid[0], FIRST_OCTET);
            assert_eq!(cid[SHARD_OFFSET], 5);
            assert_eq!(&cid[1..3], &7u16.to_be_bytes());
        }
    }

    #[test]
    fn short_header_routes_to_owner() {
        let c = codec();
        let mut pkt = vec![0x40];
        pkt.extend_from_slice(&c.encode(1, [1; NONCE_LEN]));
        pkt.extend_from_slice(&[0; 30]);
        assert_eq!(route_datagram(&c, &pkt, 0, 2), Route::Forward(1));
        assert_eq!(route_datagram(&c, &pkt, 1, 2), Route::Local);
        // A shard that does not exist cannot own a live connection.
        assert_eq!(route_datagram(&c, &pkt, 0, 1), Route::Drop);
    }

    #[test]
    fn unknown_short_header_stays_local() {
        let c = codec();
        let pkt = [0x40u8; 40];
        assert_eq!(route_datagram(&c, &pkt, 1, 2), Route::Local);
    }

    #[test]
    fn initial_hashes_the_same_on_every_shard() {
        let c = codec();
        let mut pkt = vec![0xc0, 0, 0, 0, 1, 8];
        pkt.extend_from_slice(&[0xaa; 8]);
        pkt.extend_from_slice(&[0; 1200]);
        let owner = c.hash_shard(&[0xaa; 8], 4);
        for local in 0..4 {
            let r = route_datagram(&c, &pkt, local, 4);
            if local == owner {
                assert_eq!(r, Route::Local);
            } else {
                assert_eq!(r, Route::Forward(owner));
            }
        }
    }

    #[test]
    fn truncated_headers_drop() {
        let c = codec();
        assert_eq!(route_datagram(&c, &[], 0, 2), Route::Drop);
        assert_eq!(route_datagram(&c, &[0xc0, 0, 0, 0, 1], 0, 2), Route::Drop);
        assert_eq!(
            route_datagram(&c, &[0xc0, 0, 0, 0, 1, 20, 1], 0, 2),
            Route::Drop
        );
        assert_eq!(route_datagram(&c, &[0x40, 1, 2], 0, 2), Route::Drop);
    }

    #[test]
    fn hash_spreads_over_shards() {
        let c = codec();
        let mut counts = [0usize; 2];
        for i in 0..1000u32 {
            counts[c.hash_shard(&i.to_le_bytes(), 2)] += 1;
        }
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
    }
}

//! Cross-shard forwarding under attack: the owner's inbox is bounded in bytes, and what no
//! connection can use is dropped before it is handed over.

use super::*;
use crate::shard::ForwardBatch;
use crate::shard::forward::PER_DATAGRAM;
use alknet_proto::CidCodec;

/// Two shards whose inboxes each hold `budget` bytes of forwarded datagrams.
fn two_shards(budget: usize) -> Pair {
    let mut config = Config::default();
    config.udp.recv_buffer = budget;
    Pair::new(Setup {
        shards: 2,
        config,
        ..Setup::default()
    })
}

fn codec(pair: &Pair) -> CidCodec {
    crate::net::endpoint::cid_codec(&pair.node, 0)
}

/// A long-header datagram of `len` bytes (first byte `first`, version `version`) whose
/// client-chosen DCID places it on shard `owner` of 2. `n` varies the DCID.
fn long_for(
    codec: &CidCodec,
    owner: usize,
    first: u8,
    version: u32,
    len: usize,
    n: u64,
) -> Vec<u8> {
    let mut seed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let dcid = seed.to_be_bytes();
        if codec.hash_shard(&dcid, 2) != owner {
            continue;
        }
        let mut d = vec![first];
        d.extend_from_slice(&version.to_be_bytes());
        d.push(8);
        d.extend_from_slice(&dcid);
        d.push(0);
        d.resize(len, 0x5a);
        return d;
    }
}

fn feed(pair: &mut Pair, shard: usize, d: &[u8]) {
    let from: SocketAddr = "[::1]:50001".parse().unwrap();
    pair.shards[shard].handle_datagram(pair.time, from, None, None, BytesMut::from(d));
}

#[test]
fn forwarded_bytes_waiting_for_a_shard_stay_within_its_budget() {
    // Room for 20 full-size Initials in shard 1's inbox.
    let budget = 20 * (1200 + PER_DATAGRAM);
    let mut pair = two_shards(budget);
    let codec = codec(&pair);
    // 1 000 Initials reach shard 0 for shard 1, which is busy and takes none of them.
    for n in 0..1000 {
        let d = long_for(&codec, 1, 0xc0, 1, 1200, n);
        feed(&mut pair, 0, &d);
    }
    let mut inbox = Vec::new();
    while let Some((owner, batch)) = pair.shards[0].poll_forward() {
        assert_eq!(owner, 1);
        inbox.push(batch);
    }
    let held: usize = inbox.iter().map(ForwardBatch::len).sum();
    let stats = pair.stats(0);
    assert_eq!(
        held, 20,
        "the inbox budget (udp.recv_buffer) holds 20 Initials"
    );
    assert_eq!(
        stats.forward_dropped, 980,
        "datagrams over the budget are counted"
    );
    assert_eq!(pair.forward_budget.queued(1), 20 * (1200 + PER_DATAGRAM));
    assert_eq!(pair.forward_budget.queued(0), 0);
    // The owner takes them: the bytes come back as it does, and forwarding resumes.
    for b in inbox {
        pair.send(1, ShardMsg::Datagrams(b));
    }
    assert_eq!(pair.forward_budget.queued(1), 0);
    assert_eq!(pair.stats(1).forwarded_in, 20);
    feed(&mut pair, 0, &long_for(&codec, 1, 0xc0, 1, 1200, 5000));
    let (_, again) = pair.shards[0].poll_forward().expect("forwarding resumed");
    assert_eq!(again.len(), 1);
}

#[test]
fn a_full_inbox_refuses_batches_without_growing() {
    // A budget smaller than one datagram: nothing can be queued at all, and nothing is.
    let mut pair = two_shards(100);
    let codec = codec(&pair);
    for n in 0..200 {
        feed(&mut pair, 0, &long_for(&codec, 1, 0xc0, 1, 1300, n));
    }
    assert!(pair.shards[0].poll_forward().is_none());
    assert_eq!(pair.stats(0).forward_dropped, 200);
    assert_eq!(pair.forward_budget.queued(1), 0);
}

#[test]
fn datagrams_no_connection_can_use_are_dropped_before_forwarding() {
    let mut pair = two_shards(1 << 20);
    let codec = codec(&pair);
    // An Initial under 1 200 bytes, an unknown version under 1 200 bytes, a Retry, and
    // version negotiation: none can belong to a connection on the other shard.
    feed(&mut pair, 0, &long_for(&codec, 1, 0xc0, 1, 1199, 1));
    feed(
        &mut pair,
        0,
        &long_for(&codec, 1, 0xc0, 0x1a2a_3a4a, 1199, 2),
    );
    feed(&mut pair, 0, &long_for(&codec, 1, 0xf0, 1, 1200, 3));
    feed(&mut pair, 0, &long_for(&codec, 1, 0x80, 0, 1200, 4));
    assert!(
        pair.shards[0].poll_forward().is_none(),
        "an unusable datagram was forwarded"
    );
    assert_eq!(pair.stats(0).dropped_unforwardable, 4);
    assert_eq!(pair.stats(0).forward_dropped, 0);
    // An unknown version at full size may be a client's probe: the shard that received it
    // answers with version negotiation itself, without forwarding.
    feed(
        &mut pair,
        0,
        &long_for(&codec, 1, 0xc0, 0x1a2a_3a4a, 1200, 5),
    );
    assert!(pair.shards[0].poll_forward().is_none());
    let mut buf = Vec::new();
    let t = pair.shards[0]
        .poll_transmit(pair.time, &mut buf)
        .expect("version negotiation");
    assert_eq!(&buf[1..5], &[0, 0, 0, 0], "not version negotiation");
    assert!(t.size < 1200);
    // A full-size Initial of a version the endpoint speaks is forwarded.
    feed(&mut pair, 0, &long_for(&codec, 1, 0xc0, 1, 1200, 6));
    let (owner, batch) = pair.shards[0].poll_forward().expect("forwarded");
    assert_eq!((owner, batch.len()), (1, 1));
}

#[test]
fn a_connection_through_the_other_shard_gives_every_byte_back() {
    // The kernel hands every client datagram to the ingress shard; the connection lives on
    // the shard its first DCID hashes to, so when that is the other one, every datagram
    // after the first flight is forwarded to it.
    let mut through = 0;
    for attempt in 0..16 {
        let mut config = Config::default();
        config.udp.recv_buffer = 64 * 1024;
        // Ethernet-sized packets: the in-memory path would carry MTU probes of up to 64 KiB,
        // each the whole forwarding budget.
        config.transport.max_udp_payload = 1452;
        let mut pair = Pair::new(Setup {
            shards: 2,
            anonymous: true,
            config,
            ..Setup::default()
        });
        pair.ingress = attempt % 2;
        let key = NodeKey::generate();
        let ch = pair.connect(&key);
        assert!(pair.client_connected(ch));
        let (owner, ..) = pair.served().into_iter().next().expect("served");
        assert_eq!(pair.forward_budget.queued(0), 0);
        assert_eq!(pair.forward_budget.queued(1), 0);
        assert_eq!(
            pair.stats(0).forward_dropped + pair.stats(1).forward_dropped,
            0
        );
        if owner != pair.ingress {
            assert!(pair.forwarded > 0, "nothing was forwarded");
            through += 1;
        }
    }
    assert!(
        through > 0,
        "no connection lived on the other shard in 16 tries"
    );
}

//! QUIC-level abuse against a real `alknet serve`: floods aimed at one shard through the
//! cross-shard forwarding, and misbehaving peers driven by a raw quinn-proto client (CID
//! churn, spoofed migrations, streams the service never accepts). Each test checks what
//! the server did with the attack and that it stayed healthy: a legitimate client served
//! afterwards, the server's resident memory bounded.
//!
//! Attacks quinn-proto cannot produce (it never sends a frame its state forbids, and every
//! packet is encrypted, so bytes cannot be patched on the wire) are listed in the doc of
//! the nearest test, with what this suite does instead.

use crate::abuse::{ECHO, echo_server, rss_of};
use crate::support::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shard of every authenticated session, from the control socket.
fn session_shards(server: &Server) -> Vec<u64> {
    let v = alknet_core::ops::control::request(
        &server.data_dir(),
        &alknet_core::ops::control::Request::Sessions,
    )
    .expect("sessions request");
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s["shard"].as_u64()).collect())
        .unwrap_or_default()
}

/// One shard's counter.
fn shard_counter(server: &Server, shard: usize, name: &str) -> u64 {
    server.stats()["shards"][shard][name]
        .as_u64()
        .expect("shard counter")
}

/// Connects with `transport` until the session lands on `shard` (the first Initial's DCID
/// picks it), at most 40 tries; the others are closed.
async fn connect_on_shard(
    server: &Server,
    key: &ClientKey,
    shard: u64,
    transport: impl Fn() -> quinn::TransportConfig,
) -> quinn::Connection {
    let ep = quinn_endpoint();
    for _ in 0..40 {
        let before = session_shards(server)
            .iter()
            .filter(|&&s| s == shard)
            .count();
        let config = alknet_testkit::quinn_client_config(
            Some(key),
            ECHO,
            Arc::new(alknet_testkit::AnyServer::default()),
            transport(),
        )
        .expect("client config");
        let c = ep
            .connect_with(config, server.addr, "alknet")
            .expect("connect call")
            .await
            .expect("handshake");
        // The session is on the board once the server authorised it: one echo waits for that.
        assert_eq!(echo(&c, b"where").await.unwrap(), b"where");
        let after = session_shards(server)
            .iter()
            .filter(|&&s| s == shard)
            .count();
        if after > before {
            return c;
        }
        c.close(0u32.into(), b"wrong shard");
    }
    panic!("no session landed on shard {shard} in 40 tries");
}

/// Long-header Initials of 1 200 bytes, valid in every header field a server checks before
/// it derives keys, whose DCID names shard 0 in its CID byte (the kernel steers them to
/// shard 0's socket) but carries a bad tag, so routing places them by hash, on shard 1:
/// shard 0 forwards every one of them, and shard 1 derives Initial keys for each before
/// the decryption fails.
fn initials_through_shard0_to_shard1(server: &Server, count: usize) -> Vec<Vec<u8>> {
    let node = alknet_core::identity::tls::NodeKey::load_or_create(&server.data_dir()).unwrap();
    let codec = alknet_core::net::endpoint::cid_codec(&node, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut dcid = [0u8; alknet_proto::CID_LEN];
        dcid[0] = alknet_proto::cid::FIRST_OCTET;
        dcid[alknet_proto::cid::SHARD_OFFSET] = 0;
        for b in &mut dcid[4..] {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        if codec.decode(&dcid).is_some() || codec.hash_shard(&dcid, 2) != 1 {
            continue;
        }
        // flags, version 1, DCID, empty SCID, no token, length (2-byte varint), payload.
        let mut d = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        d.extend_from_slice(&dcid);
        d.extend_from_slice(&[0, 0]);
        let rest = 1200 - d.len() - 2;
        d.extend_from_slice(&(0x4000u16 | rest as u16).to_be_bytes());
        d.extend((0..rest).map(|i| (i as u8) ^ (seed as u8)));
        out.push(d);
    }
    out
}

/// Sends `packets` round-robin to `server` in GSO batches until `until`; returns the
/// datagrams sent.
fn flood(server: SocketAddr, packets: &[Vec<u8>], until: Instant) -> usize {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let state = quinn::udp::UdpSocketState::new((&sock).into()).unwrap();
    let segments = state.max_gso_segments().clamp(1, 40);
    let mut buf = Vec::with_capacity(segments * 1200);
    let (mut sent, mut i) = (0, 0);
    while Instant::now() < until {
        buf.clear();
        for _ in 0..segments {
            buf.extend_from_slice(&packets[i % packets.len()]);
            i += 1;
        }
        let t = quinn::udp::Transmit {
            destination: server,
            ecn: None,
            contents: &buf,
            segment_size: (segments > 1).then_some(1200),
            src_ip: None,
        };
        if state.send((&sock).into(), &t).is_ok() {
            sent += segments;
        }
    }
    sent
}

/// A flood of full-size Initials steered to shard 0 by the CID byte and forwarded by it to
/// shard 1, which pays a key derivation for each. Shard 1 must keep serving its own client
/// and firing its timers (an idle connection is closed on time by the server's idle timer),
/// and what waits in its inbox stays within its byte budget (`udp.recv_buffer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_flood_forwarded_to_one_shard_leaves_its_clients_and_timers_working() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "[transport]\nidle_timeout = \"1500ms\"");
    let pid = server.child.id();
    let live = connect_on_shard(&server, &key, 1, || {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_millis(300)));
        t
    })
    .await;
    let packets = initials_through_shard0_to_shard1(&server, 2048);
    let baseline = rss_of(pid);
    let forwarded_before = shard_counter(&server, 1, "forwarded_in");

    let flood_for = Duration::from_secs(4);
    let addr = server.addr;
    let until = Instant::now() + flood_for;
    let flooder = std::thread::spawn(move || flood(addr, &packets, until));
    // Let the flood build up, then put an idle connection on the flooded shard: only the
    // server's idle timer (1.5 s) can end it, inside the flood.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = connect_on_shard(&server, &key, 1, quinn::TransportConfig::default).await;
    let idle_since = Instant::now();
    let open_with_idle = shard_counter(&server, 1, "connections_open");

    // The live client's round trips on the flooded shard, until the flood ends.
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    let mut idle_closed_at = None;
    while Instant::now() < until {
        let t = Instant::now();
        let back = tokio::time::timeout(Duration::from_secs(2), echo(&live, b"still here")).await;
        assert!(
            matches!(&back, Ok(Ok(b)) if b == b"still here"),
            "the flooded shard's client got no echo within 2 s (round {rounds}): {back:?}"
        );
        worst = worst.max(t.elapsed());
        rounds += 1;
        if idle_closed_at.is_none()
            && shard_counter(&server, 1, "connections_open") < open_with_idle
        {
            idle_closed_at = Some(idle_since.elapsed());
        }
    }
    let grown = rss_of(pid).saturating_sub(baseline);
    let sent = flooder.join().unwrap();
    let stats = server.stats()["counters"].clone();
    let forwarded = shard_counter(&server, 1, "forwarded_in") - forwarded_before;
    eprintln!(
        "initial flood: {sent} datagrams sent in {flood_for:?}, {forwarded} forwarded to shard 1, \
         {} dropped over its inbox budget; live client {rounds} round trips, worst {worst:?}; \
         idle connection closed by the server after {idle_closed_at:?}; server rss +{grown} bytes",
        stats["forward_dropped"]
    );
    assert!(
        forwarded > 1000,
        "only {forwarded} datagrams were forwarded"
    );
    assert!(rounds >= 4, "only {rounds} round trips during the flood");
    // The idle timeout is 1.5 s; the flooded shard's timer fires on time, not when the
    // flood ends.
    let closed = idle_closed_at.expect("the flooded shard's idle timer never fired");
    assert!(
        closed < Duration::from_secs(3),
        "idle timer fired {closed:?} late"
    );
    drop(idle);
    // The inbox budget is udp.recv_buffer (4 MiB); with the sockets' buffers and the
    // allocator's slack the server stays well within 48 MiB of where it started.
    assert!(
        grown < 48 << 20,
        "server grew by {grown} bytes under a forwarded flood"
    );
    assert_eq!(echo(&live, b"after").await.unwrap(), b"after");
}

//! Hostile traffic against a real `alknet serve`: garbage datagrams, reflection sources,
//! half-open and idle clients. Each checks the behaviour, and that legitimate sessions
//! running alongside keep working.

use crate::support::*;
use alknet_core::quic as qp;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const ECHO: &[u8] = b"alknet/echo";

/// A genuine client Initial datagram for `server`, as the first flight of a handshake.
pub(crate) fn real_initial(server: SocketAddr) -> Vec<u8> {
    let key = alknet_core::identity::tls::NodeKey::generate();
    let config = alknet_core::config::Config::default();
    let (cc, _) = alknet_core::net::endpoint::client_config(
        &config,
        &key,
        ECHO,
        alknet_core::identity::tls::ServerTrust::Observe,
    )
    .unwrap();
    let mut ep = qp::Endpoint::new(Arc::new(qp::EndpointConfig::default()), None, true, None);
    let (_, mut conn) = ep.connect(Instant::now(), cc, server, "alknet").unwrap();
    let mut buf = Vec::new();
    let t = conn.poll_transmit(Instant::now(), 1, &mut buf).unwrap();
    buf.truncate(t.size);
    buf
}

/// Datagrams received on `sock` within `wait`.
pub(crate) fn replies(sock: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

pub(crate) fn echo_server(key: &ClientKey, extra: &str) -> Server {
    Server::start(&format!(
        "workers = 2\n{extra}\n[services.echo]\nenabled = true\n{}",
        peer_toml("tester", key, &["echo"])
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_no_reply_and_live_sessions_go_on() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let ep = quinn_endpoint();
    let live = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;

    // Random bytes, short headers with random CIDs, and truncated Initials: silence.
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    let initial = real_initial(server.addr);
    for i in 0..300 {
        let len = 1 + (rng(&mut seed) % 1400) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rng(&mut seed) as u8).collect();
        match i % 3 {
            0 => d[0] &= 0x7f, // short header, random CID
            1 => d = initial[..(rng(&mut seed) as usize % 1199).max(1)].to_vec(),
            _ => {}
        }
        if i % 3 == 2 && d[0] & 0x80 != 0 && d.len() >= 1200 {
            // A long header of full size may legitimately get version negotiation.
            continue;
        }
        quiet.send_to(&d, server.addr).unwrap();
    }
    let got = replies(&quiet, Duration::from_millis(500));
    assert!(
        got.is_empty(),
        "{} replies to garbage and sub-1200-byte Initials",
        got.len()
    );

    // Long headers with unknown versions, full size: version negotiation at most, never
    // larger than the trigger.
    let vn = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        let mut d = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
        d.extend((0..8).map(|_| rng(&mut seed) as u8));
        d.push(8);
        d.extend((0..8).map(|_| rng(&mut seed) as u8));
        d.resize(1200, 0);
        vn.send_to(&d, server.addr).unwrap();
    }
    for r in replies(&vn, Duration::from_millis(300)) {
        assert!(r.len() < 1200);
        assert_eq!(&r[1..5], &[0, 0, 0, 0], "reply is not version negotiation");
    }

    assert_eq!(echo(&live, b"unharmed").await.unwrap(), b"unharmed");
    assert!(server.stats()["counters"]["datagrams_in"].as_u64().unwrap() > 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_resets_are_rate_limited_and_smaller_than_their_trigger() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    // A CID the server would have issued (its key is on disk), for no live connection.
    let node = alknet_core::identity::tls::NodeKey::load_or_create(&server.data_dir()).unwrap();
    let codec = alknet_core::net::endpoint::cid_codec(&node, 0);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    for i in 0..100u8 {
        let mut d = vec![0x40];
        d.extend_from_slice(&codec.encode(i % 2, [i, 1, 2, 3, 4, 5]));
        d.resize(120, 0xaa);
        sock.send_to(&d, server.addr).unwrap();
    }
    let sent_for = start.elapsed();
    let resets = replies(&sock, Duration::from_millis(300));
    assert!(!resets.is_empty(), "no stateless reset at all");
    for r in &resets {
        assert!(
            r.len() < 120,
            "reset of {} bytes for a 120-byte trigger",
            r.len()
        );
        assert_eq!(r[0] & 0xc0, 0x40, "not shaped like a short header");
    }
    // At most one reset per shard per 20 ms (quinn-proto's minimum reset interval).
    let bound = 2 * (sent_for.as_millis() as usize / 20 + 1);
    assert!(
        resets.len() <= bound,
        "{} resets in {sent_for:?}",
        resets.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_from_reflection_ports_get_no_answer() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let initial = real_initial(server.addr);
    // Control: the same Initial from an ordinary port is answered.
    let normal = UdpSocket::bind("127.0.0.1:0").unwrap();
    normal.send_to(&initial, server.addr).unwrap();
    assert!(
        !replies(&normal, Duration::from_millis(500)).is_empty(),
        "control got no answer"
    );
    for port in [17u16, 19, 53, 111, 123, 137, 138, 161, 389, 500] {
        let Ok(s) = UdpSocket::bind(("127.0.0.9", port)) else {
            panic!("cannot bind 127.0.0.9:{port}; the test needs root");
        };
        s.send_to(&real_initial(server.addr), server.addr).unwrap();
        let got = replies(&s, Duration::from_millis(200));
        assert!(got.is_empty(), "answered an Initial from port {port}");
    }
    assert_eq!(server.counter("dropped_reflection"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_idle_clients_are_reclaimed() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(
        &key,
        // The 40 abandoned handshakes below would penalise their source, which also runs
        // the clients that must be served here.
        "[transport]\nhandshake_timeout = \"1s\"\nidle_timeout = \"2s\"\n[admission]\nfailures_before_penalty = 100",
    );
    // 40 half-open clients: one Initial each, then silence.
    let socks: Vec<UdpSocket> = (0..40)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &socks {
        s.send_to(&real_initial(server.addr), server.addr).unwrap();
    }
    // The server's first flight to each: it holds state for all 40.
    let mut buf = [0u8; 2048];
    for s in &socks {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(
            s.recv_from(&mut buf).is_ok(),
            "a half-open client got no answer"
        );
    }
    // 20 clients that finish the handshake and then never open a stream.
    let ep = quinn_endpoint();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect(&ep, server.addr, Some(&key), ECHO).await.unwrap());
    }
    assert!(server.counter("connections_open") >= 50);
    // The idle clients stay alive but silent: only the server's idle timer can end them.
    wait_for(
        Duration::from_secs(15),
        "every connection reclaimed",
        || server.counter("connections_open") == 0,
    )
    .await;
    assert_eq!(server.counter("connections_open"), 0, "state not reclaimed");
    assert_eq!(server.counter("handshake_timeouts"), 40);
    for c in &idle {
        // Both ends apply the negotiated (server's) idle timeout; nothing else closed it.
        assert!(
            matches!(c.close_reason(), Some(quinn::ConnectionError::TimedOut)),
            "{:?}",
            c.close_reason()
        );
    }
    // And the server still serves.
    let c = connect(&quinn_endpoint(), server.addr, Some(&key), ECHO)
        .await
        .unwrap();
    assert_eq!(echo(&c, b"fresh").await.unwrap(), b"fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_deadline_moves_with_traffic_and_still_fires() {
    // Every packet pushes the idle deadline later; the shard keeps the earlier timer entry
    // and re-arms when it fires. Traffic for twice the idle timeout must keep the
    // connection, and silence afterwards must end it on time.
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "[transport]\nidle_timeout = \"1500ms\"");
    let c = connect(&quinn_endpoint(), server.addr, Some(&key), ECHO)
        .await
        .unwrap();
    let busy_until = Instant::now() + Duration::from_secs(3);
    let mut rounds = 0;
    while Instant::now() < busy_until {
        assert_eq!(echo(&c, b"tick").await.unwrap(), b"tick");
        rounds += 1;
        // The pause is the traffic pattern under test: each packet moves the deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(rounds >= 8, "{rounds}");
    assert!(c.close_reason().is_none(), "{:?}", c.close_reason());
    assert_eq!(server.counter("connections_open"), 1);
    // The last packet was ≈ 300 ms ago: the server should close ≈ 1.2 s from now.
    let silent = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "the idle connection closed",
        || server.counter("connections_open") == 0,
    )
    .await;
    let took = silent.elapsed();
    assert_eq!(server.counter("connections_open"), 0, "never timed out");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(4000),
        "closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unknown_keys_are_refused_without_touching_a_handler() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(&key, "");
    let ep = quinn_endpoint();
    let live = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    let addr = server.addr;
    // 200 sources x 5 attempts: under the penalty threshold, so every attempt is a full
    // handshake that must be refused.
    let mut batches = Vec::new();
    for src in 0..200u32 {
        batches.push(tokio::spawn(async move {
            let ip = format!("127.1.{}.{}", src / 250, src % 250 + 1);
            let ep = quinn_endpoint_on(&ip);
            let mut echoed = 0usize;
            for _ in 0..5 {
                let stranger = ClientKey::generate().unwrap();
                if let Ok(c) = connect(&ep, addr, Some(&stranger), ECHO).await {
                    if let Ok(bytes) = echo(&c, b"let me in").await {
                        echoed += bytes.len();
                    }
                    let _ = c.closed().await;
                }
            }
            echoed
        }));
        if batches.len() >= 25 {
            for b in batches.drain(..) {
                assert_eq!(b.await.unwrap(), 0, "a stranger got bytes back");
            }
            assert_eq!(echo(&live, b"alive").await.unwrap(), b"alive");
        }
    }
    for b in batches {
        assert_eq!(b.await.unwrap(), 0);
    }
    assert_eq!(server.counter("auth_failures"), 1000);
    assert_eq!(server.counter("dropped_penalty"), 0);
    // Exactly one connection ever reached a handler: the legitimate one.
    assert_eq!(server.stderr().matches("connection established").count(), 1);
    assert_eq!(echo(&live, b"still alive").await.unwrap(), b"still alive");
}

pub(crate) fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_to_the_cap_never_read_stay_within_the_connection_bound() {
    let key = ClientKey::generate().unwrap();
    let server = echo_server(
        &key,
        "[transport]\nstream_receive_window = 65536\nconnection_receive_window = 262144\nsend_window = 262144\nmax_concurrent_bidi_streams = 100",
    );
    let pid = server.child.id();
    let ep = quinn_endpoint();
    let live = connect_kept_alive(&ep, server.addr, &key, ECHO).await;
    assert_eq!(
        echo(&live, &pattern(1, 100_000)).await.unwrap(),
        pattern(1, 100_000)
    );
    let baseline = rss_of(pid);

    // 20 connections each open every stream they may, push data, and never read the echo.
    let mut hogs = Vec::new();
    let chunk = pattern(2, 64 * 1024);
    for _ in 0..20 {
        let conn = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
        let mut streams = Vec::new();
        for _ in 0..100 {
            let Ok(Ok((mut send, recv))) =
                tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await
            else {
                break;
            };
            let _ = tokio::time::timeout(Duration::from_millis(20), send.write_all(&chunk)).await;
            streams.push((send, recv));
        }
        assert!(streams.len() >= 90, "only {} streams opened", streams.len());
        hogs.push((conn, streams));
    }
    let grown = rss_of(pid).saturating_sub(baseline);
    // Per connection: the receive window (256 KiB) plus the send window (256 KiB) plus
    // bookkeeping for 100 streams; 1.5 MiB leaves room for allocator slack.
    let per_conn = grown / 20;
    eprintln!("rss growth per abusive connection: {per_conn} bytes");
    assert!(
        per_conn < 1536 * 1024,
        "{per_conn} bytes per abusive connection"
    );
    // The legitimate session is unaffected.
    assert_eq!(echo(&live, b"fine").await.unwrap(), b"fine");
    drop(hogs);
}

/// A bare quinn-proto client over a real UDP socket: it can send what quinn never would.
pub(crate) struct RawClient {
    pub(crate) ep: qp::Endpoint,
    pub(crate) ch: qp::ConnectionHandle,
    pub(crate) conn: qp::Connection,
    pub(crate) sock: UdpSocket,
    pub(crate) server: SocketAddr,
}

impl RawClient {
    pub(crate) fn connect(server: SocketAddr, key: &alknet_core::identity::tls::NodeKey) -> Self {
        let mut config = alknet_core::config::Config::default();
        // Plain sockets and 2 KiB buffers here: no MTU probes past Ethernet's size.
        config.transport.max_udp_payload = 1452;
        let (mut cc, _) = alknet_core::net::endpoint::client_config(
            &config,
            key,
            ECHO,
            alknet_core::identity::tls::ServerTrust::Observe,
        )
        .unwrap();
        // No congestion control to speak of: every packet built goes out.
        let mut transport = alknet_core::net::endpoint::transport_config(&config);
        let mut cubic = qp::congestion::CubicConfig::default();
        cubic.initial_window(1 << 30);
        transport.congestion_controller_factory(Arc::new(cubic));
        cc.transport_config(Arc::new(transport));
        let mut ep = qp::Endpoint::new(Arc::new(qp::EndpointConfig::default()), None, true, None);
        let (ch, conn) = ep.connect(Instant::now(), cc, server, "alknet").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut c = Self {
            ep,
            ch,
            conn,
            sock,
            server,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while c.conn.is_handshaking() {
            assert!(Instant::now() < until, "raw handshake did not finish");
            c.pump();
        }
        c
    }

    /// Sends what is pending, takes what arrived, runs timers.
    pub(crate) fn pump(&mut self) {
        let mut buf = Vec::new();
        while let Some(t) = self.conn.poll_transmit(Instant::now(), 1, &mut buf) {
            self.sock.send_to(&buf[..t.size], self.server).unwrap();
            buf.clear();
        }
        let mut rx = [0u8; 2048];
        while let Ok((n, from)) = self.sock.recv_from(&mut rx) {
            let mut out = Vec::new();
            if let Some(qp::DatagramEvent::ConnectionEvent(_, e)) = self.ep.handle(
                Instant::now(),
                from,
                None,
                None,
                bytes::BytesMut::from(&rx[..n]),
                &mut out,
            ) {
                self.conn.handle_event(e);
            }
            self.sock
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
        }
        self.sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while let Some(e) = self.conn.poll_endpoint_events() {
            if let Some(ce) = self.ep.handle_event(self.ch, e) {
                self.conn.handle_event(ce);
            }
        }
        while self.conn.poll().is_some() {}
        self.conn.handle_timeout(Instant::now());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_out_of_order_fragments_stay_within_the_connection_bound() {
    let node = alknet_core::identity::tls::NodeKey::generate();
    let key = ClientKey::generate().unwrap();
    let server = Server::start(&format!(
        "workers = 1\n[services.echo]\nenabled = true\n{}[[peers]]\nid = \"raw\"\nfingerprints = [\"{}\"]\nscopes = [\"echo\"]\n",
        peer_toml("tester", &key, &["echo"]),
        node.fingerprint()
    ));
    let pid = server.child.id();
    let live = connect_kept_alive(&quinn_endpoint(), server.addr, &key, ECHO).await;
    let addr = server.addr;
    let received_before = server.counter("datagrams_in");
    let (runtime, paced) = (tokio::runtime::Handle::current(), live.clone());
    let (packets, baseline) = tokio::task::spawn_blocking(move || {
        let mut raw = RawClient::connect(addr, &node);
        raw.pump();
        let baseline = rss_of(pid);
        // 60 000 one-byte STREAM frames, one per packet, sent backwards without the first,
        // so the server can deliver none of them and must hold them all.
        let id = raw.conn.streams().open(qp::Dir::Bi).unwrap();
        let mut packets = Vec::new();
        let mut buf = Vec::new();
        for i in 0..60_000u32 {
            raw.conn.send_stream(id).write(&[i as u8]).unwrap();
            while let Some(t) = raw.conn.poll_transmit(Instant::now(), 1, &mut buf) {
                packets.push(buf[..t.size].to_vec());
                buf.clear();
            }
        }
        for (k, p) in packets[1..].iter().rev().enumerate() {
            raw.sock.send_to(p, raw.server).unwrap();
            if k % 128 == 127 {
                // Paced by the server: the one shard reads its socket in order, so an echo
                // on the live connection comes back once it has taken this burst, and the
                // next cannot overflow its socket buffer.
                let back = runtime.block_on(echo(&paced, b"paced"));
                assert_eq!(back.unwrap(), b"paced");
            }
        }
        (packets.len(), baseline)
    })
    .await
    .unwrap();
    // The one shard reads its socket in order: an echo on the live connection, sent after
    // the fragments, comes back once the server has taken every fragment that arrived.
    assert_eq!(echo(&live, b"after").await.unwrap(), b"after");
    let held = rss_of(pid).saturating_sub(baseline);
    assert!(packets >= 54_000, "only {packets} packets");
    // They reached the server (a few may drop in the socket buffer).
    let arrived = server.counter("datagrams_in") - received_before;
    assert!(arrived >= 50_000, "only {arrived} datagrams arrived");
    eprintln!("one-byte fragments: {packets} packets, server rss {baseline} + {held} bytes");
    // Holding each fragment in its own allocation would cost tens of MiB; the bound is the
    // stream window (1 MiB) plus bookkeeping.
    assert!(
        held < 4 << 20,
        "server holds {held} bytes for one connection's fragments"
    );
    assert_eq!(echo(&live, b"unaffected").await.unwrap(), b"unaffected");
}

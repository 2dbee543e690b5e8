//! Packet handling through one shard's endpoint, without sockets
//! (`cargo bench -p alknet-bench --bench endpoint`).
//!
//! A server and a client quinn-proto endpoint are joined in memory: every datagram one side
//! builds (real TLS 1.3, real AES-GCM packet protection, Ed25519 keys) is handed to the
//! other side's `Endpoint::handle`, split into segments as a GSO batch would be. The server
//! side is configured as a shard configures it (`alknet_core::net::endpoint`: Alknet's CID
//! generator with the shard byte and its tag, the stateless-reset key derived from the node
//! key, the transport limits of `Config::default()`); the baseline in the same run is the
//! same TLS and transport settings on quinn-proto's default endpoint configuration (random
//! 8-byte CIDs), as quinn sets it up. So the ratio is what Alknet's endpoint setup costs per
//! packet; the absolute figures are the price of QUIC itself on this machine, both ends
//! counted.
//!
//! * `handshake_and_close`: a full handshake (Initial to HANDSHAKE_DONE, client key
//!   verified), then a close and the draining period on both sides;
//! * `request_64B`: one `perf` request on a new stream, 64 B up and 64 B back, with the ACKs
//!   this produces;
//! * `download_1MiB`: 1 MiB on one stream, GSO batches of up to 45 datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_core::config::Config;
use alknet_core::identity::tls::{NodeKey, ServerTrust};
use alknet_core::quic::{
    self as qp, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, StreamId,
};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALPN: &[u8] = b"perf";
const MAX_SEGMENTS: usize = 45;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// The shard's endpoint configuration.
    Alknet,
    /// quinn-proto's default endpoint configuration with the same TLS and transport.
    QuinnDefault,
}

struct Side {
    ep: Endpoint,
    conn: Option<(ConnectionHandle, qp::Connection)>,
    addr: SocketAddr,
}

/// Both endpoints, a virtual clock and the server's tiny perf application.
struct Pair {
    server: Side,
    client: Side,
    now: Instant,
    buf: Vec<u8>,
    resp: Vec<u8>,
    /// Server side: bytes wanted per open request stream (`None` until the header is in).
    requests: HashMap<StreamId, (Vec<u8>, bool)>,
    server_cfg: Arc<qp::ServerConfig>,
    client_cfg: qp::ClientConfig,
}

impl Pair {
    fn new(setup: Setup) -> Self {
        let config = Config::default();
        let node = NodeKey::generate();
        let codec = alknet_core::net::endpoint::cid_codec(&node, 0);
        let server_cfg = Arc::new(
            alknet_core::net::endpoint::server_config(&config, &node, vec![ALPN.to_vec()], true)
                .unwrap(),
        );
        let endpoint_cfg = match setup {
            Setup::Alknet => alknet_core::net::endpoint::endpoint_config(
                &node,
                &codec,
                0,
                config.transport.max_udp_payload,
            ),
            Setup::QuinnDefault => EndpointConfig::default(),
        };
        let server = Endpoint::new(Arc::new(endpoint_cfg), Some(server_cfg.clone()), true, None);
        let client_key = NodeKey::generate();
        let (client_cfg, _) = alknet_core::net::endpoint::client_config(
            &config,
            &client_key,
            ALPN,
            ServerTrust::Observe,
        )
        .unwrap();
        let client = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        Self {
            server: Side {
                ep: server,
                conn: None,
                addr: "127.0.0.1:4433".parse().unwrap(),
            },
            client: Side {
                ep: client,
                conn: None,
                addr: "127.0.0.1:50000".parse().unwrap(),
            },
            now: Instant::now(),
            buf: Vec::new(),
            resp: Vec::new(),
            requests: HashMap::new(),
            server_cfg,
            client_cfg,
        }
    }

    /// Connects and drives until both sides are established.
    fn handshake(&mut self) {
        let (h, c) = self
            .client
            .ep
            .connect(
                self.now,
                self.client_cfg.clone(),
                self.server.addr,
                "alknet",
            )
            .unwrap();
        self.client.conn = Some((h, c));
        self.server.conn = None;
        for _ in 0..32 {
            self.pump();
            let up = |s: &Side| s.conn.as_ref().is_some_and(|(_, c)| !c.is_handshaking());
            if up(&self.server) && up(&self.client) {
                return;
            }
            self.tick(Duration::from_millis(1));
        }
        panic!("handshake did not finish");
    }

    /// Closes both connections and lets the endpoints forget them.
    fn close(&mut self) {
        if let Some((_, c)) = self.client.conn.as_mut() {
            c.close(self.now, 0u32.into(), Bytes::new());
        }
        self.pump();
        // Past the draining period (3 PTOs) on both sides.
        for _ in 0..8 {
            self.tick(Duration::from_millis(100));
            self.pump();
        }
        self.client.conn = None;
        self.server.conn = None;
        self.requests.clear();
    }

    fn tick(&mut self, d: Duration) {
        self.now += d;
        for s in [&mut self.client, &mut self.server] {
            if let Some((_, c)) = s.conn.as_mut()
                && c.poll_timeout().is_some_and(|t| t <= self.now)
            {
                c.handle_timeout(self.now);
            }
        }
    }

    /// Moves datagrams both ways (and runs the server application) until nothing moves.
    fn pump(&mut self) {
        loop {
            let a = self.transfer(true);
            self.serve();
            let b = self.transfer(false);
            if a + b == 0 {
                return;
            }
        }
    }

    /// Sends what one side has queued to the other; returns the datagrams moved.
    fn transfer(&mut self, client_to_server: bool) -> usize {
        let (from, to) = if client_to_server {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        };
        let Some((fh, fc)) = from.conn.as_mut() else {
            return 0;
        };
        while let Some(ev) = fc.poll_endpoint_events() {
            if let Some(back) = from.ep.handle_event(*fh, ev) {
                fc.handle_event(back);
            }
        }
        let mut moved = 0;
        loop {
            self.buf.clear();
            let Some(t) = fc.poll_transmit(self.now, MAX_SEGMENTS, &mut self.buf) else {
                break;
            };
            let seg = t.segment_size.unwrap_or(t.size).max(1);
            for d in self.buf[..t.size].chunks(seg) {
                moved += 1;
                self.resp.clear();
                match to.ep.handle(
                    self.now,
                    from.addr,
                    None,
                    None,
                    BytesMut::from(d),
                    &mut self.resp,
                ) {
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        let (h, c) = to
                            .ep
                            .accept(
                                incoming,
                                self.now,
                                &mut self.resp,
                                Some(self.server_cfg.clone()),
                            )
                            .unwrap();
                        to.conn = Some((h, c));
                    }
                    Some(DatagramEvent::ConnectionEvent(h, e)) => {
                        if let Some((th, tc)) = to.conn.as_mut()
                            && *th == h
                        {
                            tc.handle_event(e);
                        }
                    }
                    Some(DatagramEvent::Response(_)) | None => {}
                }
            }
        }
        if let Some((th, tc)) = to.conn.as_mut() {
            while let Some(ev) = tc.poll_endpoint_events() {
                if let Some(back) = to.ep.handle_event(*th, ev) {
                    tc.handle_event(back);
                }
            }
        }
        moved
    }

    /// The server's perf application: read each request to its end, answer with the number
    /// of bytes its 8-byte header asks for.
    fn serve(&mut self) {
        let Some((_, c)) = self.server.conn.as_mut() else {
            return;
        };
        while c.poll().is_some() {}
        while let Some(id) = c.streams().accept(Dir::Bi) {
            self.requests.insert(id, (Vec::new(), false));
        }
        let mut answer = Vec::new();
        for (id, (head, fin)) in self.requests.iter_mut() {
            if *fin {
                continue;
            }
            let mut s = c.recv_stream(*id);
            let Ok(mut chunks) = s.read(true) else {
                continue;
            };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(ch)) => {
                        if head.len() < 8 {
                            let take = (8 - head.len()).min(ch.bytes.len());
                            head.extend_from_slice(&ch.bytes[..take]);
                        }
                    }
                    Ok(None) => {
                        *fin = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
            if *fin {
                let want = u64::from_be_bytes(head.as_slice().try_into().unwrap());
                answer.push((*id, want));
            }
        }
        static BODY: [u8; 64 * 1024] = [0; 64 * 1024];
        for (id, want) in answer {
            self.requests.remove(&id);
            let mut left = want as usize;
            let mut s = c.send_stream(id);
            while left > 0 {
                let n = left.min(BODY.len());
                s.write_chunks(&mut [Bytes::from_static(&BODY[..n])])
                    .unwrap();
                left -= n;
            }
            s.finish().unwrap();
        }
    }

    /// One perf request from the client; returns the response bytes received.
    fn request(&mut self, want: u64, body: &[u8]) -> u64 {
        let (_, c) = self.client.conn.as_mut().unwrap();
        let id = c.streams().open(Dir::Bi).unwrap();
        let mut msg = want.to_be_bytes().to_vec();
        msg.extend_from_slice(body);
        c.send_stream(id).write(&msg).unwrap();
        c.send_stream(id).finish().unwrap();
        let mut got = 0u64;
        for _ in 0..10_000 {
            self.pump();
            let (_, c) = self.client.conn.as_mut().unwrap();
            while c.poll().is_some() {}
            let mut s = c.recv_stream(id);
            let mut done = false;
            if let Ok(mut chunks) = s.read(true) {
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(ch)) => got += ch.bytes.len() as u64,
                        Ok(None) => {
                            done = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let _ = chunks.finalize();
            }
            if done {
                // Let the ACKs and stream credit settle as a live connection would.
                self.tick(Duration::from_micros(50));
                self.pump();
                return got;
            }
            self.tick(Duration::from_micros(200));
        }
        panic!("request did not finish");
    }
}

fn endpoint(c: &mut Criterion) {
    for (name, setup) in [
        ("alknet", Setup::Alknet),
        ("quinn_default", Setup::QuinnDefault),
    ] {
        let mut g = c.benchmark_group(format!("endpoint/{name}"));
        g.throughput(Throughput::Elements(1));
        g.sample_size(30);
        let mut pair = Pair::new(setup);
        g.bench_function("handshake_and_close", |b| {
            b.iter(|| {
                pair.handshake();
                pair.close();
            })
        });
        g.sample_size(50);
        let mut pair = Pair::new(setup);
        pair.handshake();
        g.bench_function("request_64B", |b| {
            b.iter(|| assert_eq!(pair.request(64, &[7; 64]), 64))
        });
        g.throughput(Throughput::Bytes(1 << 20));
        g.sample_size(20);
        g.bench_function("download_1MiB", |b| {
            b.iter(|| assert_eq!(pair.request(1 << 20, &[]), 1 << 20))
        });
        g.finish();
    }
}

criterion_group!(benches, endpoint);
criterion_main!(benches);

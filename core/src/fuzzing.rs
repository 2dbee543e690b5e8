//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests
//! (`tests/corpus.rs`): one `fuzz_<target>` per target, never a panic, an oracle asserted.
//! An oracle that needs a parser's private types lives beside the parser and is called from
//! here; this module is the crate's one public door for fuzzing.

use crate::config::Config;
use std::path::Path;

/// Arbitrary bytes as each kind of record the redb identity store keeps: a record that
/// decodes converts, re-encodes and decodes again to the same entry.
pub fn fuzz_store_record(data: &[u8]) {
    crate::identity::store::fuzz_records(data);
}

/// A peer encoded as the identity store keeps it, for seeding the `store_record` corpus with
/// a genuine record.
pub fn encode_peer_record(peer: &crate::PeerEntry) -> Vec<u8> {
    crate::identity::store::encode_peer_record(peer)
}

/// Parses arbitrary bytes as a configuration file: never a panic, and every error names a
/// line inside the text.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(c) => {
            assert!(c.worker_count() >= 1 && c.worker_count() <= 256);
        }
        Err(crate::config::ConfigError::Invalid { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {line}"
            );
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

/// Arbitrary bytes as the data directory's `node.key`: a key that parses writes back to a
/// file that parses to the same key, in one canonical form.
pub fn fuzz_node_key(data: &[u8]) {
    crate::identity::tls::fuzz_node_key(data);
}

/// Arbitrary bytes as the client's `known_servers` file and as its `servers` file (the
/// servers stored by name): lookups never panic, and an entry written after the bytes is the
/// one found.
pub fn fuzz_known_servers(data: &[u8]) {
    crate::client::fuzz_known_servers(data);
    crate::client::fuzz_servers(data);
}

/// A server and a client quinn-proto endpoint configured exactly as Alknet configures them,
/// connected in memory with a virtual clock: the harness behind [`fuzz_endpoint`].
pub struct EndpointPair {
    server: quinn_proto::Endpoint,
    client: quinn_proto::Endpoint,
    server_addr: std::net::SocketAddr,
    client_addr: std::net::SocketAddr,
    /// Virtual time.
    pub now: std::time::Instant,
    sconn: Option<(quinn_proto::ConnectionHandle, quinn_proto::Connection)>,
    cconn: (quinn_proto::ConnectionHandle, quinn_proto::Connection),
    /// Bytes the server read from client streams.
    pub received: Vec<u8>,
    streams: Vec<quinn_proto::StreamId>,
    dcid: Vec<u8>,
}

fn fixed_key(b: u8) -> crate::identity::tls::NodeKey {
    crate::identity::tls::NodeKey::from_seed(zeroize::Zeroizing::new([b; 32]))
}

/// The ALPN of the handshake (echo's; no service runs, only the endpoints).
const ECHO_ALPN: &[u8] = b"alknet/echo";

impl EndpointPair {
    /// Builds both endpoints and completes a handshake on ALPN `alknet/echo`.
    pub fn connected() -> Option<Self> {
        use std::sync::Arc;
        let config = crate::config::Config::default();
        let server_key = fixed_key(1);
        let codec = crate::net::endpoint::cid_codec(&server_key, 0);
        let server_cfg = crate::net::endpoint::server_config(
            &config,
            &server_key,
            vec![ECHO_ALPN.to_vec()],
            true,
        )
        .ok()?;
        let server = quinn_proto::Endpoint::new(
            Arc::new(crate::net::endpoint::endpoint_config(
                &server_key,
                &codec,
                0,
                crate::config::DEFAULT_MAX_UDP_PAYLOAD,
            )),
            Some(Arc::new(server_cfg)),
            true,
            Some([7; 32]),
        );
        let client_key = fixed_key(2);
        let (mut client_cfg, _) = crate::net::endpoint::client_config(
            &config,
            &client_key,
            ECHO_ALPN,
            crate::identity::tls::ServerTrust::Observe,
        )
        .ok()?;
        // The abusive client of these tests is not held back by its own congestion
        // controller: every packet it builds goes out at once.
        let mut transport = crate::net::endpoint::transport_config(&config);
        let mut cubic = quinn_proto::congestion::CubicConfig::default();
        cubic.initial_window(1 << 30);
        transport.congestion_controller_factory(Arc::new(cubic));
        client_cfg.transport_config(Arc::new(transport));
        let mut client = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            true,
            Some([8; 32]),
        );
        let now = std::time::Instant::now();
        let server_addr: std::net::SocketAddr = "127.0.0.1:4433".parse().ok()?;
        let client_addr: std::net::SocketAddr = "127.0.0.1:50000".parse().ok()?;
        let cconn = client
            .connect(now, client_cfg, server_addr, "alknet")
            .ok()?;
        let mut pair = Self {
            server,
            client,
            server_addr,
            client_addr,
            now,
            sconn: None,
            cconn,
            received: Vec::new(),
            streams: Vec::new(),
            dcid: Vec::new(),
        };
        for _ in 0..64 {
            pair.step();
            if pair
                .sconn
                .as_ref()
                .is_some_and(|(_, c)| !c.is_handshaking())
                && !pair.cconn.1.is_handshaking()
            {
                return Some(pair);
            }
        }
        None
    }

    /// Closes the server's connection (for tests of the harness itself).
    pub fn close_server(&mut self) {
        if let Some((_, c)) = self.sconn.as_mut() {
            c.close(
                self.now,
                quinn_proto::VarInt::from_u32(0),
                bytes::Bytes::new(),
            );
        }
    }

    /// Whether the server still holds a live connection.
    pub fn server_alive(&self) -> bool {
        self.sconn.as_ref().is_some_and(|(_, c)| !c.is_closed())
    }

    /// The connection ID the client last sent to (learned from its packets).
    pub fn server_cid(&self) -> &[u8] {
        &self.dcid
    }

    /// Feeds one datagram to the server as if from the client's address.
    pub fn inject(&mut self, data: &[u8]) {
        let mut buf = Vec::new();
        let ev = self.server.handle(
            self.now,
            self.client_addr,
            None,
            None,
            bytes::BytesMut::from(data),
            &mut buf,
        );
        self.on_server_event(ev);
    }

    fn on_server_event(&mut self, ev: Option<quinn_proto::DatagramEvent>) {
        match ev {
            Some(quinn_proto::DatagramEvent::NewConnection(incoming)) => {
                if self.sconn.is_none() {
                    let mut buf = Vec::new();
                    if let Ok(c) = self.server.accept(incoming, self.now, &mut buf, None) {
                        self.sconn = Some(c);
                    }
                } else {
                    self.server.ignore(incoming);
                }
            }
            Some(quinn_proto::DatagramEvent::ConnectionEvent(h, e)) => {
                if let Some((sh, c)) = self.sconn.as_mut()
                    && *sh == h
                {
                    c.handle_event(e);
                }
            }
            _ => {}
        }
    }

    /// Moves every pending datagram both ways once and advances time to the next timer.
    pub fn step(&mut self) {
        let mut buf = Vec::new();
        // Client -> server.
        let mut to_server = Vec::new();
        while let Some(t) = self.cconn.1.poll_transmit(self.now, 1, &mut buf) {
            let d = &buf[..t.size];
            let dcid = match d.first() {
                Some(b) if b & 0x80 == 0 => d.get(1..1 + alknet_proto::CID_LEN),
                Some(_) => d.get(5).and_then(|&l| d.get(6..6 + usize::from(l))),
                None => None,
            };
            if let Some(dcid) = dcid {
                self.dcid = dcid.to_vec();
            }
            to_server.push(d.to_vec());
            buf.clear();
        }
        for d in to_server {
            let mut rbuf = Vec::new();
            let ev = self.server.handle(
                self.now,
                self.client_addr,
                None,
                None,
                bytes::BytesMut::from(&d[..]),
                &mut rbuf,
            );
            self.on_server_event(ev);
        }
        // Server side housekeeping and server -> client.
        let mut to_client = Vec::new();
        if let Some((h, c)) = self.sconn.as_mut() {
            while let Some(e) = c.poll_endpoint_events() {
                if let Some(ce) = self.server.handle_event(*h, e) {
                    c.handle_event(ce);
                }
            }
            while c.poll().is_some() {}
            while let Some(id) = c.streams().accept(quinn_proto::Dir::Bi) {
                self.streams.push(id);
            }
            for &id in &self.streams {
                if let Ok(mut chunks) = c.recv_stream(id).read(true) {
                    while let Ok(Some(ch)) = chunks.next(usize::MAX) {
                        self.received.extend_from_slice(&ch.bytes);
                    }
                    let _ = chunks.finalize();
                }
            }
            while let Some(t) = c.poll_transmit(self.now, 1, &mut buf) {
                to_client.push(buf[..t.size].to_vec());
                buf.clear();
            }
        }
        for d in to_client {
            let mut rbuf = Vec::new();
            if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, e)) = self.client.handle(
                self.now,
                self.server_addr,
                None,
                None,
                bytes::BytesMut::from(&d[..]),
                &mut rbuf,
            ) {
                self.cconn.1.handle_event(e);
            }
        }
        let (ch, cc) = &mut self.cconn;
        while let Some(e) = cc.poll_endpoint_events() {
            if let Some(ce) = self.client.handle_event(*ch, e) {
                cc.handle_event(ce);
            }
        }
        while cc.poll().is_some() {}
        // Virtual clock: jump a little, firing due timers on both sides.
        self.now += std::time::Duration::from_millis(5);
        cc.handle_timeout(self.now);
        if let Some((_, c)) = self.sconn.as_mut() {
            c.handle_timeout(self.now);
        }
    }

    /// The abusive peer of the reassembly tests: writes `n` bytes on a new stream one byte
    /// per packet, then delivers the packets to the server in reverse order (the first one
    /// last), so the server holds up to `n - 1` one-byte out-of-order fragments. Returns the
    /// bytes the server then read in order, or `None` if the server closed the connection.
    pub fn reversed_one_byte_fragments(&mut self, n: usize) -> Option<(usize, Vec<u8>)> {
        let c = &mut self.cconn.1;
        let id = c.streams().open(quinn_proto::Dir::Bi)?;
        let mut packets = Vec::with_capacity(n);
        let mut buf = Vec::new();
        for i in 0..n {
            c.send_stream(id).write(&[i as u8]).ok()?;
            buf.clear();
            while let Some(t) = c.poll_transmit(self.now, 1, &mut buf) {
                packets.push(buf[..t.size].to_vec());
                buf.clear();
            }
        }
        let before = self.received.len();
        for p in packets.iter().rev() {
            self.inject(p);
            if let Some((h, sc)) = self.sconn.as_mut() {
                while let Some(e) = sc.poll_endpoint_events() {
                    if let Some(ce) = self.server.handle_event(*h, e) {
                        sc.handle_event(ce);
                    }
                }
            }
        }
        for _ in 0..64 {
            self.step();
            if self.received.len() >= before + n || !self.server_alive() {
                break;
            }
        }
        if !self.server_alive() {
            return None;
        }
        Some((
            packets.len(),
            self.received.get(before..).unwrap_or_default().to_vec(),
        ))
    }

    /// Sends `data` on a client stream and drives until the server has read it (bounded).
    pub fn client_sends(&mut self, data: &[u8]) -> bool {
        let before = self.received.len();
        let c = &mut self.cconn.1;
        let Some(id) = c.streams().open(quinn_proto::Dir::Bi) else {
            return false;
        };
        if c.send_stream(id).write(data).is_err() {
            return false;
        }
        for _ in 0..32 {
            self.step();
            if self.received.len() >= before + data.len() {
                return true;
            }
        }
        false
    }
}

/// Feeds arbitrary datagrams to a server endpoint holding a live, authenticated connection,
/// then checks that the connection still carries a legitimate stream: hostile datagrams
/// must never take a live connection down.
///
/// Input: records of `[kind: u8][len: u8][bytes]`; kind 0 sends the bytes as they are,
/// kind 1 puts them behind a short header with the connection's real CID, kind 2 behind a
/// long header (Initial, version 1) with that CID, kind 3 lets the clock run.
pub fn fuzz_endpoint(data: &[u8]) {
    let Some(mut pair) = EndpointPair::connected() else {
        panic!("in-memory handshake failed");
    };
    let cid = pair.server_cid().to_vec();
    let mut rest = data;
    let mut records = 0;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        records += 1;
        if records > 64 {
            break;
        }
        let mut dgram = Vec::with_capacity(1300);
        match kind % 4 {
            0 => dgram.extend_from_slice(body),
            1 => {
                dgram.push(0x40 | (body.first().copied().unwrap_or(0) & 0x3f));
                dgram.extend_from_slice(&cid);
                dgram.extend_from_slice(body);
            }
            2 => {
                dgram.extend_from_slice(&[0xc0, 0, 0, 0, 1]);
                dgram.push(cid.len() as u8);
                dgram.extend_from_slice(&cid);
                dgram.push(0);
                dgram.extend_from_slice(body);
                dgram.resize(dgram.len().max(1200), 0);
            }
            _ => {
                pair.now += std::time::Duration::from_millis(u64::from(*len));
                pair.step();
                continue;
            }
        }
        pair.inject(&dgram);
    }
    pair.step();
    assert!(
        pair.server_alive(),
        "hostile datagrams closed a live connection"
    );
    assert!(
        pair.client_sends(b"still here"),
        "live connection stopped carrying data"
    );
}

/// Arbitrary bytes as a control-socket client sends them, fed to the request line buffer in
/// uneven pieces: lines stay within the request limit, the buffer within its cap, errors
/// short, and every parsed request encodes and parses back to itself.
pub fn fuzz_control_request(data: &[u8]) {
    crate::ops::control::fuzz_client_bytes(data);
}

/// Arbitrary bytes as what a client sends the metrics endpoint: the request parser never
/// panics, agrees with itself on every prefix, and answers well-formed HTTP.
pub fn fuzz_metrics_request(data: &[u8]) {
    crate::ops::metrics::fuzz_request(data);
}

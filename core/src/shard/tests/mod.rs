//! A deterministic harness for [`ShardState`], after quinn-proto's `tests/util.rs`: one or
//! more server shard states and a raw `quinn_proto::Endpoint` client in memory, joined by
//! queues with a latency knob, under a virtual clock that jumps to the earliest wake-up.
//! Real TLS on both sides (the server's configuration from `net::endpoint`, client keys
//! checked against a `MemoryIdentities`). No socket, no runtime, no sleep.
//!
//! * [`Pair::drive`] runs until nothing is in flight and no wake-up is due within
//!   [`SETTLE`] (so short timers, ACK delay and loss detection, fire; the idle timeout and
//!   the drain period do not), and fails after [`MAX_STEPS`] steps instead of hanging;
//!   [`Pair::drive_bounded`] reports whether it settled within a given number of steps.
//! * [`Pair::run_for`] lets virtual time pass, firing every wake-up on the way.
//! * Knobs: `latency` (one way), `ingress` (the shard the kernel hands client datagrams
//!   to), `client_budget` (client datagrams let through before the client falls silent).

mod admission;
mod forward;
mod scenarios;

use crate::config::Config;
use crate::identity::tls::{NodeKey, ServerTrust};
use crate::identity::{AuthContext, MemoryIdentities, PeerEntry};
use crate::net::udp::SegmentLimit;
use crate::ops::stats::{ShardStats, StatsSnapshot};
use crate::service::{
    Handler, NoConfig, NodeFacts, Registry, Service, ServiceContext, ServiceInfo, ShardSetup,
};
use crate::shard::state::{Role, ServerRole, ShardConfig, ShardEvent, ShardState, WallClock};
use crate::shard::{AuthFailure, ForwardBudget, ShardMsg};
use crate::{Connection, ConnectionError};
use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The ALPN of the harness's service.
pub(super) const ALPN: &[u8] = b"alknet/test";
/// How far [`Pair::drive`] lets virtual time run to fire short timers.
pub(super) const SETTLE: Duration = Duration::from_secs(2);
/// Steps after which [`Pair::drive`] declares a livelock.
pub(super) const MAX_STEPS: usize = 20_000;
/// GSO segments per server transmit (split again by the harness).
const SEGMENTS: usize = 10;

/// A service that records nothing and is never run: the harness reads `Serve` events.
struct TestService {
    scopes: &'static [&'static str],
    anonymous: bool,
}

impl Service for TestService {
    const NAME: &'static str = "test";
    type Config = NoConfig;
    type Handler = TestService;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: self.scopes,
            anonymous: self.anonymous,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> TestService {
        TestService {
            scopes: self.scopes,
            anonymous: self.anonymous,
        }
    }
}

impl Handler for TestService {
    async fn handle(self: Rc<Self>, _conn: Connection, _auth: AuthContext) {}
}

/// How a [`Pair`] is built.
pub(super) struct Setup {
    /// Server shards.
    pub(super) shards: usize,
    /// Known peers.
    pub(super) peers: Vec<PeerEntry>,
    /// The service's scope.
    pub(super) scopes: &'static [&'static str],
    /// Whether the service serves strangers.
    pub(super) anonymous: bool,
    /// Limits and periods.
    pub(super) config: Config,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            shards: 1,
            peers: Vec::new(),
            scopes: &[],
            anonymous: false,
            config: Config::default(),
        }
    }
}

/// A peer entry for `key` with `scopes`.
pub(super) fn peer(id: &str, key: &NodeKey, scopes: &[&str]) -> PeerEntry {
    PeerEntry {
        peer_id: id.into(),
        fingerprints: vec![key.fingerprint()],
        auth_token_hash: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        resources: Vec::new(),
        display_name: None,
        ssh_keys: Vec::new(),
        enabled: true,
    }
}

/// One client connection and what it reported.
pub(super) struct ClientConn {
    pub(super) conn: quinn_proto::Connection,
    pub(super) events: Vec<Event>,
}

/// Server shard states and a quinn-proto client, in memory.
pub(super) struct Pair {
    pub(super) shards: Vec<ShardState>,
    /// Every server event, with its shard.
    pub(super) events: Vec<(usize, ShardEvent)>,
    pub(super) client: Endpoint,
    pub(super) conns: HashMap<ConnectionHandle, ClientConn>,
    pub(super) config: Arc<Config>,
    pub(super) node: NodeKey,
    pub(super) epoch: Instant,
    pub(super) time: Instant,
    /// One-way delay of every datagram.
    pub(super) latency: Duration,
    /// The shard client datagrams arrive at (the kernel's reuseport choice).
    pub(super) ingress: usize,
    /// Client datagrams still delivered; `None`: all.
    pub(super) client_budget: Option<usize>,
    /// Datagrams handed from one shard to another.
    pub(super) forwarded: usize,
    /// The admission tables the shards share.
    pub(super) admission: Arc<crate::shard::sources::SharedAdmission>,
    /// The non-empty tokens of the client Initials delivered so far, in order.
    pub(super) tokens_seen: Vec<Bytes>,
    /// The shards' inbox byte budgets.
    pub(super) forward_budget: ForwardBudget,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    to_server: VecDeque<(Instant, Bytes)>,
    to_client: VecDeque<(Instant, Bytes)>,
    inboxes: Vec<VecDeque<ShardMsg>>,
    buf: Vec<u8>,
}

impl Pair {
    /// Builds the server shards of `setup` and an idle client.
    pub(super) fn new(setup: Setup) -> Self {
        let config = Arc::new(setup.config);
        let node = NodeKey::generate();
        let mut registry = Registry::new();
        let (scopes, anonymous) = (setup.scopes, setup.anonymous);
        registry
            .register(TestService { scopes, anonymous }, NoConfig::default())
            .unwrap();
        let server_config = Arc::new(
            crate::net::endpoint::server_config(&config, &node, registry.alpns(), !anonymous)
                .unwrap(),
        );
        let codec = crate::net::endpoint::cid_codec(&node, 0);
        let identities = Arc::new(MemoryIdentities::with_peers(setup.peers));
        let epoch = Instant::now();
        let admission = Arc::new(crate::shard::sources::SharedAdmission::new(
            epoch,
            config.admission.failures_before_penalty,
        ));
        let node_facts = Arc::new(NodeFacts::new(
            node.fingerprint(),
            registry.alpns(),
            Vec::new(),
            None,
        ));
        let forward_budget = ForwardBudget::new(setup.shards, config.udp.recv_buffer);
        let shards = (0..setup.shards)
            .map(|i| {
                let ep_cfg = crate::net::endpoint::endpoint_config(
                    &node,
                    &codec,
                    i as u8,
                    crate::config::DEFAULT_MAX_UDP_PAYLOAD,
                );
                let endpoint =
                    Endpoint::new(Arc::new(ep_cfg), Some(server_config.clone()), true, None);
                ShardState::new(ShardConfig {
                    id: i,
                    shards: setup.shards,
                    endpoint,
                    codec: codec.clone(),
                    config: config.clone(),
                    stats: Arc::new(ShardStats::default()),
                    segments: SegmentLimit::new(SEGMENTS),
                    wall: WallClock {
                        at: epoch,
                        unix: 1_800_000_000,
                    },
                    forward_budget: forward_budget.clone(),
                    role: Role::Server(Box::new(ServerRole {
                        server_config: server_config.clone(),
                        router: registry.instantiate(&ShardSetup::new(
                            i,
                            identities.clone(),
                            node_facts.clone(),
                            Arc::default(),
                        )),
                        identities: identities.clone(),
                        admission: Arc::clone(&admission),
                        board: Arc::default(),
                    })),
                })
            })
            .collect();
        Self {
            shards,
            events: Vec::new(),
            client: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
            conns: HashMap::new(),
            config,
            node,
            epoch,
            time: epoch,
            latency: Duration::from_millis(5),
            ingress: 0,
            client_budget: None,
            forwarded: 0,
            admission,
            tokens_seen: Vec::new(),
            forward_budget,
            server_addr: "[::1]:4433".parse().unwrap(),
            client_addr: "[::1]:50000".parse().unwrap(),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            inboxes: (0..setup.shards).map(|_| VecDeque::new()).collect(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Starts a client connection with `key` (the server pinned); nothing is sent until
    /// the pair is driven.
    pub(super) fn begin_connect(&mut self, key: &NodeKey) -> ConnectionHandle {
        let (cc, _seen) = crate::net::endpoint::client_config(
            &self.config,
            key,
            ALPN,
            ServerTrust::Pinned(self.node.fingerprint()),
        )
        .unwrap();
        self.begin_connect_with(cc)
    }

    /// Starts a client connection with any client configuration.
    pub(super) fn begin_connect_with(&mut self, cc: quinn_proto::ClientConfig) -> ConnectionHandle {
        let (ch, conn) = self
            .client
            .connect(self.time, cc, self.server_addr, "alknet")
            .unwrap();
        self.conns.insert(
            ch,
            ClientConn {
                conn,
                events: Vec::new(),
            },
        );
        ch
    }

    /// Connects with `key` and drives until settled.
    pub(super) fn connect(&mut self, key: &NodeKey) -> ConnectionHandle {
        let ch = self.begin_connect(key);
        self.drive();
        ch
    }

    /// Runs until settled (see the module doc); a livelock fails the test.
    pub(super) fn drive(&mut self) {
        assert!(
            self.drive_bounded(MAX_STEPS),
            "not settled after {MAX_STEPS} steps: livelock"
        );
    }

    /// Runs at most `steps` steps; true when it settled within them.
    pub(super) fn drive_bounded(&mut self, steps: usize) -> bool {
        let limit = self.time + SETTLE;
        for _ in 0..steps {
            if !self.step(limit) {
                return true;
            }
        }
        false
    }

    /// Lets `d` of virtual time pass, firing every wake-up on the way.
    pub(super) fn run_for(&mut self, d: Duration) {
        let limit = self.time + d;
        let mut steps = 0;
        while self.step(limit) {
            steps += 1;
            assert!(steps < MAX_STEPS, "livelock while running for {d:?}");
        }
        self.time = self.time.max(limit);
        self.fire_due();
    }

    /// Hands a message to a shard, as its inbox would.
    pub(super) fn send(&mut self, shard: usize, msg: ShardMsg) {
        self.shards[shard].handle_message(self.time, msg);
    }

    /// Does the work due at the current time; when there is none, moves the clock to the
    /// earliest wake-up at or before `limit`. False when nothing is left to do by `limit`.
    fn step(&mut self, limit: Instant) -> bool {
        if self.work() {
            return true;
        }
        let next = self.next_wakeup();
        match next {
            Some(t) if t <= limit => {
                self.time = self.time.max(t);
                tracing::trace!(at = ?(self.time - self.epoch), "advancing the clock");
                self.fire_due();
                true
            }
            _ => false,
        }
    }

    /// One round at the current time; true when anything happened.
    fn work(&mut self) -> bool {
        let now = self.time;
        let mut progress = false;
        // Servers: output, forwards, events.
        for (i, shard) in self.shards.iter_mut().enumerate() {
            while let Some(t) = shard.poll_transmit(now, &mut self.buf) {
                progress = true;
                assert_eq!(t.destination, self.client_addr);
                let data = &self.buf[..t.size];
                let seg = t.segment_size.unwrap_or(t.size).max(1);
                for d in data.chunks(seg) {
                    self.to_client
                        .push_back((now + self.latency, Bytes::copy_from_slice(d)));
                }
            }
            while let Some((owner, batch)) = shard.poll_forward() {
                progress = true;
                self.forwarded += batch.len();
                self.inboxes[owner].push_back(ShardMsg::Datagrams(batch));
            }
            while let Some(ev) = shard.poll_event() {
                progress = true;
                self.events.push((i, ev));
            }
        }
        for (i, inbox) in self.inboxes.iter_mut().enumerate() {
            while let Some(m) = inbox.pop_front() {
                progress = true;
                self.shards[i].handle_message(now, m);
            }
        }
        // Client: events and output.
        for (&ch, c) in self.conns.iter_mut() {
            loop {
                let mut more = false;
                while let Some(ev) = c.conn.poll_endpoint_events() {
                    more = true;
                    if let Some(cev) = self.client.handle_event(ch, ev) {
                        c.conn.handle_event(cev);
                    }
                }
                while let Some(ev) = c.conn.poll() {
                    more = true;
                    c.events.push(ev);
                }
                self.buf.clear();
                while let Some(t) = c.conn.poll_transmit(now, 1, &mut self.buf) {
                    more = true;
                    let pass = match &mut self.client_budget {
                        None => true,
                        Some(0) => false,
                        Some(n) => {
                            *n -= 1;
                            true
                        }
                    };
                    if pass {
                        self.to_server.push_back((
                            now + self.latency,
                            Bytes::copy_from_slice(&self.buf[..t.size]),
                        ));
                    }
                    self.buf.clear();
                }
                if !more {
                    break;
                }
                progress = true;
            }
        }
        // Deliveries due now.
        while self.to_server.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, d)) = self.to_server.pop_front() else {
                break;
            };
            progress = true;
            if let Some(t) = initial_token(&d) {
                self.tokens_seen.push(t);
            }
            self.shards[self.ingress].handle_datagram(
                now,
                self.client_addr,
                None,
                None,
                BytesMut::from(&d[..]),
            );
        }
        while self.to_client.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, d)) = self.to_client.pop_front() else {
                break;
            };
            progress = true;
            self.buf.clear();
            match self.client.handle(
                now,
                self.server_addr,
                None,
                None,
                BytesMut::from(&d[..]),
                &mut self.buf,
            ) {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    if let Some(c) = self.conns.get_mut(&ch) {
                        c.conn.handle_event(ev);
                    }
                }
                Some(DatagramEvent::Response(t)) => {
                    self.to_server.push_back((
                        now + self.latency,
                        Bytes::copy_from_slice(&self.buf[..t.size]),
                    ));
                }
                Some(DatagramEvent::NewConnection(incoming)) => self.client.ignore(incoming),
                None => {}
            }
        }
        progress
    }

    fn next_wakeup(&mut self) -> Option<Instant> {
        let servers = self.shards.iter_mut().filter_map(|s| s.poll_timeout());
        let clients = self
            .conns
            .values_mut()
            .filter_map(|c| c.conn.poll_timeout());
        let queued = [
            self.to_server.front().map(|(t, _)| *t),
            self.to_client.front().map(|(t, _)| *t),
        ];
        servers
            .chain(clients)
            .chain(queued.into_iter().flatten())
            .min()
    }

    fn fire_due(&mut self) {
        let now = self.time;
        for s in &mut self.shards {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        for c in self.conns.values_mut() {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
        }
    }

    // ----- reading the outcome -------------------------------------------------------------

    /// Why a client connection ended, if it has.
    pub(super) fn client_lost(&self, ch: ConnectionHandle) -> Option<ConnectionError> {
        self.conns[&ch].events.iter().find_map(|e| match e {
            Event::ConnectionLost { reason } => Some(reason.clone()),
            _ => None,
        })
    }

    /// Whether a client connection finished its handshake.
    pub(super) fn client_connected(&self, ch: ConnectionHandle) -> bool {
        self.conns[&ch]
            .events
            .iter()
            .any(|e| matches!(e, Event::Connected))
    }

    /// The application close code and reason a client connection ended with.
    pub(super) fn client_close(&self, ch: ConnectionHandle) -> Option<(u64, String)> {
        match self.client_lost(ch)? {
            ConnectionError::ApplicationClosed(c) => Some((
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            )),
            _ => None,
        }
    }

    /// The connections handed to the service: shard, connection, auth.
    pub(super) fn served(&self) -> Vec<(usize, Connection, AuthContext)> {
        self.events
            .iter()
            .filter_map(|(i, e)| match e {
                ShardEvent::Serve { conn, auth, .. } => {
                    Some((*i, crate::shard::state::connection(conn), auth.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The refusals, in order.
    pub(super) fn refused(&self) -> Vec<AuthFailure> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                ShardEvent::Refused { remote, failure } => {
                    assert_eq!(*remote, self.client_addr);
                    Some(failure.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The connections gone from the server: peer and reason.
    pub(super) fn closed(&self) -> Vec<(Option<String>, ConnectionError)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                ShardEvent::Closed {
                    remote,
                    peer,
                    reason,
                } => {
                    assert_eq!(*remote, self.client_addr);
                    Some((peer.clone(), reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The client's source address.
    pub(super) fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The counters of every shard, summed.
    pub(super) fn total(&self) -> StatsSnapshot {
        let mut t = StatsSnapshot::default();
        for s in &self.shards {
            t.add(&s.stats().snapshot());
        }
        t
    }

    /// The counters of one shard.
    pub(super) fn stats(&self, shard: usize) -> StatsSnapshot {
        self.shards[shard].stats().snapshot()
    }
}

/// The token of a QUIC Initial packet (RFC 9000 §17.2.2), when it has a non-empty one.
fn initial_token(d: &[u8]) -> Option<Bytes> {
    let first = *d.first()?;
    // Long header, Initial type.
    if first & 0x80 == 0 || (first >> 4) & 0x03 != 0 {
        return None;
    }
    let dcid_len = usize::from(*d.get(5)?);
    let mut i = 6 + dcid_len;
    let scid_len = usize::from(*d.get(i)?);
    i += 1 + scid_len;
    let b = *d.get(i)?;
    let len_len = 1usize << (b >> 6);
    let mut len = u64::from(b & 0x3f);
    for k in 1..len_len {
        len = (len << 8) | u64::from(*d.get(i + k)?);
    }
    i += len_len;
    let len = usize::try_from(len).ok()?;
    let t = d.get(i..i + len)?;
    (!t.is_empty()).then(|| Bytes::copy_from_slice(t))
}

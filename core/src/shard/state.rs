//! The shard as a sans-IO state machine: one `quinn_proto::Endpoint`, its connections, its
//! timers, the forwarding queues to other shards, and the decisions (admission,
//! authorisation) taken for them.
//!
//! It is driven by the verbs quinn-proto uses: feed input with
//! [`ShardState::handle_datagram`] (a datagram from the socket) and
//! [`ShardState::handle_message`] (from another shard or the control plane), fire timers with
//! [`ShardState::handle_timeout`], then drain output: [`ShardState::poll_transmit`] (pull:
//! one transmit per call; the caller sends it, and simply stops calling while its socket is
//! full), [`ShardState::poll_forward`], [`ShardState::poll_event`], and
//! [`ShardState::poll_timeout`] for the next wake-up. Every call takes `now`; nothing here
//! reads a clock, touches a socket or spawns a task. The monoio driver (`driver.rs`) and the
//! test harness (`tests/`) are its two callers.
//!
//! Connections touched by input (and by handlers, through their cell's dirty flag) are
//! queued; `poll_transmit` drives them one after another: feed their endpoint events back to
//! the endpoint, turn their application events into task wake-ups, authorise a finished
//! handshake, then produce their packets (GSO batches). So a whole receive batch is read
//! before any connection is driven, and ACKs and responses share packets.

use crate::config::Config;
use crate::conn::{ConnCell, ConnInner, ConnRef, Connection, DriverSignal};
use crate::identity::{AuthContext, Identity, IdentityProvider};
use crate::net::udp::SegmentLimit;
use crate::ops::stats::{self, ShardStats};
use crate::service::{Router, close_code};
use crate::shard::admit::{Admission, IncomingFacts, Load, admit};
use crate::shard::auth::{AuthFailure, ServiceRule, authorize};
use crate::shard::sources::{Held, SharedAdmission};
use crate::shard::timers::TimerHeap;
use crate::shard::{
    ForwardBatch, ForwardBudget, Forwarded, Service, SessionBoard, SessionInfo, ShardMsg,
};
use alknet_proto::cid::{Handover, screen_handover};
use alknet_proto::{CidCodec, Route, route_datagram};
use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, Event, Incoming,
    StreamEvent, Transmit, VarInt,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Datagrams forwarded per message before the batch is handed out.
const FORWARD_BATCH: usize = 64;
/// Stateless answers (Retry, refusals, resets) queued before [`ShardState::wants_flush`]
/// asks the driver to send them, and the most kept: they are best effort, and a flood of
/// Initials must not grow the queue.
const RESPONSE_FLUSH: usize = 32;
const RESPONSE_CAP: usize = 256;
/// Closing takes three PTOs at most; a draining shard never lingers longer than this after
/// its drain period.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What a shard is for.
pub(crate) enum Role {
    /// Accepts connections and serves them.
    Server(Box<ServerRole>),
    /// Only makes connections (`alknet connect`, node-to-node clients): every attempt to
    /// connect to it is ignored, and finished handshakes are handed to whoever connected.
    Client,
}

/// What a serving shard needs besides its endpoint.
pub(crate) struct ServerRole {
    /// TLS and transport settings for accepted connections.
    pub(crate) server_config: Arc<quinn_proto::ServerConfig>,
    /// This shard's services.
    pub(crate) router: Router,
    /// Peers by key.
    pub(crate) identities: Arc<dyn IdentityProvider>,
    /// Per-source and per-peer counts and penalties, shared by all shards.
    pub(crate) admission: Arc<SharedAdmission>,
    /// This shard's authenticated connections, for `alknet sessions`.
    pub(crate) board: SessionBoard,
}

/// A reading of the wall clock taken by the driver, so the state can turn its monotonic
/// `now` into Unix seconds (for the session board) without reading a clock itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WallClock {
    /// The monotonic time of the reading.
    pub(crate) at: Instant,
    /// Unix seconds at that time.
    pub(crate) unix: u64,
}

impl WallClock {
    /// Unix seconds at `now`.
    pub(crate) fn unix_at(&self, now: Instant) -> u64 {
        self.unix
            .saturating_add(now.saturating_duration_since(self.at).as_secs())
    }
}

/// Everything a shard is built from.
pub(crate) struct ShardConfig {
    /// This shard's index.
    pub(crate) id: usize,
    /// Shards in the process.
    pub(crate) shards: usize,
    /// The endpoint (with this shard's CID generator).
    pub(crate) endpoint: Endpoint,
    /// The CID layout shared by all shards.
    pub(crate) codec: CidCodec,
    /// Limits and periods.
    pub(crate) config: Arc<Config>,
    /// This shard's counters.
    pub(crate) stats: Arc<ShardStats>,
    /// How many datagrams one transmit may carry (GSO).
    pub(crate) segments: SegmentLimit,
    /// The wall clock at start.
    pub(crate) wall: WallClock,
    /// The inbox byte budgets of every shard, shared by all of them.
    pub(crate) forward_budget: ForwardBudget,
    /// Server or client.
    pub(crate) role: Role,
}

/// What happened, for the driver (or a test) to act on. The driver acts on `Serve` only;
/// the others are for tests and future metrics.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "Refused and Closed are read by the deterministic tests"
    )
)]
pub(crate) enum ShardEvent {
    /// An authenticated (or anonymous-allowed) connection is ready for its service: start
    /// the handler task.
    Serve {
        /// The connection.
        conn: ConnRef,
        /// Who is on the other end.
        auth: AuthContext,
        /// The service chosen by the ALPN.
        service: Service,
    },
    /// A finished handshake was refused; the connection is closing with the failure's code.
    Refused {
        /// The client's address.
        remote: SocketAddr,
        /// Why.
        failure: AuthFailure,
    },
    /// A connection is gone from the shard.
    Closed {
        /// The client's address.
        remote: SocketAddr,
        /// The authenticated peer, if any.
        peer: Option<String>,
        /// Why it ended.
        reason: ConnectionError,
    },
}

/// Why a client connection could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectFailed(pub(crate) quinn_proto::ConnectError);

/// One shard's state. See the module doc for the verbs.
pub(crate) struct ShardState {
    id: usize,
    shards: usize,
    codec: CidCodec,
    config: Arc<Config>,
    stats: Arc<ShardStats>,
    segments: SegmentLimit,
    wall: WallClock,
    role: Role,
    endpoint: Endpoint,
    /// Shared with every connection cell: handlers queue their connection on it.
    signal: Rc<DriverSignal>,
    conns: Vec<Option<ConnRef>>,
    timers: TimerHeap,
    handshaking: usize,
    live: usize,
    /// What each accepted connection holds in the shared admission tables, by slot: given
    /// back when the handshake ends and when the connection goes.
    held: Vec<ConnHeld>,
    /// Where the endpoint writes stateless answers.
    resp_buf: Vec<u8>,
    responses: VecDeque<(Transmit, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    forward: Vec<Vec<Forwarded>>,
    forward_ready: VecDeque<(usize, ForwardBatch)>,
    forward_budget: ForwardBudget,
    events: VecDeque<ShardEvent>,
    /// Connections being driven this round (taken from the signal's queue), and the next.
    work: Vec<ConnRef>,
    work_pos: usize,
    /// The connection whose packets `poll_transmit` is producing, and whether it drained.
    current: Option<ConnRef>,
    current_drained: bool,
    next_session: u64,
    pressure: bool,
    accepted: bool,
    shutting_down: bool,
    drain_deadline: Option<Instant>,
    hard_exit: Option<Instant>,
    out_of_time: bool,
}

impl ShardState {
    /// A shard with no connections.
    pub(crate) fn new(cfg: ShardConfig) -> Self {
        Self {
            id: cfg.id,
            shards: cfg.shards,
            codec: cfg.codec,
            config: cfg.config,
            stats: cfg.stats,
            segments: cfg.segments,
            wall: cfg.wall,
            role: cfg.role,
            endpoint: cfg.endpoint,
            signal: Rc::new(DriverSignal::default()),
            conns: Vec::new(),
            timers: TimerHeap::new(),
            handshaking: 0,
            live: 0,
            held: Vec::new(),
            resp_buf: Vec::with_capacity(2048),
            responses: VecDeque::new(),
            spare: Vec::new(),
            forward: (0..cfg.shards).map(|_| Vec::new()).collect(),
            forward_ready: VecDeque::new(),
            forward_budget: cfg.forward_budget,
            events: VecDeque::new(),
            work: Vec::new(),
            work_pos: 0,
            current: None,
            current_drained: false,
            next_session: 0,
            pressure: false,
            accepted: false,
            shutting_down: false,
            drain_deadline: None,
            hard_exit: None,
            out_of_time: false,
        }
    }

    /// This shard's index.
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// The signal handlers use to queue their connection; the driver waits on it.
    pub(crate) fn signal(&self) -> &Rc<DriverSignal> {
        &self.signal
    }

    /// This shard's counters.
    pub(crate) fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// Connections held.
    pub(crate) fn connection_count(&self) -> usize {
        self.live
    }

    /// Handshakes in flight.
    #[cfg(test)]
    pub(crate) fn handshake_count(&self) -> usize {
        self.handshaking
    }

    /// True once a draining shard holds no connection (or its grace ran out): the driver
    /// may exit.
    pub(crate) fn is_finished(&self) -> bool {
        self.out_of_time || (self.shutting_down && self.live == 0)
    }

    /// True when output should be sent now rather than after the rest of the batch: a
    /// connection was accepted (its first flight costs the client a round trip per
    /// Initial that waits behind it), or stateless answers are piling up.
    pub(crate) fn wants_flush(&self) -> bool {
        self.accepted || self.responses.len() >= RESPONSE_FLUSH
    }

    // ----- input -------------------------------------------------------------------------

    /// A datagram from the socket: forwarded to the shard owning its connection, or fed to
    /// this shard's endpoint.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
    ) {
        stats::bump(&self.stats.datagrams_in);
        stats::add(&self.stats.bytes_in, data.len() as u64);
        match route_datagram(&self.codec, &data, self.id, self.shards) {
            Route::Drop => stats::bump(&self.stats.dropped_malformed),
            Route::Forward(owner) => {
                match screen_handover(&data, quinn_proto::DEFAULT_SUPPORTED_VERSIONS) {
                    Handover::Forward => {}
                    Handover::AnswerHere => {
                        // Version negotiation is stateless: any shard answers it.
                        self.handle_local(now, remote, local_ip, ecn, data);
                        return;
                    }
                    Handover::Drop => {
                        stats::bump(&self.stats.dropped_unforwardable);
                        return;
                    }
                }
                if let Some(q) = self.forward.get_mut(owner) {
                    q.push(Forwarded {
                        remote,
                        local_ip,
                        ecn,
                        data: data.freeze(),
                    });
                    if q.len() >= FORWARD_BATCH {
                        let batch = std::mem::take(q);
                        self.seal_forward(owner, batch);
                    }
                }
            }
            Route::Local => self.handle_local(now, remote, local_ip, ecn, data),
        }
    }

    /// A message from another shard or the control plane.
    pub(crate) fn handle_message(&mut self, now: Instant, msg: ShardMsg) {
        match msg {
            ShardMsg::Datagrams(mut batch) => {
                stats::add(&self.stats.forwarded_in, batch.len() as u64);
                for d in batch.take() {
                    // The sender's copy is unique: the endpoint takes it without another.
                    let data = d
                        .data
                        .try_into_mut()
                        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                    self.handle_local(now, d.remote, d.local_ip, d.ecn, data);
                }
                // Dropping the batch gives its bytes back to this shard's inbox budget.
            }
            ShardMsg::Shutdown => {
                if !std::mem::replace(&mut self.shutting_down, true) {
                    info!(shard = self.id, connections = self.live, "draining");
                    let drain = now + self.config.drain_period.0;
                    self.drain_deadline = Some(drain);
                    self.hard_exit = Some(drain + CLOSE_GRACE);
                    if let Role::Server(server) = &self.role {
                        server.router.drain();
                    }
                }
            }
            ShardMsg::ClosePeer(peer) => {
                for c in self.conns.iter().flatten() {
                    if c.inner.borrow().peer.as_deref() == Some(peer.as_str()) {
                        close_at(c, now, close_code::REVOKED, b"revoked");
                    }
                }
            }
            ShardMsg::MemoryPressure(over) => self.set_pressure(over),
            ShardMsg::Recheck(peer) => self.recheck_peer(now, &peer),
            ShardMsg::Reload(update) => self.reload(now, &update),
        }
    }

    /// Takes the reloaded limits and service switches: the limits apply from the next event
    /// that reads them; sessions of a service now off are closed as revoked (not penalised:
    /// the operator acted, not the peer).
    fn reload(&mut self, now: Instant, update: &crate::shard::LiveUpdate) {
        self.config = update.config.clone();
        let Role::Server(server) = &mut self.role else {
            return;
        };
        server.router.set_disabled(update.disabled_alpns.clone());
        let router = &server.router;
        for c in self.conns.iter().flatten() {
            let (alpn, remote, peer) = {
                let inner = c.inner.borrow();
                if !inner.connected || inner.lost.is_some() {
                    continue;
                }
                match inner.alpn {
                    Some(a) if router.is_disabled(a) => {
                        (a, inner.proto.remote_address(), inner.peer.clone())
                    }
                    _ => continue,
                }
            };
            let alpn = String::from_utf8_lossy(alpn).into_owned();
            info!(%remote, %alpn, peer = peer.as_deref().unwrap_or("anonymous"), "closing a session: its service was turned off by a reload");
            close_at(
                c,
                now,
                close_code::REVOKED,
                b"service turned off on this server",
            );
        }
    }

    /// Runs [`authorize`] again for every live session of `peer`, with the key it presented
    /// and the service it uses, against the peer's current record; closes those it refuses
    /// with the failure's code and remedy, as at the handshake, and those whose key now
    /// authenticates someone else (or no one, on an anonymous service) as revoked. Not
    /// penalised, and logged as withdrawn rather than failed: the operator acted, not the
    /// source, and fail2ban must not ban a host for it.
    fn recheck_peer(&mut self, now: Instant, peer: &str) {
        let Role::Server(server) = &self.role else {
            return;
        };
        for c in self.conns.iter().flatten() {
            let (alpn, fingerprint, remote) = {
                let inner = c.inner.borrow();
                if inner.peer.as_deref() != Some(peer) || inner.lost.is_some() {
                    continue;
                }
                let fp = crate::identity::tls::peer_fingerprint(
                    inner.proto.crypto_session().peer_identity(),
                );
                (inner.alpn, fp, inner.proto.remote_address())
            };
            let Some(service) = alpn.and_then(|a| find_service(&server.router, a)) else {
                continue;
            };
            let alpn_str = String::from_utf8_lossy(service.info.alpn).into_owned();
            let current =
                fingerprint.and_then(|fp| server.identities.by_fingerprint(&fp).ok().flatten());
            let rule = ServiceRule {
                alpn: &alpn_str,
                scopes: service.info.scopes,
                anonymous: service.info.anonymous,
            };
            let (code, reason, remedy) = match authorize(current.as_deref(), fingerprint, rule) {
                Ok(Some(p)) if p.peer_id == peer => continue,
                Ok(_) => (
                    close_code::REVOKED,
                    "key reassigned",
                    format!("key no longer authenticates peer {peer}"),
                ),
                Err(f) => (f.close_code(), f.log_reason(), f.remedy()),
            };
            warn!(
                target: "alknet::auth",
                %remote,
                alpn = %alpn_str,
                fingerprint = %fingerprint.map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
                peer,
                reason,
                "authorization withdrawn"
            );
            close_at(c, now, code, remedy.as_bytes());
        }
    }

    /// Fires what is due at `now`: connection timers, the handshake deadline, the end of
    /// the drain period.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.drain_deadline.is_some_and(|d| d <= now) {
            self.drain_deadline = None;
            info!(
                shard = self.id,
                connections = self.live,
                "drain period over; closing connections"
            );
            for c in self.conns.iter().flatten() {
                close_at(c, now, close_code::SHUTDOWN, b"server shutting down");
            }
        }
        if self.hard_exit.is_some_and(|h| h <= now) {
            // Fired once: a deadline left in the past would make every wake-up immediate.
            self.hard_exit = None;
            self.out_of_time = true;
        }
        while let Some(slot) = self.timers.pop_due(now) {
            let Some(Some(cell)) = self.conns.get(slot) else {
                continue;
            };
            {
                let mut inner = cell.inner.borrow_mut();
                if let Some(hd) = inner.handshake_deadline
                    && hd <= now
                    && !inner.connected
                {
                    inner.handshake_deadline = None;
                    stats::bump(&self.stats.handshake_timeouts);
                    debug!(remote = %inner.proto.remote_address(), "handshake timed out");
                    inner.proto.close(
                        now,
                        VarInt::from_u32(close_code::HANDSHAKE_TIMEOUT),
                        Bytes::from_static(b"handshake timeout"),
                    );
                }
                inner.proto.handle_timeout(now);
            }
            queue_dirty(cell);
        }
    }

    /// Starts a connection to `addr` (client side); the caller awaits
    /// [`Connection::connected`].
    pub(crate) fn connect(
        &mut self,
        now: Instant,
        config: quinn_proto::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<ConnRef, ConnectFailed> {
        let (ch, proto) = self
            .endpoint
            .connect(now, config, addr, server_name)
            .map_err(ConnectFailed)?;
        let cell = self.insert(ch, ConnInner::new(proto, ch, now));
        queue_dirty(&cell);
        Ok(cell)
    }

    // ----- output ------------------------------------------------------------------------

    /// The next datagram (or GSO batch) to send, written into `buf`; `None` when every
    /// queued connection has been driven and has nothing more to send. A caller whose
    /// socket is full stops calling and resumes later: nothing is lost.
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.accepted = false;
        if let Some((t, data)) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(data.get(..t.size).unwrap_or(&data));
            self.recycle(data);
            return Some(t);
        }
        loop {
            let cell = match self.current.take() {
                Some(c) => c,
                None => {
                    let c = self.next_dirty()?;
                    c.inner.borrow_mut().dirty = false;
                    let slot = c.inner.borrow().handle.0;
                    if !matches!(self.conns.get(slot), Some(Some(live)) if Rc::ptr_eq(live, &c)) {
                        // Gone already (a handler touched a drained connection); its slot
                        // may belong to a newer connection now.
                        continue;
                    }
                    self.current_drained = false;
                    self.process(now, &c);
                    c
                }
            };
            buf.clear();
            let t = {
                let mut inner = cell.inner.borrow_mut();
                let segments = self
                    .segments
                    .for_segment(usize::from(inner.proto.current_mtu()));
                inner.proto.poll_transmit(now, segments, buf)
            };
            if let Some(t) = t {
                self.current = Some(cell);
                return Some(t);
            }
            // Sending may have produced events (a finished close drains): settle them, and
            // send again if they produced anything.
            if self.process(now, &cell) {
                self.current = Some(cell);
                continue;
            }
            self.settle(now, &cell);
        }
    }

    /// Datagrams collected for another shard: `(owner, batch)`, their bytes reserved in
    /// the owner's inbox budget (what did not fit was dropped and counted).
    pub(crate) fn poll_forward(&mut self) -> Option<(usize, ForwardBatch)> {
        loop {
            if let Some(b) = self.forward_ready.pop_front() {
                return Some(b);
            }
            let (owner, q) = self
                .forward
                .iter_mut()
                .enumerate()
                .find(|(_, q)| !q.is_empty())?;
            let batch = std::mem::take(q);
            self.seal_forward(owner, batch);
        }
    }

    /// Reserves a batch's bytes in its owner's inbox budget and queues what fits for
    /// [`ShardState::poll_forward`]; the rest is dropped and counted. Sealing as each
    /// batch fills keeps what waits here within the budget too.
    fn seal_forward(&mut self, owner: usize, batch: Vec<Forwarded>) {
        let (sealed, dropped) = self.forward_budget.seal(owner, batch);
        stats::add(&self.stats.forward_dropped, dropped as u64);
        if let Some(b) = sealed {
            self.forward_ready.push_back((owner, b));
        }
    }

    /// The next event.
    pub(crate) fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }

    /// The earliest time [`ShardState::handle_timeout`] has work.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        [self.timers.next(), self.drain_deadline, self.hard_exit]
            .into_iter()
            .flatten()
            .min()
    }

    // ----- inside ------------------------------------------------------------------------

    fn next_dirty(&mut self) -> Option<ConnRef> {
        if self.work_pos >= self.work.len() {
            self.work.clear();
            self.work_pos = 0;
            std::mem::swap(&mut self.work, &mut *self.signal.dirty.borrow_mut());
        }
        let c = self.work.get(self.work_pos)?.clone();
        self.work_pos += 1;
        Some(c)
    }

    fn handle_local(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
    ) {
        if let Role::Server(server) = &self.role
            && crate::shard::admit::fresh_initial(&self.codec, &data)
        {
            // A new attempt from a penalised source, or one at its handshake cap: dropped
            // before the endpoint derives keys and decrypts it, so a flood from one source
            // costs a hash and two loads per datagram. (`admit` takes the same decision
            // for the attempts that reach it, such as those validated by a Retry.)
            let a = &server.admission;
            if a.penalties.is_blocked(remote.ip(), now) {
                stats::bump(&self.stats.dropped_penalty);
                return;
            }
            if a.handshakes(a.source(remote)) >= self.config.admission.max_handshakes_per_source {
                stats::bump(&self.stats.dropped_source_cap);
                return;
            }
        }
        self.resp_buf.clear();
        let event = self
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut self.resp_buf);
        match event {
            None => {}
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(Some(cell)) = self.conns.get(ch.0) {
                    {
                        let mut inner = cell.inner.borrow_mut();
                        let current = inner.proto.remote_address();
                        if !inner.migration.admit(now, current, remote) {
                            // A move to an unused address too soon after the last one.
                            stats::bump(&self.stats.migrations_refused);
                            return;
                        }
                        inner.proto.handle_event(ev);
                    }
                    queue_dirty(cell);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(now, incoming),
            Some(DatagramEvent::Response(t)) => self.queue_response(t),
        }
    }

    /// Every `Incoming` is accepted, refused, retried or ignored here (a dropped one would
    /// leak endpoint state).
    fn on_incoming(&mut self, now: Instant, incoming: Incoming) {
        let remote = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let a = &self.config.admission;
        // Per-source facts, from the shared tables without a lock.
        let (source, token, penalised, token_used, source_handshakes) = match &self.role {
            Role::Server(s) => {
                let shared = &s.admission;
                let source = shared.source(remote);
                let token = shared.token_mark(incoming.orig_dst_cid(), remote);
                (
                    Some(source),
                    Some(token),
                    shared.penalties.is_blocked(remote.ip(), now),
                    validated && shared.token_used(token),
                    shared.handshakes(source),
                )
            }
            Role::Client => (None, None, false, false, 0),
        };
        let t = &self.config.transport;
        let facts = IncomingFacts {
            remote_port: remote.port(),
            penalised,
            address_validated: validated,
            may_retry: incoming.may_retry(),
            token_used,
            source_handshakes,
        };
        let load = Load {
            serving: matches!(self.role, Role::Server(_)),
            memory_pressure: self.pressure,
            shutting_down: self.shutting_down,
            connections: self.live,
            max_connections: t.max_connections_per_shard,
            handshakes: self.handshaking,
            max_handshakes: t.max_handshakes_per_shard,
            max_handshakes_per_source: a.max_handshakes_per_source,
        };
        let decision = admit(&facts, &load);
        if let Some(c) = decision.counter(&self.stats) {
            stats::bump(c);
        }
        match decision {
            Admission::Accept => {
                let (Role::Server(server), Some(source), Some(token)) = (&self.role, source, token)
                else {
                    self.endpoint.ignore(incoming);
                    return;
                };
                // Take the source's handshake slot for real: another shard may have taken
                // the last one since the count was read.
                let Some((held, count)) = server
                    .admission
                    .begin_handshake(source, a.max_handshakes_per_source)
                else {
                    stats::bump(&self.stats.dropped_source_cap);
                    self.endpoint.ignore(incoming);
                    return;
                };
                if validated && !server.admission.use_token(token) {
                    // A replay of the same token won the race on another shard.
                    stats::bump(&self.stats.dropped_token_reuse);
                    self.endpoint.ignore(incoming);
                    return;
                }
                stats::raise(&self.stats.source_handshakes_peak, u64::from(count));
                self.accept(now, incoming, held);
            }
            Admission::Retry(_) => {
                self.resp_buf.clear();
                match self.endpoint.retry(incoming, &mut self.resp_buf) {
                    Ok(tx) => {
                        stats::bump(&self.stats.retries_sent);
                        self.queue_response(tx);
                    }
                    Err(e) => self.endpoint.ignore(e.into_incoming()),
                }
            }
            Admission::Refuse(_) => {
                self.resp_buf.clear();
                let tx = self.endpoint.refuse(incoming, &mut self.resp_buf);
                self.queue_response(tx);
            }
            Admission::Ignore(_) => self.endpoint.ignore(incoming),
        }
    }

    fn accept(&mut self, now: Instant, incoming: Incoming, handshake: Held) {
        let Role::Server(server) = &self.role else {
            self.endpoint.ignore(incoming);
            return;
        };
        let remote = incoming.remote_address();
        let server_config = server.server_config.clone();
        self.resp_buf.clear();
        match self
            .endpoint
            .accept(incoming, now, &mut self.resp_buf, Some(server_config))
        {
            Ok((ch, proto)) => {
                stats::bump(&self.stats.handshakes_accepted);
                let mut inner = ConnInner::new(proto, ch, now);
                inner.handshake_deadline = Some(now + self.config.transport.handshake_timeout.0);
                inner.counts_as_handshake = true;
                let cell = self.insert(ch, inner);
                self.handshaking += 1;
                if self.held.len() <= ch.0 {
                    self.held.resize_with(ch.0 + 1, ConnHeld::default);
                }
                if let Some(h) = self.held.get_mut(ch.0) {
                    *h = ConnHeld {
                        handshake: Some(handshake),
                        connection: None,
                    };
                    stats::add(&self.stats.handshakes_in_flight, 1);
                }
                queue_dirty(&cell);
                self.accepted = true;
            }
            Err(e) => {
                // The handshake's slot is given back as `handshake` drops here; the failure
                // counts against the source like any handshake that did not finish.
                stats::bump(&self.stats.handshakes_failed);
                debug!(%remote, cause = %e.cause, "incoming connection failed");
                if let Role::Server(s) = &self.role {
                    penalise(&s.admission, remote, now);
                }
                if let Some(tx) = e.response {
                    self.queue_response(tx);
                }
            }
        }
    }

    fn insert(&mut self, ch: ConnectionHandle, inner: ConnInner) -> ConnRef {
        let cell = Rc::new(ConnCell {
            inner: RefCell::new(inner),
            signal: self.signal.clone(),
            stats: self.stats.clone(),
        });
        if self.conns.len() <= ch.0 {
            self.conns.resize(ch.0 + 1, None);
        }
        if let Some(slot) = self.conns.get_mut(ch.0) {
            *slot = Some(cell.clone());
        }
        self.live += 1;
        stats::bump(&self.stats.connections_open);
        cell
    }

    /// Keeps a stateless answer the endpoint wrote into `resp_buf` until `poll_transmit`.
    fn queue_response(&mut self, t: Transmit) {
        if self.responses.len() >= RESPONSE_CAP {
            return;
        }
        let fresh = self.spare.pop().unwrap_or_default();
        let data = std::mem::replace(&mut self.resp_buf, fresh);
        self.responses.push_back((t, data));
    }

    fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare.len() < RESPONSE_FLUSH {
            data.clear();
            self.spare.push(data);
        }
    }

    /// Under memory pressure connections get no new stream credit (streams already open go
    /// on); when it passes, the configured limits come back.
    fn set_pressure(&mut self, over: bool) {
        if std::mem::replace(&mut self.pressure, over) == over {
            return;
        }
        let t = &self.config.transport;
        let (bi, uni) = if over {
            (0, 0)
        } else {
            (t.max_concurrent_bidi_streams, t.max_concurrent_uni_streams)
        };
        for c in self.conns.iter().flatten() {
            {
                let mut inner = c.inner.borrow_mut();
                let uni = if inner.refuse_uni { 0 } else { uni };
                inner
                    .proto
                    .set_max_concurrent_streams(quinn_proto::Dir::Bi, VarInt::from_u32(bi));
                inner
                    .proto
                    .set_max_concurrent_streams(quinn_proto::Dir::Uni, VarInt::from_u32(uni));
            }
            queue_dirty(c);
        }
    }

    /// Settles one connection's events: endpoint events back to the endpoint, application
    /// events to task wake-ups, a finished handshake to authorisation. True when anything
    /// happened (then it may have more to send).
    fn process(&mut self, now: Instant, cell: &ConnRef) -> bool {
        let mut any = false;
        loop {
            let mut progress = false;
            let mut newly_connected = false;
            {
                let mut inner = cell.inner.borrow_mut();
                let inner = &mut *inner;
                while let Some(ev) = inner.proto.poll_endpoint_events() {
                    progress = true;
                    if ev.is_drained() {
                        self.current_drained = true;
                    }
                    if let Some(cev) = self.endpoint.handle_event(inner.handle, ev) {
                        inner.proto.handle_event(cev);
                    }
                }
                while let Some(ev) = inner.proto.poll() {
                    progress = true;
                    match ev {
                        Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
                        Event::Connected => {
                            inner.connected = true;
                            inner.handshake_deadline = None;
                            newly_connected = true;
                            inner.wakers.wake_connected();
                        }
                        Event::ConnectionLost { reason } => {
                            debug!(remote = %inner.proto.remote_address(), %reason, "connection lost");
                            if inner.lost.is_none() {
                                inner.lost = Some(reason);
                            }
                            inner.wakers.wake_all();
                        }
                        Event::Stream(se) => on_stream_event(inner, se),
                        Event::DatagramReceived => {
                            inner.wakers.wake_datagram();
                        }
                    }
                }
                if newly_connected && std::mem::take(&mut inner.counts_as_handshake) {
                    self.handshaking = self.handshaking.saturating_sub(1);
                }
                if newly_connected {
                    self.end_handshake(inner.handle.0);
                }
            }
            if newly_connected {
                stats::bump(&self.stats.connections_established);
                if matches!(self.role, Role::Server(_)) {
                    // Authorise and hand to the service; may close the connection.
                    self.on_connected(now, cell);
                }
            }
            self.follow_remote(cell);
            {
                // The handler is gone and every finished stream is acknowledged: close.
                let mut inner = cell.inner.borrow_mut();
                if inner.handler_done && inner.unacked.is_empty() && !inner.proto.is_closed() {
                    inner
                        .proto
                        .close(now, VarInt::from_u32(close_code::NO_ERROR), Bytes::new());
                    progress = true;
                }
            }
            if !progress {
                return any;
            }
            any = true;
        }
    }

    /// Shows a session's new remote address on the board once its connection moved there
    /// (quinn-proto migrates on a datagram from a new address, and moves back if the new
    /// path fails validation), and its path MTU once discovery changed it.
    fn follow_remote(&self, cell: &ConnRef) {
        let mut inner = cell.inner.borrow_mut();
        let remote = inner.proto.remote_address();
        let mtu = inner.proto.current_mtu();
        if remote == inner.listed_remote && mtu == inner.listed_mtu {
            return;
        }
        inner.listed_mtu = mtu;
        let from = std::mem::replace(&mut inner.listed_remote, remote);
        if from != remote {
            debug!(%from, to = %remote, peer = ?inner.peer, "connection moved to a new address");
        }
        if let (Some(id), Role::Server(s)) = (inner.session, &self.role) {
            let mut board = s.board.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(info) = board.get_mut(&id) {
                info.remote = remote.to_string();
                info.mtu = mtu;
            }
        }
    }

    /// After a connection's last transmit of the round: forget it if it drained, otherwise
    /// re-arm its timer.
    fn settle(&mut self, now: Instant, cell: &ConnRef) {
        let mut inner = cell.inner.borrow_mut();
        let slot = inner.handle.0;
        if !self.current_drained {
            let deadline = match (inner.proto.poll_timeout(), inner.handshake_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.timers.set(slot, deadline);
            return;
        }
        self.current_drained = false;
        if std::mem::take(&mut inner.counts_as_handshake) {
            self.handshaking = self.handshaking.saturating_sub(1);
        }
        if self.end_handshake(slot) && !inner.connected && !self.shutting_down {
            // Accepted but never finished: a TLS failure (no certificate, a key of the wrong
            // type, a bad CertificateVerify), a timeout, or a close. Each counts against
            // the source as an authentication failure does.
            stats::bump(&self.stats.handshakes_abandoned);
            let remote = inner.proto.remote_address();
            debug!(%remote, reason = ?inner.lost, "handshake abandoned");
            if let Role::Server(s) = &self.role {
                penalise(&s.admission, remote, now);
            }
        }
        // Whatever the connection held in the shared tables goes back with it.
        if let Some(h) = self.held.get_mut(slot) {
            *h = ConnHeld::default();
        }
        let reason = inner
            .lost
            .get_or_insert(ConnectionError::LocallyClosed)
            .clone();
        inner.wakers.wake_all();
        self.timers.set(slot, None);
        if let (Some(id), Role::Server(s)) = (inner.session.take(), &self.role) {
            match s.board.lock() {
                Ok(mut b) => b.remove(&id),
                Err(p) => p.into_inner().remove(&id),
            };
        }
        if let Some(entry) = self.conns.get_mut(slot) {
            *entry = None;
        }
        self.live = self.live.saturating_sub(1);
        stats::drop_one(&self.stats.connections_open);
        self.events.push_back(ShardEvent::Closed {
            remote: inner.proto.remote_address(),
            peer: inner.peer.clone(),
            reason,
        });
    }

    /// Gives back the handshake slot of the connection in `slot`, if it still holds one;
    /// true when it did.
    fn end_handshake(&mut self, slot: usize) -> bool {
        let ended = self
            .held
            .get_mut(slot)
            .and_then(|h| h.handshake.take())
            .is_some();
        if ended {
            stats::drop_one(&self.stats.handshakes_in_flight);
        }
        ended
    }

    /// The handshake finished: find the peer, check the service and its scope, and hand
    /// the connection to the service. Unknown keys never reach an authenticated handler.
    fn on_connected(&mut self, now: Instant, cell: &ConnRef) {
        let Role::Server(server) = &self.role else {
            return;
        };
        let (alpn, fingerprint, remote) = {
            let inner = cell.inner.borrow();
            let session = inner.proto.crypto_session();
            let alpn = session
                .handshake_data()
                .and_then(|d| {
                    d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                        .ok()
                })
                .and_then(|d| d.protocol);
            let fp = crate::identity::tls::peer_fingerprint(session.peer_identity());
            (alpn, fp, inner.proto.remote_address())
        };
        if let Some(a) = alpn.as_deref()
            && server.router.is_disabled(a)
        {
            // Turned off by a reload (TLS still offers the ALPN until a restart).
            let alpn = String::from_utf8_lossy(a).into_owned();
            info!(%remote, %alpn, "connection refused: service turned off");
            close_at(
                cell,
                now,
                close_code::FORBIDDEN,
                b"service turned off on this server",
            );
            return;
        }
        let Some(service) = alpn
            .as_deref()
            .and_then(|a| find_service(&server.router, a))
        else {
            // TLS only negotiates offered ALPNs; this is a bug guard, not a peer error.
            error!(%remote, "connection without a served ALPN");
            close_at(cell, now, close_code::PROTOCOL_ERROR, b"no service");
            return;
        };
        let alpn_str = String::from_utf8_lossy(service.info.alpn).into_owned();
        let peer = match fingerprint {
            Some(fp) => match server.identities.by_fingerprint(&fp) {
                Ok(p) => p,
                Err(e) => {
                    error!(%remote, error = %e, "identity lookup failed");
                    None
                }
            },
            None => None,
        };
        let rule = ServiceRule {
            alpn: &alpn_str,
            scopes: service.info.scopes,
            anonymous: service.info.anonymous,
        };
        let identity = match authorize(peer.as_deref(), fingerprint, rule) {
            Ok(p) => p.map(|p| (p.peer_id.clone(), Arc::<[String]>::from(p.scopes.clone()))),
            Err(failure) => {
                stats::bump(&self.stats.auth_failures);
                stats::bump(self.stats.auth_reason(failure.log_reason()));
                if failure.penalises() {
                    penalise(&server.admission, remote, now);
                }
                warn!(
                    target: "alknet::auth",
                    %remote,
                    alpn = %alpn_str,
                    fingerprint = %fingerprint.map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
                    reason = failure.log_reason(),
                    "authentication failed"
                );
                close_at(cell, now, failure.close_code(), failure.remedy().as_bytes());
                self.events
                    .push_back(ShardEvent::Refused { remote, failure });
                return;
            }
        };
        let (peer_id, scopes) = match identity {
            Some((id, scopes)) => (Some(id), scopes),
            None => (None, Arc::from(Vec::new())),
        };
        // The connection caps: per peer on all shards, per source for strangers.
        let a = &self.config.admission;
        let held = match &peer_id {
            Some(id) => server
                .admission
                .hold_peer(id, a.max_connections_per_peer)
                .ok_or_else(|| (format!("peer {id}"), a.max_connections_per_peer)),
            None => {
                let source = server.admission.source(remote);
                let cap = a.max_connections_per_anonymous_source;
                server
                    .admission
                    .hold_anonymous(source, cap)
                    .ok_or_else(|| (format!("source {}", remote.ip()), cap))
            }
        };
        let held = match held {
            Ok(h) => h,
            Err((who, limit)) => {
                stats::bump(&self.stats.refused_connection_cap);
                info!(%remote, alpn = %alpn_str, %who, limit, "connection refused: connection cap");
                let failure = AuthFailure::ConnectionLimit { who, limit };
                close_at(cell, now, failure.close_code(), failure.remedy().as_bytes());
                self.events
                    .push_back(ShardEvent::Refused { remote, failure });
                return;
            }
        };
        if let Some(h) = self.held.get_mut(cell.inner.borrow().handle.0) {
            h.connection = Some(held);
        }
        let auth = AuthContext {
            identity: peer_id.clone().map(|id| Identity { id }),
            scopes,
            alpn: service.info.alpn,
            remote_addr: remote,
            tls_client_fingerprint: fingerprint,
            forwarded_for: None,
        };
        let id = self.next_session;
        self.next_session += 1;
        {
            let mut inner = cell.inner.borrow_mut();
            inner.alpn = Some(service.info.alpn);
            inner.peer = peer_id;
            inner.since = now;
            inner.session = Some(id);
            if !service.info.uni_streams {
                inner.refuse_uni = true;
                inner
                    .proto
                    .set_max_concurrent_streams(quinn_proto::Dir::Uni, VarInt::from_u32(0));
                stop_uni_streams(&mut inner);
            }
        }
        let info = SessionInfo {
            peer: auth
                .identity
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_else(|| "anonymous".into()),
            alpn: alpn_str,
            remote: remote.to_string(),
            handshake_remote: remote.to_string(),
            since_unix: self.wall.unix_at(now),
            mtu: cell.inner.borrow().proto.current_mtu(),
            shard: self.id,
        };
        info!(
            %remote,
            alpn = %info.alpn,
            peer = %info.peer,
            "connection established"
        );
        match server.board.lock() {
            Ok(mut b) => b.insert(id, info),
            Err(p) => p.into_inner().insert(id, info),
        };
        self.events.push_back(ShardEvent::Serve {
            conn: cell.clone(),
            auth,
            service,
        });
    }
}

/// What one accepted connection holds in the shared admission tables; each count goes back
/// when its guard drops (handshake end, connection end, or the shard's end).
#[derive(Default)]
struct ConnHeld {
    /// Its source's handshake slot, until the handshake completes or fails.
    handshake: Option<Held>,
    /// Its place under the per-peer or per-anonymous-source connection cap.
    connection: Option<Held>,
}

/// Counts a failed handshake or authentication against the source of `remote`, and logs a
/// penalty it starts.
pub(crate) fn penalise(admission: &SharedAdmission, remote: SocketAddr, now: Instant) {
    if let Some(penalty) = admission.penalties.record_failure(remote.ip(), now) {
        warn!(
            target: "alknet::auth",
            source = %remote.ip(),
            penalty_secs = penalty.as_secs(),
            "source penalised after repeated authentication failures"
        );
    }
}

/// The one place the shard reads the service layer: the service for a negotiated ALPN. Its
/// declaration (`alpn`, `scope`, `anonymous`) is read from the result in `on_connected`.
fn find_service(router: &Router, alpn: &[u8]) -> Option<Service> {
    router.get(alpn).cloned()
}

/// Closes a connection at `now` and queues it for driving.
fn close_at(cell: &ConnRef, now: Instant, code: u32, reason: &[u8]) {
    {
        let mut inner = cell.inner.borrow_mut();
        if inner.lost.is_some() || inner.proto.is_closed() {
            return;
        }
        inner
            .proto
            .close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
    }
    queue_dirty(cell);
}

/// Queues a connection for driving without waking the driver (its caller drains output
/// right after the verb that queued it).
fn queue_dirty(cell: &ConnRef) {
    let mut inner = cell.inner.borrow_mut();
    if !inner.dirty {
        inner.dirty = true;
        drop(inner);
        cell.signal.dirty.borrow_mut().push(cell.clone());
    }
}

/// Stops every uni stream the client opened on a connection whose service takes none: the
/// data is discarded (and its flow-control credit given back) instead of parked.
fn stop_uni_streams(inner: &mut ConnInner) {
    while let Some(id) = inner.proto.streams().accept(quinn_proto::Dir::Uni) {
        let _ = inner
            .proto
            .recv_stream(id)
            .stop(VarInt::from_u32(close_code::PROTOCOL_ERROR));
    }
}

fn on_stream_event(inner: &mut ConnInner, ev: StreamEvent) {
    match ev {
        StreamEvent::Opened {
            dir: quinn_proto::Dir::Uni,
        } if inner.refuse_uni => stop_uni_streams(inner),
        StreamEvent::Opened { dir } => inner.wakers.wake_accept(dir),
        StreamEvent::Readable { id } => inner.wakers.wake_read(id),
        StreamEvent::Writable { id } => inner.wakers.wake_write(id),
        StreamEvent::Finished { id } | StreamEvent::Stopped { id, .. } => {
            inner.unacked.remove(&id);
            inner.wakers.wake_send_ended(id);
        }
        StreamEvent::Available { dir } => inner.wakers.wake_open(dir),
    }
}

/// Hands a connection to a handler's view (used by the driver and the client).
pub(crate) fn connection(cell: &ConnRef) -> Connection {
    Connection::new(cell.clone())
}

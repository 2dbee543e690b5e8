//! One shard: a UDP socket, a `quinn_proto::Endpoint`, its connections and one timer heap,
//! driven on one monoio runtime. Nothing here is shared with other shards except the
//! forwarding queues (datagrams whose connection lives elsewhere) and the counters.
//!
//! Three tasks drive a shard, all on its thread:
//! * the receiver waits for the socket to be readable, reads batches with quinn-udp, routes
//!   each datagram by its connection ID (local, or forwarded to the owner), feeds local ones
//!   to the endpoint, then drives every connection the batch touched;
//! * the inbox takes datagrams forwarded by other shards, and control messages;
//! * the driver sleeps until the earliest connection deadline or until a handler touches a
//!   connection, and then drives what is due.
//!
//! "Driving" a connection means: feed its endpoint events back to the endpoint, turn its
//! application events into task wake-ups, and send what it has to send (GSO batches).

pub mod penalty;

use crate::config::Config;
use crate::conn::{ConnCell, ConnInner, ConnRef, Connection, DriverSignal};
use crate::identity::{AuthContext, Identity, IdentityProvider};
use crate::net::udp::UdpIo;
use crate::ops::stats::{self, ShardStats};
use crate::service::{Router, close_code};
use alknet_proto::{CidCodec, Route, route_datagram};
use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, Endpoint, Event, Incoming, StreamEvent};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// A datagram handed from the shard that received it to the shard that owns it.
#[derive(Debug)]
pub struct Forwarded {
    /// The sender.
    pub remote: SocketAddr,
    /// The local address it arrived on, when known.
    pub local_ip: Option<IpAddr>,
    /// ECN bits as received.
    pub ecn: Option<quinn_proto::EcnCodepoint>,
    /// The datagram.
    pub data: Bytes,
}

/// Messages between shards and from the control plane.
#[derive(Debug)]
pub enum ShardMsg {
    /// Datagrams owned by the receiving shard.
    Datagrams(Vec<Forwarded>),
    /// Stop accepting, drain, close everything, exit.
    Shutdown,
    /// Close every connection of this peer (revoked or disabled).
    ClosePeer(String),
    /// The process crossed its memory budget (`true`: now above it).
    MemoryPressure(bool),
}

/// The authenticated connections of one shard, readable from any thread without asking the
/// shard (so a handler on a shard can list sessions without waiting on itself).
pub type SessionBoard = Arc<std::sync::Mutex<std::collections::HashMap<u64, SessionInfo>>>;

/// One authenticated connection, as `alknet sessions` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// Peer id (`anonymous` for anonymous services).
    pub peer: String,
    /// Service ALPN.
    pub alpn: String,
    /// Remote address at the handshake.
    pub remote: String,
    /// When the handshake finished, Unix seconds.
    pub since_unix: u64,
    /// The shard holding it.
    pub shard: usize,
}

/// Source ports of UDP services that answer anything (reflection/amplification vectors).
/// An Initial from one of them is spoofed or broken; answering would reflect traffic.
const REFLECTION_PORTS: [u16; 11] = [0, 17, 19, 53, 111, 123, 137, 138, 161, 389, 500];

/// Datagrams forwarded per inbox message before a shard must send what it has collected.
const FORWARD_BATCH: usize = 64;
/// Batches read per wake-up before the receiver drives connections and yields.
const RECV_BUDGET: usize = 16;

pub(crate) struct Core {
    endpoint: Endpoint,
    conns: Vec<Option<ConnRef>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    handshaking: usize,
    live: usize,
    send_buf: Vec<u8>,
    resp_buf: Vec<u8>,
    blocked: Option<Blocked>,
    forward: Vec<Vec<Forwarded>>,
}

impl Core {
    pub(crate) fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }
}

struct Blocked {
    destination: SocketAddr,
    ecn: Option<quinn_proto::EcnCodepoint>,
    data: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<IpAddr>,
}

/// The shard's shared state; one per worker thread.
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) shards: usize,
    pub(crate) core: RefCell<Core>,
    pub(crate) signal: Rc<DriverSignal>,
    pub(crate) io: UdpIo,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) peers: Vec<flume::Sender<ShardMsg>>,
    pub(crate) codec: CidCodec,
    pub(crate) router: Router,
    pub(crate) identities: Arc<dyn IdentityProvider>,
    pub(crate) config: Arc<Config>,
    pub(crate) server_config: Option<Arc<quinn_proto::ServerConfig>>,
    pub(crate) penalties: Arc<std::sync::Mutex<crate::shard::penalty::PenaltyBox>>,
    pub(crate) board: SessionBoard,
    next_session: Cell<u64>,
    pressure: Cell<bool>,
    /// A connection was accepted since the last flush.
    accepted: Cell<bool>,
    sleeping_until: Cell<Option<Instant>>,
    pub(crate) shutting_down: Cell<bool>,
    drain_deadline: Cell<Option<Instant>>,
    hard_exit: Cell<Option<Instant>>,
    pub(crate) exit: Cell<bool>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: usize,
        shards: usize,
        endpoint: Endpoint,
        io: UdpIo,
        stats: Arc<ShardStats>,
        peers: Vec<flume::Sender<ShardMsg>>,
        codec: CidCodec,
        router: Router,
        identities: Arc<dyn IdentityProvider>,
        config: Arc<Config>,
        server_config: Option<Arc<quinn_proto::ServerConfig>>,
        penalties: Arc<std::sync::Mutex<crate::shard::penalty::PenaltyBox>>,
        board: SessionBoard,
    ) -> Rc<Self> {
        Rc::new(Self {
            id,
            shards,
            core: RefCell::new(Core {
                endpoint,
                conns: Vec::new(),
                timers: BinaryHeap::new(),
                handshaking: 0,
                live: 0,
                send_buf: Vec::with_capacity(64 * 1024),
                resp_buf: Vec::with_capacity(2048),
                blocked: None,
                forward: (0..shards).map(|_| Vec::new()).collect(),
            }),
            signal: Rc::new(DriverSignal::default()),
            io,
            stats,
            peers,
            codec,
            router,
            identities,
            config,
            server_config,
            penalties,
            board,
            next_session: Cell::new(0),
            pressure: Cell::new(false),
            accepted: Cell::new(false),
            sleeping_until: Cell::new(None),
            shutting_down: Cell::new(false),
            drain_deadline: Cell::new(None),
            hard_exit: Cell::new(None),
            exit: Cell::new(false),
        })
    }

    /// Connections this shard holds.
    pub(crate) fn connection_count(&self) -> usize {
        self.core.borrow().live
    }

    // ----- receiving ---------------------------------------------------------------------

    /// The receiver task: readiness from the ring, batches from quinn-udp.
    pub(crate) async fn run_receiver(self: Rc<Self>) {
        loop {
            if self.exit.get() {
                return;
            }
            let ready = self.io.readable().await;
            if let Err(e) = ready {
                error!(shard = self.id, error = %e, "socket poll failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let now = Instant::now();
            for _ in 0..RECV_BUDGET {
                // Each GRO segment is copied once into a buffer of its own size: the
                // endpoint decrypts in place and stream data keeps referring to it, so a
                // shared 64 KiB receive slot must not be pinned by one retained segment.
                let r = self.io.recv_batch(|meta, bytes| {
                    let stride = if meta.stride == 0 {
                        meta.len
                    } else {
                        meta.stride
                    };
                    let ecn = meta
                        .ecn
                        .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                    for seg in bytes.chunks(stride.max(1)) {
                        self.on_datagram(
                            now,
                            meta.addr,
                            meta.dst_ip,
                            ecn,
                            BytesMut::from(seg),
                            true,
                        );
                        if self.accepted.get() {
                            // Send the server's first flight now: a burst of Initials costs
                            // a key exchange and a signature each, and the first client
                            // should not wait for the last one's.
                            self.flush(now);
                        }
                    }
                });
                match r {
                    // A short batch means the queue is drained: skip the read that would only
                    // say EAGAIN (the next readiness poll fires at once if more arrived).
                    Ok(n) if n < self.io.batch_slots() => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!(shard = self.id, error = %e, "recv failed");
                        break;
                    }
                }
            }
            self.flush(now);
            yield_now().await;
        }
    }

    /// Routes one datagram: forward it to its owner or feed it to this shard's endpoint.
    pub(crate) fn on_datagram(
        &self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<quinn_proto::EcnCodepoint>,
        data: BytesMut,
        from_socket: bool,
    ) {
        if from_socket {
            stats::bump(&self.stats.datagrams_in);
            stats::add(&self.stats.bytes_in, data.len() as u64);
        }
        let route = if from_socket {
            route_datagram(&self.codec, &data, self.id, self.shards)
        } else {
            Route::Local
        };
        match route {
            Route::Drop => stats::bump(&self.stats.dropped_malformed),
            Route::Forward(owner) => {
                let mut core = self.core.borrow_mut();
                if let Some(q) = core.forward.get_mut(owner) {
                    q.push(Forwarded {
                        remote,
                        local_ip,
                        ecn,
                        data: data.freeze(),
                    });
                    if q.len() >= FORWARD_BATCH {
                        let batch = std::mem::take(q);
                        drop(core);
                        self.send_forward(owner, batch);
                    }
                }
            }
            Route::Local => self.handle_local(now, remote, local_ip, ecn, data),
        }
    }

    fn send_forward(&self, owner: usize, batch: Vec<Forwarded>) {
        let n = batch.len() as u64;
        match self.peers.get(owner) {
            Some(tx) => match tx.try_send(ShardMsg::Datagrams(batch)) {
                Ok(()) => stats::add(&self.stats.forwarded_out, n),
                Err(_) => stats::add(&self.stats.forward_dropped, n),
            },
            None => stats::add(&self.stats.forward_dropped, n),
        }
    }

    fn handle_local(
        &self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<quinn_proto::EcnCodepoint>,
        data: BytesMut,
    ) {
        let mut core = self.core.borrow_mut();
        let core = &mut *core;
        core.resp_buf.clear();
        let event = core
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut core.resp_buf);
        match event {
            None => {}
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(Some(cell)) = core.conns.get(ch.0) {
                    let cell = cell.clone();
                    cell.inner.borrow_mut().proto.handle_event(ev);
                    queue_dirty(&cell);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.on_incoming(core, now, incoming);
            }
            Some(DatagramEvent::Response(t)) => self.send_response(core, t),
        }
    }

    /// Decides what to do with a connection attempt: every `Incoming` is accepted, refused,
    /// retried or ignored here (a dropped one would leak endpoint state).
    fn on_incoming(&self, core: &mut Core, now: Instant, incoming: Incoming) {
        let remote = incoming.remote_address();
        let t = &self.config.transport;
        if REFLECTION_PORTS.contains(&remote.port()) {
            stats::bump(&self.stats.dropped_reflection);
            core.endpoint.ignore(incoming);
            return;
        }
        let Some(server_config) = self.server_config.clone() else {
            core.endpoint.ignore(incoming);
            return;
        };
        let penalised = match self.penalties.lock() {
            Ok(p) => p.is_blocked(remote.ip(), now),
            Err(p) => p.into_inner().is_blocked(remote.ip(), now),
        };
        if penalised {
            // Repeated authentication failures: no TLS work for this source for a while.
            stats::bump(&self.stats.dropped_penalty);
            core.endpoint.ignore(incoming);
            return;
        }
        if self.pressure.get() {
            // Over the memory budget: make strangers prove their address first, then refuse.
            if !incoming.remote_address_validated() && incoming.may_retry() {
                self.send_retry(core, incoming);
            } else {
                stats::bump(&self.stats.refused_memory);
                self.send_refusal(core, incoming);
            }
            return;
        }
        if self.shutting_down.get() || core.live >= t.max_connections_per_shard {
            stats::bump(&self.stats.connections_refused);
            self.send_refusal(core, incoming);
            return;
        }
        if core.handshaking >= t.max_handshakes_per_shard && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                self.send_retry(core, incoming);
            } else {
                stats::bump(&self.stats.connections_refused);
                core.endpoint.ignore(incoming);
            }
            return;
        }
        core.resp_buf.clear();
        match core
            .endpoint
            .accept(incoming, now, &mut core.resp_buf, Some(server_config))
        {
            Ok((ch, proto)) => {
                stats::bump(&self.stats.handshakes_accepted);
                let mut inner = ConnInner::new(proto, ch, now);
                inner.handshake_deadline = Some(now + t.handshake_timeout.0);
                let cell = Rc::new(ConnCell {
                    inner: RefCell::new(inner),
                    signal: self.signal.clone(),
                    stats: self.stats.clone(),
                });
                cell.inner.borrow_mut().counts_as_handshake = true;
                self.insert(core, ch, cell.clone());
                core.handshaking += 1;
                queue_dirty(&cell);
                self.accepted.set(true);
            }
            Err(e) => {
                stats::bump(&self.stats.handshakes_failed);
                debug!(%remote, cause = %e.cause, "incoming connection failed");
                if let Some(tx) = e.response {
                    self.send_response(core, tx);
                }
            }
        }
    }

    /// Answers an Initial with a Retry (address validation).
    fn send_retry(&self, core: &mut Core, incoming: Incoming) {
        core.resp_buf.clear();
        match core.endpoint.retry(incoming, &mut core.resp_buf) {
            Ok(tx) => {
                stats::bump(&self.stats.retries_sent);
                self.send_response(core, tx);
            }
            Err(e) => core.endpoint.ignore(e.into_incoming()),
        }
    }

    /// Answers an Initial with CONNECTION_REFUSED.
    fn send_refusal(&self, core: &mut Core, incoming: Incoming) {
        core.resp_buf.clear();
        let tx = core.endpoint.refuse(incoming, &mut core.resp_buf);
        self.send_response(core, tx);
    }

    /// Sends a stateless answer the endpoint wrote into `resp_buf`.
    fn send_response(&self, core: &mut Core, tx: quinn_proto::Transmit) {
        let buf = std::mem::take(&mut core.resp_buf);
        if let Some(bytes) = buf.get(..tx.size) {
            self.transmit(core, tx.destination, tx.ecn, bytes, None, tx.src_ip);
        }
        core.resp_buf = buf;
    }

    pub(crate) fn insert(&self, core: &mut Core, ch: ConnectionHandle, cell: ConnRef) {
        if core.conns.len() <= ch.0 {
            core.conns.resize(ch.0 + 1, None);
        }
        if let Some(slot) = core.conns.get_mut(ch.0) {
            *slot = Some(cell);
        }
        core.live += 1;
        stats::bump(&self.stats.connections_open);
    }

    // ----- the inbox ---------------------------------------------------------------------

    pub(crate) async fn run_inbox(self: Rc<Self>, rx: flume::Receiver<ShardMsg>) {
        while let Ok(msg) = rx.recv_async().await {
            let now = Instant::now();
            let mut next = Some(msg);
            let mut handled = 0;
            while let Some(msg) = next.take() {
                self.on_msg(now, msg);
                handled += 1;
                if handled < RECV_BUDGET {
                    next = rx.try_recv().ok();
                }
            }
            self.flush(now);
            if self.exit.get() {
                return;
            }
        }
    }

    fn on_msg(&self, now: Instant, msg: ShardMsg) {
        match msg {
            ShardMsg::Datagrams(batch) => {
                stats::add(&self.stats.forwarded_in, batch.len() as u64);
                for d in batch {
                    let data = BytesMut::from(&d.data[..]);
                    self.on_datagram(now, d.remote, d.local_ip, d.ecn, data, false);
                }
            }
            ShardMsg::Shutdown => {
                if !self.shutting_down.replace(true) {
                    info!(
                        shard = self.id,
                        connections = self.connection_count(),
                        "draining"
                    );
                    let drain = now + self.config.drain_period.0;
                    self.drain_deadline.set(Some(drain));
                    // Closing takes three PTOs at most; never linger beyond this.
                    self.hard_exit.set(Some(drain + Duration::from_secs(3)));
                    self.router.drain();
                }
                self.signal.notify();
            }
            ShardMsg::ClosePeer(peer) => self.close_peer(&peer, close_code::REVOKED, b"revoked"),
            ShardMsg::MemoryPressure(over) => self.set_pressure(over),
        }
    }

    /// Under memory pressure connections get no new stream credit (streams already open go
    /// on); when it passes, the configured limits come back.
    fn set_pressure(&self, over: bool) {
        if self.pressure.replace(over) == over {
            return;
        }
        let t = &self.config.transport;
        let (bi, uni) = if over {
            (0, 0)
        } else {
            (t.max_concurrent_bidi_streams, t.max_concurrent_uni_streams)
        };
        for c in self.connections() {
            {
                let mut inner = c.inner.borrow_mut();
                inner.proto.set_max_concurrent_streams(
                    quinn_proto::Dir::Bi,
                    quinn_proto::VarInt::from_u32(bi),
                );
                inner.proto.set_max_concurrent_streams(
                    quinn_proto::Dir::Uni,
                    quinn_proto::VarInt::from_u32(uni),
                );
            }
            queue_dirty(&c);
        }
    }

    /// Closes every connection authenticated as `peer`.
    pub(crate) fn close_peer(&self, peer: &str, code: u32, reason: &[u8]) {
        for c in self.connections() {
            if c.inner.borrow().peer.as_deref() == Some(peer) {
                crate::conn::close_cell(&c, code, reason);
            }
        }
    }

    /// Closes every connection.
    pub(crate) fn close_all(&self, code: u32, reason: &[u8]) {
        for c in self.connections() {
            crate::conn::close_cell(&c, code, reason);
        }
    }

    /// The connections held now (a copy of the handles, so callers may change the table).
    fn connections(&self) -> Vec<ConnRef> {
        self.core.borrow().conns.iter().flatten().cloned().collect()
    }

    // ----- the driver --------------------------------------------------------------------

    /// The driver task: timers, handler-initiated work, send back-pressure.
    pub(crate) async fn run_driver(self: Rc<Self>) {
        loop {
            if self.core.borrow().blocked.is_some() {
                let ready = self.io.writable().await;
                if ready.is_ok() {
                    self.retry_blocked();
                }
                let now = Instant::now();
                self.flush(now);
                continue;
            }
            let deadline = [
                self.next_deadline(),
                self.drain_deadline.get(),
                self.hard_exit.get(),
            ]
            .into_iter()
            .flatten()
            .min();
            self.sleeping_until.set(deadline);
            match deadline {
                Some(at) => {
                    let sleep = monoio::time::sleep_until(monoio::time::Instant::from_std(at));
                    monoio::select! {
                        _ = self.signal.wait() => {}
                        _ = sleep => {}
                    }
                }
                None => self.signal.wait().await,
            }
            self.sleeping_until.set(None);
            let now = Instant::now();
            if let Some(d) = self.drain_deadline.get()
                && d <= now
            {
                self.drain_deadline.set(None);
                info!(
                    shard = self.id,
                    connections = self.connection_count(),
                    "drain period over; closing connections"
                );
                self.close_all(close_code::SHUTDOWN, b"server shutting down");
            }
            if self.hard_exit.get().is_some_and(|h| h <= now) {
                self.exit.set(true);
            }
            self.fire_timers(now);
            self.flush(now);
            if self.exit.get() {
                return;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut core = self.core.borrow_mut();
        let core = &mut *core;
        // Settle the top of the heap: drop stale entries, and move an entry whose connection's
        // deadline went later to that deadline, so the driver never wakes for nothing.
        while let Some(Reverse((at, idx))) = core.timers.peek().copied() {
            let Some(Some(cell)) = core.conns.get(idx) else {
                core.timers.pop();
                continue;
            };
            let Ok(mut inner) = cell.inner.try_borrow_mut() else {
                return Some(at);
            };
            if inner.heap_at != Some(at) {
                core.timers.pop();
                continue;
            }
            match inner.timer_at {
                Some(t) if t > at => {
                    core.timers.pop();
                    inner.heap_at = Some(t);
                    core.timers.push(Reverse((t, idx)));
                }
                Some(_) => return Some(at),
                None => {
                    core.timers.pop();
                    inner.heap_at = None;
                }
            }
        }
        None
    }

    fn fire_timers(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut core = self.core.borrow_mut();
            let core = &mut *core;
            while let Some(Reverse((at, idx))) = core.timers.peek().copied() {
                if at > now {
                    break;
                }
                core.timers.pop();
                let Some(Some(cell)) = core.conns.get(idx) else {
                    continue;
                };
                let mut inner = cell.inner.borrow_mut();
                if inner.heap_at != Some(at) {
                    continue; // stale
                }
                inner.heap_at = None;
                match inner.timer_at {
                    Some(t) if t <= now => {
                        drop(inner);
                        due.push(cell.clone());
                    }
                    Some(t) => {
                        // Fired early: the deadline moved later since this entry was pushed.
                        inner.heap_at = Some(t);
                        core.timers.push(Reverse((t, idx)));
                    }
                    None => {}
                }
            }
        }
        for cell in due {
            {
                let mut inner = cell.inner.borrow_mut();
                inner.timer_at = None;
                if let Some(hd) = inner.handshake_deadline
                    && hd <= now
                    && !inner.connected
                {
                    inner.handshake_deadline = None;
                    stats::bump(&self.stats.handshake_timeouts);
                    debug!(remote = %inner.proto.remote_address(), "handshake timed out");
                    inner.proto.close(
                        now,
                        quinn_proto::VarInt::from_u32(close_code::HANDSHAKE_TIMEOUT),
                        Bytes::from_static(b"handshake timeout"),
                    );
                }
                inner.proto.handle_timeout(now);
            }
            queue_dirty(&cell);
        }
    }

    fn retry_blocked(&self) {
        let mut core = self.core.borrow_mut();
        let Some(b) = core.blocked.take() else {
            return;
        };
        let r = self
            .io
            .send(b.destination, b.ecn, &b.data, b.segment_size, b.src_ip);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => core.blocked = Some(b),
            _ => self.count_sent(b.data.len(), b.segment_size),
        }
    }

    fn count_sent(&self, len: usize, segment_size: Option<usize>) {
        let segs = match segment_size {
            Some(s) if s > 0 => len.div_ceil(s),
            _ => 1,
        };
        stats::add(&self.stats.datagrams_out, segs as u64);
        stats::add(&self.stats.bytes_out, len as u64);
    }

    /// Sends, or parks the bytes when the socket buffer is full. Returns false when parked.
    fn transmit(
        &self,
        core: &mut Core,
        destination: SocketAddr,
        ecn: Option<quinn_proto::EcnCodepoint>,
        data: &[u8],
        segment_size: Option<usize>,
        src_ip: Option<IpAddr>,
    ) -> bool {
        if core.blocked.is_some() {
            // Responses to strangers (version negotiation, resets, retries) are best effort.
            return false;
        }
        match self.io.send(destination, ecn, data, segment_size, src_ip) {
            Ok(()) => {
                self.count_sent(data.len(), segment_size);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stats::bump(&self.stats.send_blocked);
                core.blocked = Some(Blocked {
                    destination,
                    ecn,
                    data: data.to_vec(),
                    segment_size,
                    src_ip,
                });
                self.signal.notify();
                false
            }
            Err(e) => {
                stats::bump(&self.stats.send_errors);
                debug!(error = %e, "send failed");
                true
            }
        }
    }

    /// Drives every connection touched since the last flush, then sends collected forwards.
    pub(crate) fn flush(&self, now: Instant) {
        self.accepted.set(false);
        loop {
            let dirty = std::mem::take(&mut *self.signal.dirty.borrow_mut());
            if dirty.is_empty() {
                break;
            }
            for cell in dirty {
                if self.core.borrow().blocked.is_some() {
                    // Keep it queued; the driver resumes once the socket drains.
                    self.signal.dirty.borrow_mut().push(cell);
                    continue;
                }
                cell.inner.borrow_mut().dirty = false;
                self.drive(now, &cell);
            }
            if self.core.borrow().blocked.is_some() {
                break;
            }
        }
        let batches: Vec<(usize, Vec<Forwarded>)> = {
            let mut core = self.core.borrow_mut();
            core.forward
                .iter_mut()
                .enumerate()
                .filter(|(_, q)| !q.is_empty())
                .map(|(i, q)| (i, std::mem::take(q)))
                .collect()
        };
        for (owner, batch) in batches {
            self.send_forward(owner, batch);
        }
        if self.shutting_down.get() {
            self.check_shutdown();
        }
    }

    fn drive(&self, now: Instant, cell: &ConnRef) {
        let mut core_guard = self.core.borrow_mut();
        let core = &mut *core_guard;
        let mut inner = cell.inner.borrow_mut();
        let mut drained = false;
        let mut newly_connected = false;
        loop {
            let mut progress = false;
            while let Some(ev) = inner.proto.poll_endpoint_events() {
                progress = true;
                if ev.is_drained() {
                    drained = true;
                }
                let ch = inner.handle;
                if let Some(cev) = core.endpoint.handle_event(ch, ev) {
                    inner.proto.handle_event(cev);
                }
            }
            while let Some(ev) = inner.proto.poll() {
                progress = true;
                match ev {
                    Event::HandshakeDataReady => {}
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
                    Event::Stream(se) => on_stream_event(&mut inner, se),
                    Event::DatagramReceived => {
                        inner.wakers.wake_datagram();
                    }
                    Event::DatagramsUnblocked => {}
                }
            }
            if newly_connected {
                newly_connected = false;
                if std::mem::take(&mut inner.counts_as_handshake) {
                    core.handshaking = core.handshaking.saturating_sub(1);
                }
                stats::bump(&self.stats.connections_established);
                if self.server_config.is_some() {
                    // Authorise and start the handler; may close the connection.
                    drop(inner);
                    self.on_connected(now, cell);
                    inner = cell.inner.borrow_mut();
                    progress = true;
                }
            }
            // The handler is gone and every finished stream is acknowledged: close.
            if inner.handler_done && inner.unacked.is_empty() && !inner.proto.is_closed() {
                inner.proto.close(
                    now,
                    quinn_proto::VarInt::from_u32(close_code::NO_ERROR),
                    Bytes::new(),
                );
                progress = true;
            }
            // Send.
            let mtu = usize::from(inner.proto.current_mtu());
            let max_segments = self.io.max_segments(mtu);
            loop {
                if core.blocked.is_some() {
                    break;
                }
                core.send_buf.clear();
                let Some(t) = inner
                    .proto
                    .poll_transmit(now, max_segments, &mut core.send_buf)
                else {
                    break;
                };
                progress = true;
                let buf = std::mem::take(&mut core.send_buf);
                let sent = self.transmit(
                    core,
                    t.destination,
                    t.ecn,
                    &buf[..t.size],
                    t.segment_size,
                    t.src_ip,
                );
                core.send_buf = buf;
                if !sent {
                    // Parked; come back to this connection once the socket drains.
                    drop(inner);
                    drop(core_guard);
                    if !cell.inner.borrow().dirty {
                        cell.inner.borrow_mut().dirty = true;
                        self.signal.dirty.borrow_mut().push(cell.clone());
                    }
                    return;
                }
            }
            if !progress {
                break;
            }
        }
        if drained {
            let ch = inner.handle;
            if std::mem::take(&mut inner.counts_as_handshake) {
                core.handshaking = core.handshaking.saturating_sub(1);
            }
            if inner.lost.is_none() {
                inner.lost = Some(quinn_proto::ConnectionError::LocallyClosed);
            }
            inner.wakers.wake_all();
            inner.timer_at = None;
            inner.heap_at = None;
            if let Some(id) = inner.session.take() {
                match self.board.lock() {
                    Ok(mut b) => b.remove(&id),
                    Err(p) => p.into_inner().remove(&id),
                };
            }
            if let Some(slot) = core.conns.get_mut(ch.0) {
                *slot = None;
            }
            core.live = core.live.saturating_sub(1);
            stats::drop_one(&self.stats.connections_open);
            return;
        }
        // Re-arm the timer.
        let proto_deadline = inner.proto.poll_timeout();
        let deadline = match (proto_deadline, inner.handshake_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        inner.timer_at = deadline;
        if let Some(at) = deadline
            && inner.heap_at.is_none_or(|h| at < h)
        {
            // Only an earlier deadline needs a new entry; a later one is found when the
            // current entry fires.
            inner.heap_at = Some(at);
            core.timers.push(Reverse((at, inner.handle.0)));
            // Superseded entries pile up; rebuild the heap from the live ones when they
            // outnumber the connections, so it stays O(connections).
            if core.timers.len() > 2 * core.live + 1024 {
                let own = (inner.handle.0, inner.heap_at);
                let fresh: BinaryHeap<_> = core
                    .conns
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| {
                        if i == own.0 {
                            return own.1.map(|t| Reverse((t, i)));
                        }
                        let t = c.as_ref()?.inner.try_borrow().ok()?.heap_at?;
                        Some(Reverse((t, i)))
                    })
                    .collect();
                core.timers = fresh;
            }
            if self.sleeping_until.get().is_none_or(|s| at < s) {
                self.signal.notify();
            }
        }
    }

    /// The handshake finished: find the peer, check the service and its scope, start the
    /// handler. Unknown keys never reach an authenticated handler.
    fn on_connected(&self, now: Instant, cell: &ConnRef) {
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
        let Some((service, handler)) = alpn
            .as_deref()
            .and_then(|a| self.router.get(a))
            .map(|r| (r.info, r.handler.clone()))
        else {
            // TLS only negotiates offered ALPNs; this is a bug guard, not a peer error.
            error!(%remote, "connection without a served ALPN");
            crate::conn::close_cell(cell, close_code::PROTOCOL_ERROR, b"no service");
            return;
        };
        let alpn_str = String::from_utf8_lossy(service.alpn).into_owned();
        let peer = match fingerprint {
            Some(fp) => match self.identities.by_fingerprint(&fp) {
                Ok(p) => p,
                Err(e) => {
                    error!(%remote, error = %e, "identity lookup failed");
                    None
                }
            },
            None => None,
        };
        let refuse = |code: u32, reason: &str, msg: String| {
            stats::bump(&self.stats.auth_failures);
            if code == close_code::UNAUTHORIZED {
                let mut p = match self.penalties.lock() {
                    Ok(p) => p,
                    Err(p) => p.into_inner(),
                };
                if let Some(penalty) = p.record_failure(remote.ip(), now) {
                    warn!(
                        target: "alknet::auth",
                        source = %remote.ip(),
                        penalty_secs = penalty.as_secs(),
                        "source penalised after repeated authentication failures"
                    );
                }
            }
            warn!(
                target: "alknet::auth",
                %remote,
                alpn = %alpn_str,
                fingerprint = %fingerprint.map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
                reason,
                "authentication failed"
            );
            crate::conn::close_cell(cell, code, msg.as_bytes());
        };
        let auth = match peer {
            Some(p) if p.enabled => {
                if let Some(scope) = service.scope
                    && !p.has_scope(scope)
                {
                    refuse(
                        close_code::FORBIDDEN,
                        "missing scope",
                        format!("peer {} lacks scope `{scope}` for {alpn_str}", p.peer_id),
                    );
                    return;
                }
                AuthContext {
                    identity: Some(Identity {
                        id: p.peer_id.clone(),
                    }),
                    scopes: p.scopes.clone().into(),
                    alpn: service.alpn,
                    remote_addr: remote,
                    tls_client_fingerprint: fingerprint,
                    forwarded_for: None,
                }
            }
            Some(p) if !service.anonymous => {
                refuse(
                    close_code::UNAUTHORIZED,
                    "peer disabled",
                    format!("peer {} is disabled", p.peer_id),
                );
                return;
            }
            None if !service.anonymous => {
                let msg = match fingerprint {
                    Some(fp) => {
                        format!("unknown client key {fp}; add it to [[peers]] in the server config")
                    }
                    None => "client certificate required".to_owned(),
                };
                refuse(close_code::UNAUTHORIZED, "unknown key", msg);
                return;
            }
            _ => AuthContext {
                identity: None,
                scopes: Arc::from(Vec::new()),
                alpn: service.alpn,
                remote_addr: remote,
                tls_client_fingerprint: fingerprint,
                forwarded_for: None,
            },
        };
        {
            let mut inner = cell.inner.borrow_mut();
            inner.alpn = Some(service.alpn);
            inner.peer = auth.identity.as_ref().map(|i| i.id.clone());
            inner.since = now;
            let id = self.next_session.get();
            self.next_session.set(id + 1);
            inner.session = Some(id);
            let info = SessionInfo {
                peer: inner.peer.clone().unwrap_or_else(|| "anonymous".into()),
                alpn: alpn_str.clone(),
                remote: remote.to_string(),
                since_unix: crate::ops::control::unix_now(),
                shard: self.id,
            };
            match self.board.lock() {
                Ok(mut b) => b.insert(id, info),
                Err(p) => p.into_inner().insert(id, info),
            };
        }
        info!(
            %remote,
            alpn = %alpn_str,
            peer = %auth.identity.as_ref().map(|i| i.id.as_str()).unwrap_or("anonymous"),
            "connection established"
        );
        let conn = Connection::new(cell.clone());
        crate::service::spawn_handler(cell.clone(), handler.serve(conn, auth));
    }

    fn check_shutdown(&self) {
        if self.core.borrow().live == 0 {
            self.exit.set(true);
            // Wake the other tasks so they notice.
            self.signal.notify();
            if let Some(tx) = self.peers.get(self.id) {
                let _ = tx.try_send(ShardMsg::Datagrams(Vec::new()));
            }
        }
    }
}

fn on_stream_event(inner: &mut ConnInner, ev: StreamEvent) {
    match ev {
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

/// Lets other tasks of the shard run before continuing.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Queues a connection for driving without waking the driver (the caller flushes).
fn queue_dirty(cell: &ConnRef) {
    let mut inner = cell.inner.borrow_mut();
    if !inner.dirty {
        inner.dirty = true;
        drop(inner);
        cell.signal.dirty.borrow_mut().push(cell.clone());
    }
}

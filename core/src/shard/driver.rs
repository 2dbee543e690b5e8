//! The thin monoio layer under a [`ShardState`]: it moves datagrams, messages and wake-ups,
//! and decides nothing.
//!
//! Three tasks drive a shard, all on its thread:
//! * the receiver waits for the socket to be readable (one poll on the ring), reads whole
//!   batches with quinn-udp, splits GRO batches and feeds each datagram to the state, then
//!   flushes, so every connection the batch touched is driven once;
//! * the inbox takes messages from other shards and the control plane, a bounded number per
//!   turn, and lets the runtime park between turns so a flooded inbox cannot starve the
//!   socket or the timers;
//! * the waker sleeps until the state's next deadline or until a handler queues a
//!   connection, fires what is due, and waits for a full socket to drain.
//!
//! Each wake-up reads the clock once and passes that `now` to the state. A flush pulls
//! transmits until the state has none (or the socket is full: the transmit is parked here,
//! and the waker resends it when the socket is writable), hands forwards to their shards,
//! and turns `Serve` events into handler tasks with panic isolation and a connection span.

use crate::conn::{ConnRef, DriverSignal};
use crate::identity::AuthContext;
use crate::net::udp::UdpIo;
use crate::ops::stats::{self, ShardStats};
use crate::shard::state::{ShardEvent, ShardState};
use crate::shard::{ForwardBatch, Service, ShardMsg};
use bytes::BytesMut;
use quinn_proto::{EcnCodepoint, Transmit};
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, error};

/// Batches read per wake-up before the receiver flushes and yields.
const RECV_BUDGET: usize = 16;
/// Capacity of the transmit buffer: one GSO batch.
const SEND_BUF: usize = 64 * 1024;

/// A transmit the socket had no room for.
struct Parked {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    data: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<IpAddr>,
}

/// One shard's state with its socket and queues.
pub(crate) struct Driver {
    state: RefCell<ShardState>,
    signal: Rc<DriverSignal>,
    io: UdpIo,
    peers: Vec<flume::Sender<ShardMsg>>,
    stats: Arc<ShardStats>,
    id: usize,
    send_buf: RefCell<Vec<u8>>,
    parked: RefCell<Option<Parked>>,
    /// While the waker sleeps: until when (`Some(None)`: until signalled).
    asleep: Cell<Option<Option<Instant>>>,
    exit: Cell<bool>,
}

impl Driver {
    /// Wraps a state; `peers[i]` reaches shard `i` (this one included).
    pub(crate) fn new(
        state: ShardState,
        io: UdpIo,
        peers: Vec<flume::Sender<ShardMsg>>,
    ) -> Rc<Self> {
        Rc::new(Self {
            signal: state.signal().clone(),
            stats: state.stats().clone(),
            id: state.id(),
            state: RefCell::new(state),
            io,
            peers,
            send_buf: RefCell::new(Vec::with_capacity(SEND_BUF)),
            parked: RefCell::new(None),
            asleep: Cell::new(None),
            exit: Cell::new(false),
        })
    }

    /// The state, for the client side (starting connections) and counts.
    pub(crate) fn state(&self) -> &RefCell<ShardState> {
        &self.state
    }

    /// The socket.
    pub(crate) fn io(&self) -> &UdpIo {
        &self.io
    }

    /// The receiver task: readiness from the ring, batches from quinn-udp.
    pub(crate) async fn run_receiver(self: Rc<Self>) {
        loop {
            if self.exit.get() {
                return;
            }
            if let Err(e) = self.io.readable().await {
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
                    let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    for seg in bytes.chunks(stride.max(1)) {
                        let urgent = {
                            let mut state = self.state.borrow_mut();
                            state.handle_datagram(
                                now,
                                meta.addr,
                                meta.dst_ip,
                                ecn,
                                BytesMut::from(seg),
                            );
                            state.wants_flush()
                        };
                        if urgent {
                            // Send an accepted connection's first flight now: a burst of
                            // Initials costs a key exchange and a signature each, and the
                            // first client should not wait for the last one's.
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

    /// The inbox task: forwarded datagrams and control messages, [`RECV_BUDGET`] messages
    /// per turn.
    ///
    /// A receive from a non-empty queue completes without yielding, so an inbox kept full
    /// by another shard would hold this thread: no socket reads, no timers. After each
    /// turn that left messages queued, the task therefore waits for the runtime to park
    /// once. A plain yield would not do: monoio fires timers only when it parks, and parks
    /// only when no task is runnable, so a task that wakes itself starves every timer of
    /// the shard.
    pub(crate) async fn run_inbox(self: Rc<Self>, rx: flume::Receiver<ShardMsg>) {
        while let Ok(msg) = rx.recv_async().await {
            let now = Instant::now();
            {
                let mut state = self.state.borrow_mut();
                state.handle_message(now, msg);
                for _ in 1..RECV_BUDGET {
                    match rx.try_recv() {
                        Ok(m) => state.handle_message(now, m),
                        Err(_) => break,
                    }
                }
            }
            self.flush(now);
            if self.exit.get() {
                return;
            }
            if !rx.is_empty() {
                // A timer due now: it fires when the runtime next parks (within 1 ms,
                // monoio's timer tick), after every other runnable task had its turn.
                monoio::time::sleep(Duration::ZERO).await;
            }
        }
    }

    /// The waker task: timers, handler-initiated work, send back-pressure. Returns when the
    /// shard has finished draining.
    pub(crate) async fn run_waker(self: Rc<Self>) {
        loop {
            if self.parked.borrow().is_some() {
                if self.io.writable().await.is_ok() {
                    self.send_parked();
                }
                self.flush(Instant::now());
                continue;
            }
            let deadline = self.state.borrow_mut().poll_timeout();
            self.asleep.set(Some(deadline));
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
            self.asleep.set(None);
            let now = Instant::now();
            self.state.borrow_mut().handle_timeout(now);
            self.flush(now);
            if self.exit.get() {
                return;
            }
        }
    }

    /// Sends what the state has to send, hands forwards to their shards, starts handlers.
    pub(crate) fn flush(&self, now: Instant) {
        let mut state = self.state.borrow_mut();
        if self.parked.borrow().is_none() {
            let mut buf = self.send_buf.borrow_mut();
            while let Some(t) = state.poll_transmit(now, &mut buf) {
                if !self.transmit(&t, &buf) {
                    break;
                }
            }
        }
        while let Some((owner, batch)) = state.poll_forward() {
            self.send_forward(owner, batch);
        }
        while let Some(ev) = state.poll_event() {
            if let ShardEvent::Serve {
                conn,
                auth,
                service,
            } = ev
            {
                spawn_handler(conn, auth, service);
            }
        }
        // A deadline earlier than the one the waker sleeps until: wake it to re-arm. (A
        // running waker reads the deadline itself before it sleeps.)
        if let Some(asleep) = self.asleep.get()
            && let Some(at) = state.poll_timeout()
            && asleep.is_none_or(|s| at < s)
        {
            self.signal.notify();
        }
        if state.is_finished() && !self.exit.replace(true) {
            // Wake the other tasks so they notice.
            self.signal.notify();
            if let Some(tx) = self.peers.get(self.id) {
                let _ = tx.try_send(ShardMsg::Datagrams(ForwardBatch::default()));
            }
        }
    }

    /// Queues a batch in its owner's inbox. A full or closed inbox drops it (counted); its
    /// bytes go back to the owner's budget with it.
    fn send_forward(&self, owner: usize, batch: ForwardBatch) {
        let n = batch.len() as u64;
        match self.peers.get(owner) {
            Some(tx) => match tx.try_send(ShardMsg::Datagrams(batch)) {
                Ok(()) => stats::add(&self.stats.forwarded_out, n),
                Err(_) => stats::add(&self.stats.forward_dropped, n),
            },
            None => stats::add(&self.stats.forward_dropped, n),
        }
    }

    /// Sends one transmit, or parks it when the socket buffer is full (false).
    fn transmit(&self, t: &Transmit, buf: &[u8]) -> bool {
        let Some(data) = buf.get(..t.size) else {
            return true;
        };
        match self
            .io
            .send(t.destination, t.ecn, data, t.segment_size, t.src_ip)
        {
            Ok(()) => {
                self.count_sent(data.len(), t.segment_size);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stats::bump(&self.stats.send_blocked);
                *self.parked.borrow_mut() = Some(Parked {
                    destination: t.destination,
                    ecn: t.ecn,
                    data: data.to_vec(),
                    segment_size: t.segment_size,
                    src_ip: t.src_ip,
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

    fn send_parked(&self) {
        let mut parked = self.parked.borrow_mut();
        let Some(p) = parked.take() else {
            return;
        };
        match self
            .io
            .send(p.destination, p.ecn, &p.data, p.segment_size, p.src_ip)
        {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => *parked = Some(p),
            _ => self.count_sent(p.data.len(), p.segment_size),
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
}

/// Starts a service's handler for one connection, inside a `connection` span carrying the
/// ALPN, the remote address and the peer. A panic closes that connection only (with
/// [`close_code::INTERNAL`]), is counted and logged; a normal return lets the state close
/// the connection once the data sent is acknowledged.
pub(crate) fn spawn_handler(cell: ConnRef, auth: AuthContext, service: Service) {
    let alpn = String::from_utf8_lossy(auth.alpn).into_owned();
    let span = tracing::info_span!(
        "connection",
        alpn = %alpn,
        remote = %auth.remote_addr,
        peer = tracing::field::Empty,
    );
    if let Some(id) = &auth.identity {
        span.record("peer", id.id.as_str());
    }
    let conn = crate::shard::state::connection(&cell);
    // The service layer's guard: a panic closes this connection only (counted, logged,
    // `INTERNAL`); a normal return lets the shard close once everything is acknowledged.
    crate::service::spawn_handler(cell, service.handler.serve(conn, auth).instrument(span));
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

//! A handler's view of one QUIC connection, and the shared cell behind it.
//!
//! The connection state (`quinn_proto::Connection`) lives in an `Rc<RefCell<…>>` shared by
//! the shard driver and the handler's handles; everything runs on one thread, and no borrow
//! is ever held across an `.await`. A handle that changes the connection (writes, reads that
//! open flow-control credit, accepts, closes) marks it dirty and wakes the driver, which then
//! produces packets for it along with every other connection touched in the same turn, so
//! ACKs and responses share datagrams and syscalls.
//!
//! Every wait exists once, as a `poll_*` method for poll-based libraries (h3, hyper-style
//! I/O traits); the `async fn`s are those methods driven by [`std::future::poll_fn`], plus
//! a guard that removes the waker when the future is dropped unfinished. Each method's doc
//! states what happens when its caller stops polling.
//!
//! Wakers are stored so that they neither pile up nor outlive their waiter: a stream half
//! has one waker per kind of wait (read, write, end), replaced when polled again; the
//! connection-level waits (accept, open, datagram, handshake, close) keep one slot per
//! waiter (`WaiterSlots`), owned by the waiting future or handle and freed when it is
//! dropped. The shard wakes them only through the `Wakers::wake_*` methods.
//! This module does not drive the connection: the shard does.

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, StreamId, VarInt};
use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};
use thiserror::Error;

mod recv;
mod send;

pub use recv::RecvStream;
pub use send::SendStream;

/// Wakes the shard driver and queues connections that need driving.
#[derive(Default)]
pub(crate) struct DriverSignal {
    pub(crate) dirty: RefCell<Vec<ConnRef>>,
    waker: RefCell<Option<Waker>>,
    notified: Cell<bool>,
}

impl DriverSignal {
    pub(crate) fn notify(&self) {
        self.notified.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

pub(crate) type ConnRef = Rc<ConnCell>;

pub(crate) struct ConnCell {
    pub(crate) inner: RefCell<ConnInner>,
    pub(crate) signal: Rc<DriverSignal>,
    pub(crate) stats: std::sync::Arc<crate::ops::stats::ShardStats>,
}

/// Where one waiter keeps its place in a [`WaiterSlots`]: `None` until it first has to wait.
/// The waiter (a `Connection` handle for its `poll_*` methods, or the future of an `async fn`)
/// owns the slot and frees it when dropped.
pub(crate) type WaitKey = Cell<Option<usize>>;

/// The wakers of the tasks waiting for one connection-level condition (a stream to accept, a
/// stream credit, a datagram, the handshake, the close).
///
/// One slot per live waiter, addressed by the waiter's [`WaitKey`]: polling again replaces the
/// waker in place (or keeps it when it would wake the same task), and the waiter frees its
/// slot when it is dropped, so the storage holds at most one waker per waiter that still
/// exists, however often it polls and however many waiters were cancelled. Waking takes the
/// wakers and leaves the slots with their owners. A linear scan finds a free slot: a
/// connection has a handful of such waiters, not thousands.
#[derive(Default)]
pub(crate) struct WaiterSlots {
    /// `None`: a free slot; `Some(None)`: a waiter with nothing to wake now.
    slots: Vec<Option<Option<Waker>>>,
}

impl WaiterSlots {
    /// Stores `waker` in `key`'s slot, taking a slot first if the key has none.
    fn register(&mut self, key: &WaitKey, waker: &Waker) {
        if let Some(Some(held)) = key.get().and_then(|k| self.slots.get_mut(k)) {
            match held {
                Some(w) if w.will_wake(waker) => {}
                _ => *held = Some(waker.clone()),
            }
            return;
        }
        let entry = Some(Some(waker.clone()));
        let k = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                if let Some(slot) = self.slots.get_mut(free) {
                    *slot = entry;
                }
                free
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        key.set(Some(k));
    }

    /// Forgets the waker in `key`'s slot (the wait is over) and keeps the slot.
    fn clear(&mut self, key: &WaitKey) {
        if let Some(Some(held)) = key.get().and_then(|k| self.slots.get_mut(k)) {
            *held = None;
        }
    }

    /// Frees `key`'s slot.
    fn release(&mut self, key: &WaitKey) {
        if let Some(slot) = key.take().and_then(|k| self.slots.get_mut(k)) {
            *slot = None;
        }
        while let Some(None) = self.slots.last() {
            self.slots.pop();
        }
    }

    /// Wakes every waiter; their slots stay theirs.
    fn wake(&mut self) {
        for held in self.slots.iter_mut().flatten() {
            if let Some(w) = held.take() {
                w.wake();
            }
        }
    }

    /// Wakers stored now.
    #[cfg(test)]
    fn stored(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Some(Some(_))))
            .count()
    }
}

/// One waker per stream: a stream half has one reader or one writer at a time (its methods
/// take `&mut self`), so polling again replaces the waker. The stream's drop, the end of a
/// wait and the cancel of an `async fn` each remove it; a wake-up removes it too.
#[derive(Default)]
pub(crate) struct StreamWakers {
    map: HashMap<StreamId, Waker>,
}

impl StreamWakers {
    fn register(&mut self, id: StreamId, waker: &Waker) {
        match self.map.entry(id) {
            Entry::Occupied(mut e) => {
                if !e.get().will_wake(waker) {
                    e.insert(waker.clone());
                }
            }
            Entry::Vacant(e) => {
                e.insert(waker.clone());
            }
        }
    }

    fn remove(&mut self, id: StreamId) {
        self.map.remove(&id);
    }

    fn wake(&mut self, id: StreamId) {
        if let Some(w) = self.map.remove(&id) {
            w.wake();
        }
    }

    fn wake_all(&mut self) {
        self.map.drain().for_each(|(_, w)| w.wake());
    }
}

impl StreamWakers {
    /// The poll of one stream half is pending: store its waker and note it in `waiting`.
    pub(super) fn pending(&mut self, id: StreamId, waker: &Waker, waiting: &Cell<bool>) {
        self.register(id, waker);
        waiting.set(true);
    }

    /// The poll of one stream half has its answer: remove the waker it may have left.
    pub(super) fn done(&mut self, id: StreamId, waiting: &Cell<bool>) {
        if waiting.replace(false) {
            self.remove(id);
        }
    }
}

/// Which per-stream waker an `async fn` of a stream half waits with.
#[derive(Clone, Copy, Debug)]
pub(super) enum StreamSlot {
    Read,
    Write,
    Stopped,
}

/// Removes a stream half's waker when the future of an `async fn` is dropped while it is
/// stored (the wait was cancelled). A finished wait has removed it already.
pub(super) struct StreamCancel<'a> {
    pub(super) cell: &'a ConnCell,
    pub(super) id: StreamId,
    pub(super) slot: StreamSlot,
    pub(super) waiting: &'a Cell<bool>,
}

impl Drop for StreamCancel<'_> {
    fn drop(&mut self) {
        if self.waiting.get()
            && let Ok(mut inner) = self.cell.inner.try_borrow_mut()
        {
            inner.wakers.stream(self.slot).done(self.id, self.waiting);
        }
    }
}

/// What a connection-level waiter waits for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Accept(Dir),
    Open(Dir),
    Datagram,
    Connected,
    Closed,
}

/// Every waker of one connection's handles. The shard wakes them through the `wake_*`
/// methods when quinn-proto reports the matching event; the handles register and remove
/// their own.
#[derive(Default)]
pub(crate) struct Wakers {
    accept: [WaiterSlots; 2],
    open: [WaiterSlots; 2],
    datagram: WaiterSlots,
    connected: WaiterSlots,
    closed: WaiterSlots,
    read: StreamWakers,
    write: StreamWakers,
    /// Waiting for the send half to end: all data acknowledged, or stopped by the peer.
    stopped: StreamWakers,
}

impl Wakers {
    fn slots(&mut self, wait: Wait) -> &mut WaiterSlots {
        match wait {
            Wait::Accept(dir) => &mut self.accept[dir as usize],
            Wait::Open(dir) => &mut self.open[dir as usize],
            Wait::Datagram => &mut self.datagram,
            Wait::Connected => &mut self.connected,
            Wait::Closed => &mut self.closed,
        }
    }

    pub(super) fn stream(&mut self, slot: StreamSlot) -> &mut StreamWakers {
        match slot {
            StreamSlot::Read => &mut self.read,
            StreamSlot::Write => &mut self.write,
            StreamSlot::Stopped => &mut self.stopped,
        }
    }

    /// Stream `id` has data, an end or a reset to read (`StreamEvent::Readable`).
    pub(crate) fn wake_read(&mut self, id: StreamId) {
        self.read.wake(id);
    }

    /// Stream `id` can take more data (`StreamEvent::Writable`).
    pub(crate) fn wake_write(&mut self, id: StreamId) {
        self.write.wake(id);
    }

    /// The send half of `id` ended: the peer acknowledged all of it (`StreamEvent::Finished`)
    /// or asked to stop (`StreamEvent::Stopped`). Wakes its writer and whoever waits for the
    /// end.
    pub(crate) fn wake_send_ended(&mut self, id: StreamId) {
        self.write.wake(id);
        self.stopped.wake(id);
    }

    /// The peer opened a stream of `dir` (`StreamEvent::Opened`).
    pub(crate) fn wake_accept(&mut self, dir: Dir) {
        self.accept[dir as usize].wake();
    }

    /// The peer raised the limit of streams of `dir` this side may open
    /// (`StreamEvent::Available`).
    pub(crate) fn wake_open(&mut self, dir: Dir) {
        self.open[dir as usize].wake();
    }

    /// A datagram arrived (`Event::DatagramReceived`).
    pub(crate) fn wake_datagram(&mut self) {
        self.datagram.wake();
    }

    /// The handshake completed (`Event::Connected`).
    pub(crate) fn wake_connected(&mut self) {
        self.connected.wake();
    }

    /// The connection ended: every waiter learns it.
    pub(crate) fn wake_all(&mut self) {
        let Wakers {
            accept,
            open,
            datagram,
            connected,
            closed,
            read,
            write,
            stopped,
        } = self;
        for s in accept.iter_mut().chain(open.iter_mut()) {
            s.wake();
        }
        datagram.wake();
        connected.wake();
        closed.wake();
        read.wake_all();
        write.wake_all();
        stopped.wake_all();
    }

    /// How many wakers are stored now, over all waiters of the connection.
    #[cfg(test)]
    pub(crate) fn stored(&self) -> usize {
        let slots: usize = self
            .accept
            .iter()
            .chain(self.open.iter())
            .chain([&self.datagram, &self.connected, &self.closed])
            .map(WaiterSlots::stored)
            .sum();
        slots + self.read.map.len() + self.write.map.len() + self.stopped.map.len()
    }
}

pub(crate) struct ConnInner {
    pub(crate) proto: quinn_proto::Connection,
    pub(crate) handle: ConnectionHandle,
    pub(crate) dirty: bool,
    pub(crate) connected: bool,
    pub(crate) lost: Option<ConnectionError>,
    pub(crate) wakers: Wakers,
    /// When an unfinished handshake is abandoned (its deadline sits in the shard's timer
    /// structure with quinn-proto's own).
    pub(crate) handshake_deadline: Option<Instant>,
    /// Counted in the shard's in-flight handshakes.
    pub(crate) counts_as_handshake: bool,
    /// The handler returned: close once `unacked` is empty.
    pub(crate) handler_done: bool,
    /// Streams finished by this side whose data the peer has not acknowledged yet.
    pub(crate) unacked: HashSet<StreamId>,
    pub(crate) alpn: Option<&'static [u8]>,
    pub(crate) peer: Option<String>,
    pub(crate) since: Instant,
    /// Key of this connection on the shard's session board, once authenticated.
    pub(crate) session: Option<u64>,
    /// The remote address the session board shows; follows the connection's path when it
    /// migrates.
    pub(crate) listed_remote: SocketAddr,
    /// The path MTU the session board shows.
    pub(crate) listed_mtu: u16,
    /// How often the connection may move to an address it has not used.
    pub(crate) migration: crate::shard::MigrationGate,
    /// The service takes no uni streams: the client's are stopped as they open.
    pub(crate) refuse_uni: bool,
}

impl ConnInner {
    pub(crate) fn new(
        proto: quinn_proto::Connection,
        handle: ConnectionHandle,
        now: Instant,
    ) -> Self {
        Self {
            migration: crate::shard::MigrationGate::new(proto.remote_address()),
            listed_remote: proto.remote_address(),
            listed_mtu: proto.current_mtu(),
            proto,
            handle,
            dirty: false,
            connected: false,
            lost: None,
            wakers: Wakers::default(),
            handshake_deadline: None,
            counts_as_handshake: false,
            refuse_uni: false,
            handler_done: false,
            unacked: HashSet::new(),
            alpn: None,
            peer: None,
            since: now,
            session: None,
        }
    }
}

pub(crate) fn mark_dirty(cell: &ConnRef) {
    let mut inner = cell.inner.borrow_mut();
    if !inner.dirty {
        inner.dirty = true;
        drop(inner);
        cell.signal.dirty.borrow_mut().push(cell.clone());
        cell.signal.notify();
    }
}

/// Errors of stream operations.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The peer reset the stream it was sending.
    #[error("stream reset by peer with code {0}")]
    Reset(VarInt),
    /// The peer asked this side to stop sending.
    #[error("stream stopped by peer with code {0}")]
    Stopped(VarInt),
    /// The stream was already finished or reset by this side.
    #[error("stream already closed")]
    ClosedStream,
    /// A read exceeded the caller's size limit.
    #[error("stream data exceeds the limit of {0} bytes")]
    TooLong(usize),
}

/// Errors of datagram sends.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatagramError {
    /// The peer does not accept datagrams, or they are off locally.
    #[error("datagrams are not supported on this connection")]
    Unsupported,
    /// Larger than the current maximum datagram size.
    #[error("datagram too large")]
    TooLarge,
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
}

/// One QUIC connection as a handler sees it. Cheap to clone; all clones name one connection.
///
/// Every wait comes in two forms: an `async fn` (`accept_bi`) and a `poll_*` method
/// (`poll_accept_bi`) for poll-based libraries; the `async fn` is the `poll_*` method driven
/// by [`std::future::poll_fn`]. The `poll_*` methods keep one waker per handle and kind of
/// wait: only the task that polled a handle last is woken, so poll from several tasks through
/// one clone each. The `async fn`s keep one waker per future, so any number may wait at once,
/// and a future dropped before it finished leaves no waker behind.
pub struct Connection {
    cell: ConnRef,
    keys: HandleKeys,
}

/// A handle's places in the connection-level waiter slots, used by its `poll_*` methods.
#[derive(Default)]
struct HandleKeys {
    accept: [WaitKey; 2],
    open: [WaitKey; 2],
    datagram: WaitKey,
    connected: WaitKey,
    closed: WaitKey,
}

impl HandleKeys {
    fn key(&self, wait: Wait) -> &WaitKey {
        match wait {
            Wait::Accept(dir) => &self.accept[dir as usize],
            Wait::Open(dir) => &self.open[dir as usize],
            Wait::Datagram => &self.datagram,
            Wait::Connected => &self.connected,
            Wait::Closed => &self.closed,
        }
    }
}

const WAITS: [Wait; 7] = [
    Wait::Accept(Dir::Bi),
    Wait::Accept(Dir::Uni),
    Wait::Open(Dir::Bi),
    Wait::Open(Dir::Uni),
    Wait::Datagram,
    Wait::Connected,
    Wait::Closed,
];

/// The slot of one `async fn`'s wait, freed when its future is dropped (finished or not).
struct Waiter<'a> {
    cell: &'a ConnCell,
    wait: Wait,
    key: WaitKey,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        release_key(self.cell, self.wait, &self.key);
    }
}

/// Frees a waiter's slot. Skipped when the cell is borrowed (only possible while the
/// connection itself is being torn down, when the slots go with it).
fn release_key(cell: &ConnCell, wait: Wait, key: &WaitKey) {
    if key.get().is_some()
        && let Ok(mut inner) = cell.inner.try_borrow_mut()
    {
        inner.wakers.slots(wait).release(key);
    }
}

impl Clone for Connection {
    /// Another handle on the same connection, with its own `poll_*` waker places.
    fn clone(&self) -> Self {
        Self::new(self.cell.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for wait in WAITS {
            release_key(&self.cell, wait, self.keys.key(wait));
        }
    }
}

impl Connection {
    pub(crate) fn new(cell: ConnRef) -> Self {
        Self {
            cell,
            keys: HandleKeys::default(),
        }
    }

    fn lost(&self) -> Option<ConnectionError> {
        self.cell.inner.borrow().lost.clone()
    }

    fn waiter(&self, wait: Wait) -> Waiter<'_> {
        Waiter {
            cell: &self.cell,
            wait,
            key: WaitKey::default(),
        }
    }

    /// The one implementation of every connection-level wait: `check` decides; when it has
    /// no answer the waker goes into `key`'s slot, and when it has one the slot is cleared.
    fn poll_wait<T>(
        &self,
        cx: &mut Context<'_>,
        wait: Wait,
        key: &WaitKey,
        check: impl FnOnce(&mut ConnInner) -> Option<T>,
    ) -> Poll<T> {
        let mut inner = self.cell.inner.borrow_mut();
        match check(&mut inner) {
            Some(v) => {
                inner.wakers.slots(wait).clear(key);
                Poll::Ready(v)
            }
            None => {
                inner.wakers.slots(wait).register(key, cx.waker());
                Poll::Pending
            }
        }
    }

    fn poll_accept_dir(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
        key: &WaitKey,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        let r = ready!(self.poll_wait(cx, Wait::Accept(dir), key, |inner| {
            if let Some(e) = &inner.lost {
                return Some(Err(e.clone()));
            }
            inner.proto.streams().accept(dir).map(Ok)
        }));
        if r.is_ok() {
            // Accepting may raise the peer's stream limit: let the driver announce it.
            mark_dirty(&self.cell);
        }
        Poll::Ready(r)
    }

    fn poll_open_dir(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
        key: &WaitKey,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        self.poll_wait(cx, Wait::Open(dir), key, |inner| {
            if let Some(e) = &inner.lost {
                return Some(Err(e.clone()));
            }
            inner.proto.streams().open(dir).map(Ok)
        })
    }

    fn bi(&self, id: StreamId) -> (SendStream, RecvStream) {
        (
            SendStream::new(self.cell.clone(), id),
            RecvStream::new(self.cell.clone(), id),
        )
    }

    /// Takes the next bidirectional stream the peer opened, or registers the task to be woken
    /// when there is one.
    ///
    /// Cancel-safety: a stream is taken only by the call that returns it; a caller that stops
    /// polling loses nothing. Only the task of the last poll through this handle is woken.
    pub fn poll_accept_bi(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(SendStream, RecvStream), ConnectionError>> {
        let id = ready!(self.poll_accept_dir(cx, Dir::Bi, self.keys.key(Wait::Accept(Dir::Bi))))?;
        Poll::Ready(Ok(self.bi(id)))
    }

    /// Waits for the next bidirectional stream the peer opens.
    ///
    /// Cancel-safe: dropping the future before it finishes takes no stream and leaves no
    /// waker behind.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let w = self.waiter(Wait::Accept(Dir::Bi));
        let id = poll_fn(|cx| self.poll_accept_dir(cx, Dir::Bi, &w.key)).await?;
        Ok(self.bi(id))
    }

    /// Takes the next unidirectional stream the peer opened, or registers the task to be
    /// woken when there is one.
    ///
    /// Cancel-safety: as [`poll_accept_bi`](Self::poll_accept_bi).
    pub fn poll_accept_uni(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionError>> {
        let id = ready!(self.poll_accept_dir(cx, Dir::Uni, self.keys.key(Wait::Accept(Dir::Uni))))?;
        Poll::Ready(Ok(RecvStream::new(self.cell.clone(), id)))
    }

    /// Waits for the next unidirectional stream the peer opens.
    ///
    /// Cancel-safe, as [`accept_bi`](Self::accept_bi).
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let w = self.waiter(Wait::Accept(Dir::Uni));
        let id = poll_fn(|cx| self.poll_accept_dir(cx, Dir::Uni, &w.key)).await?;
        Ok(RecvStream::new(self.cell.clone(), id))
    }

    /// Opens a bidirectional stream, or registers the task to be woken when the peer's stream
    /// limit allows one. Nothing reaches the peer until the stream is written to.
    ///
    /// Cancel-safety: a stream is opened only by the call that returns it; a caller that stops
    /// polling has opened nothing. Only the task of the last poll through this handle is
    /// woken.
    pub fn poll_open_bi(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(SendStream, RecvStream), ConnectionError>> {
        let id = ready!(self.poll_open_dir(cx, Dir::Bi, self.keys.key(Wait::Open(Dir::Bi))))?;
        Poll::Ready(Ok(self.bi(id)))
    }

    /// Opens a bidirectional stream, waiting while the peer's stream limit is reached.
    ///
    /// Cancel-safe: dropping the future before it finishes opens no stream and leaves no
    /// waker behind.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let w = self.waiter(Wait::Open(Dir::Bi));
        let id = poll_fn(|cx| self.poll_open_dir(cx, Dir::Bi, &w.key)).await?;
        Ok(self.bi(id))
    }

    /// Opens a unidirectional stream, or registers the task to be woken when the peer's
    /// stream limit allows one.
    ///
    /// Cancel-safety: as [`poll_open_bi`](Self::poll_open_bi).
    pub fn poll_open_uni(&self, cx: &mut Context<'_>) -> Poll<Result<SendStream, ConnectionError>> {
        let id = ready!(self.poll_open_dir(cx, Dir::Uni, self.keys.key(Wait::Open(Dir::Uni))))?;
        Poll::Ready(Ok(SendStream::new(self.cell.clone(), id)))
    }

    /// Opens a unidirectional stream, waiting while the peer's stream limit is reached.
    ///
    /// Cancel-safe, as [`open_bi`](Self::open_bi).
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        let w = self.waiter(Wait::Open(Dir::Uni));
        let id = poll_fn(|cx| self.poll_open_dir(cx, Dir::Uni, &w.key)).await?;
        Ok(SendStream::new(self.cell.clone(), id))
    }

    fn poll_connected_key(
        &self,
        cx: &mut Context<'_>,
        key: &WaitKey,
    ) -> Poll<Result<(), ConnectionError>> {
        self.poll_wait(cx, Wait::Connected, key, |inner| {
            if let Some(e) = &inner.lost {
                return Some(Err(e.clone()));
            }
            inner.connected.then_some(Ok(()))
        })
    }

    /// Ready once the handshake completed (client side; server handlers start after it).
    ///
    /// Cancel-safety: polling has no effect on the connection. Only the task of the last poll
    /// through this handle is woken.
    pub fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        self.poll_connected_key(cx, self.keys.key(Wait::Connected))
    }

    /// Waits until the handshake completes (client side; server handlers start after it).
    ///
    /// Cancel-safe: dropping the future leaves no waker behind.
    pub async fn connected(&self) -> Result<(), ConnectionError> {
        let w = self.waiter(Wait::Connected);
        poll_fn(|cx| self.poll_connected_key(cx, &w.key)).await
    }

    /// Sends an unreliable datagram.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), DatagramError> {
        {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Err(DatagramError::ConnectionLost(e.clone()));
            }
            inner
                .proto
                .datagrams()
                .send(data, true)
                .map_err(|e| match e {
                    quinn_proto::SendDatagramError::TooLarge => DatagramError::TooLarge,
                    _ => DatagramError::Unsupported,
                })?;
        }
        mark_dirty(&self.cell);
        Ok(())
    }

    fn poll_datagram_key(
        &self,
        cx: &mut Context<'_>,
        key: &WaitKey,
    ) -> Poll<Result<Bytes, ConnectionError>> {
        self.poll_wait(cx, Wait::Datagram, key, |inner| {
            if let Some(d) = inner.proto.datagrams().recv() {
                return Some(Ok(d));
            }
            inner.lost.clone().map(Err)
        })
    }

    /// Takes the next datagram from the peer, or registers the task to be woken when one
    /// arrives. Datagrams received before the connection ended are still returned after it.
    ///
    /// Cancel-safety: a datagram is taken only by the call that returns it. Only the task of
    /// the last poll through this handle is woken.
    pub fn poll_read_datagram(&self, cx: &mut Context<'_>) -> Poll<Result<Bytes, ConnectionError>> {
        self.poll_datagram_key(cx, self.keys.key(Wait::Datagram))
    }

    /// Waits for the next datagram from the peer.
    ///
    /// Cancel-safe: dropping the future before it finishes takes no datagram and leaves no
    /// waker behind.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        let w = self.waiter(Wait::Datagram);
        poll_fn(|cx| self.poll_datagram_key(cx, &w.key)).await
    }

    /// Largest datagram the peer accepts now, if datagrams are possible.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.cell.inner.borrow_mut().proto.datagrams().max_size()
    }

    /// Closes the connection with an application error code and reason. Unsent stream data
    /// is discarded; finish streams and wait for `SendStream::stopped` first if it matters.
    pub fn close(&self, code: u32, reason: &[u8]) {
        close_cell(&self.cell, code, reason);
    }

    /// [`close`](Self::close) with any QUIC application error code (up to 2^62 - 1), for
    /// protocols whose codes do not fit 32 bits (HTTP/3's reserved codes).
    pub fn close_with(&self, code: VarInt, reason: &[u8]) {
        close_cell_with(&self.cell, code, reason);
    }

    fn poll_closed_key(&self, cx: &mut Context<'_>, key: &WaitKey) -> Poll<ConnectionError> {
        self.poll_wait(cx, Wait::Closed, key, |inner| inner.lost.clone())
    }

    /// Ready with the reason once the connection is closed, by either side or by a timeout.
    ///
    /// Cancel-safety: polling has no effect on the connection. Only the task of the last poll
    /// through this handle is woken.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<ConnectionError> {
        self.poll_closed_key(cx, self.keys.key(Wait::Closed))
    }

    /// Waits until the connection is closed, by either side or by a timeout.
    ///
    /// Cancel-safe: dropping the future leaves no waker behind.
    pub async fn closed(&self) -> ConnectionError {
        let w = self.waiter(Wait::Closed);
        poll_fn(|cx| self.poll_closed_key(cx, &w.key)).await
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.lost()
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.cell.inner.borrow().proto.remote_address()
    }

    /// Runs `task` on this shard alongside the handler, through the guarded spawn
    /// ([`Spawner`](crate::service::Spawner)): if it panics, the panic is caught, counted and
    /// logged, and this connection (only) is closed with
    /// [`close_code::INTERNAL`](crate::close_code::INTERNAL).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        crate::service::spawn_for(self.cell.clone(), task);
    }

    /// Transport statistics.
    pub fn stats(&self) -> quinn_proto::ConnectionStats {
        self.cell.inner.borrow().proto.stats()
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.cell.inner.borrow().proto.rtt()
    }
}

pub(crate) fn close_cell(cell: &ConnRef, code: u32, reason: &[u8]) {
    close_cell_with(cell, VarInt::from_u32(code), reason);
}

fn close_cell_with(cell: &ConnRef, code: VarInt, reason: &[u8]) {
    {
        let mut inner = cell.inner.borrow_mut();
        if inner.lost.is_some() || inner.proto.is_closed() {
            return;
        }
        inner
            .proto
            .close(Instant::now(), code, Bytes::copy_from_slice(reason));
    }
    mark_dirty(cell);
}

#[cfg(test)]
mod tests;

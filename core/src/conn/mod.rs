//! A handler's async view of one QUIC connection, and the shared cell behind it.
//!
//! The connection state (`quinn_proto::Connection`) lives in an `Rc<RefCell<…>>` shared by
//! the shard driver and the handler's handles; everything runs on one thread, and no borrow
//! is ever held across an `.await`. A handle that changes the connection (writes, reads that
//! open flow-control credit, accepts, closes) marks it dirty and wakes the driver, which then
//! produces packets for it along with every other connection touched in the same turn, so
//! ACKs and responses share datagrams and syscalls.

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, StreamId, VarInt};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
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

#[derive(Default)]
pub(crate) struct Wakers {
    pub(crate) accept: [Vec<Waker>; 2],
    pub(crate) open: [Vec<Waker>; 2],
    pub(crate) read: HashMap<StreamId, Waker>,
    pub(crate) write: HashMap<StreamId, Waker>,
    pub(crate) datagram: Vec<Waker>,
    pub(crate) connected: Vec<Waker>,
    pub(crate) closed: Vec<Waker>,
}

impl Wakers {
    pub(crate) fn wake_all(&mut self) {
        let Wakers {
            accept,
            open,
            read,
            write,
            datagram,
            connected,
            closed,
        } = self;
        for w in accept.iter_mut().chain(open.iter_mut()) {
            w.drain(..).for_each(Waker::wake);
        }
        read.drain().for_each(|(_, w)| w.wake());
        write.drain().for_each(|(_, w)| w.wake());
        datagram.drain(..).for_each(Waker::wake);
        connected.drain(..).for_each(Waker::wake);
        closed.drain(..).for_each(Waker::wake);
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
}

impl ConnInner {
    pub(crate) fn new(
        proto: quinn_proto::Connection,
        handle: ConnectionHandle,
        now: Instant,
    ) -> Self {
        Self {
            proto,
            handle,
            dirty: false,
            connected: false,
            lost: None,
            wakers: Wakers::default(),
            handshake_deadline: None,
            counts_as_handshake: false,
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
#[derive(Clone)]
pub struct Connection {
    cell: ConnRef,
}

impl Connection {
    pub(crate) fn new(cell: ConnRef) -> Self {
        Self { cell }
    }

    fn lost(&self) -> Option<ConnectionError> {
        self.cell.inner.borrow().lost.clone()
    }

    /// Waits for the next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.accept(Dir::Bi).await?;
        Ok((
            SendStream::new(self.cell.clone(), id),
            RecvStream::new(self.cell.clone(), id),
        ))
    }

    /// Waits for the next unidirectional stream the peer opens.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let id = self.accept(Dir::Uni).await?;
        Ok(RecvStream::new(self.cell.clone(), id))
    }

    async fn accept(&self, dir: Dir) -> Result<StreamId, ConnectionError> {
        let id = poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Poll::Ready(Err(e.clone()));
            }
            if let Some(id) = inner.proto.streams().accept(dir) {
                return Poll::Ready(Ok(id));
            }
            inner.wakers.accept[dir as usize].push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        // Accepting may raise the peer's stream limit: let the driver announce it.
        mark_dirty(&self.cell);
        Ok(id)
    }

    /// Opens a bidirectional stream, waiting while the peer's stream limit is reached.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.open(Dir::Bi).await?;
        Ok((
            SendStream::new(self.cell.clone(), id),
            RecvStream::new(self.cell.clone(), id),
        ))
    }

    /// Opens a unidirectional stream, waiting while the peer's stream limit is reached.
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        let id = self.open(Dir::Uni).await?;
        Ok(SendStream::new(self.cell.clone(), id))
    }

    async fn open(&self, dir: Dir) -> Result<StreamId, ConnectionError> {
        poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Poll::Ready(Err(e.clone()));
            }
            if let Some(id) = inner.proto.streams().open(dir) {
                return Poll::Ready(Ok(id));
            }
            inner.wakers.open[dir as usize].push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until the handshake completes (client side; server handlers start after it).
    pub async fn connected(&self) -> Result<(), ConnectionError> {
        poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Poll::Ready(Err(e.clone()));
            }
            if inner.connected {
                return Poll::Ready(Ok(()));
            }
            inner.wakers.connected.push(cx.waker().clone());
            Poll::Pending
        })
        .await
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

    /// Waits for the next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(d) = inner.proto.datagrams().recv() {
                return Poll::Ready(Ok(d));
            }
            if let Some(e) = &inner.lost {
                return Poll::Ready(Err(e.clone()));
            }
            inner.wakers.datagram.push(cx.waker().clone());
            Poll::Pending
        })
        .await
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

    /// Waits until the connection is closed, by either side or by a timeout.
    pub async fn closed(&self) -> ConnectionError {
        poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Poll::Ready(e.clone());
            }
            inner.wakers.closed.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.lost()
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.cell.inner.borrow().proto.remote_address()
    }

    /// Runs `task` on this shard alongside the handler. If it panics, the panic is caught,
    /// counted and logged, and this connection (only) is closed with
    /// [`close_code::INTERNAL`](crate::close_code::INTERNAL). Use it instead of
    /// `monoio::spawn` for work that belongs to a connection.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        let cell = self.cell.clone();
        monoio::spawn(async move {
            use futures_util::FutureExt;
            if std::panic::AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .is_err()
            {
                crate::ops::stats::bump(&cell.stats.handler_panics);
                tracing::error!("a connection task panicked; closing its connection");
                close_cell(&cell, crate::close_code::INTERNAL, b"internal error");
            }
        });
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
    {
        let mut inner = cell.inner.borrow_mut();
        if inner.lost.is_some() || inner.proto.is_closed() {
            return;
        }
        inner.proto.close(
            Instant::now(),
            VarInt::from_u32(code),
            Bytes::copy_from_slice(reason),
        );
    }
    mark_dirty(cell);
}

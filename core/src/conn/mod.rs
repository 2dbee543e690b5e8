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
    /// The connection's next deadline (quinn-proto's timers and the handshake deadline).
    pub(crate) timer_at: Option<Instant>,
    /// The live entry for this connection in the shard's timer heap: never later than
    /// `timer_at`. A deadline pushed later (an idle timer reset by every packet) leaves this
    /// entry in place; when it fires early the real deadline is pushed then.
    pub(crate) heap_at: Option<Instant>,
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
            timer_at: None,
            heap_at: None,
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

/// The sending half of a stream. Dropping it finishes the stream.
pub struct SendStream {
    cell: ConnRef,
    id: StreamId,
    done: bool,
}

impl SendStream {
    fn new(cell: ConnRef, id: StreamId) -> Self {
        Self {
            cell,
            id,
            done: false,
        }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    fn map_write(e: quinn_proto::WriteError) -> StreamError {
        match e {
            quinn_proto::WriteError::Stopped(code) => StreamError::Stopped(code),
            _ => StreamError::ClosedStream,
        }
    }

    /// Writes some of `buf`, waiting for flow-control credit; returns the bytes taken.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        let id = self.id;
        let n = poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Poll::Ready(Err(StreamError::ConnectionLost(e.clone())));
            }
            match inner.proto.send_stream(id).write(buf) {
                Ok(n) => Poll::Ready(Ok(n)),
                Err(quinn_proto::WriteError::Blocked) => {
                    inner.wakers.write.insert(id, cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(Self::map_write(e))),
            }
        })
        .await?;
        mark_dirty(&self.cell);
        Ok(n)
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), StreamError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = buf.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    /// Writes a whole chunk without copying it.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), StreamError> {
        let id = self.id;
        let mut chunks = [chunk];
        loop {
            let done = poll_fn(|cx| {
                let mut inner = self.cell.inner.borrow_mut();
                if let Some(e) = &inner.lost {
                    return Poll::Ready(Err(StreamError::ConnectionLost(e.clone())));
                }
                match inner.proto.send_stream(id).write_chunks(&mut chunks) {
                    Ok(w) => Poll::Ready(Ok(w.chunks == 1 || chunks[0].is_empty())),
                    Err(quinn_proto::WriteError::Blocked) => {
                        inner.wakers.write.insert(id, cx.waker().clone());
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(Self::map_write(e))),
                }
            })
            .await?;
            mark_dirty(&self.cell);
            if done {
                return Ok(());
            }
        }
    }

    /// Ends the stream: the peer reads to the end of what was written.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if self.done {
            return Err(StreamError::ClosedStream);
        }
        self.done = true;
        let r = {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Err(StreamError::ConnectionLost(e.clone()));
            }
            let r = inner.proto.send_stream(self.id).finish();
            if r.is_ok() {
                inner.unacked.insert(self.id);
            }
            r
        };
        mark_dirty(&self.cell);
        r.map_err(|_| StreamError::ClosedStream)
    }

    /// Abandons the stream with an error code.
    pub fn reset(&mut self, code: u32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let _ = self
            .cell
            .inner
            .borrow_mut()
            .proto
            .send_stream(self.id)
            .reset(VarInt::from_u32(code));
        mark_dirty(&self.cell);
    }

    /// Waits until the peer has acknowledged everything (after `finish`) or stopped the
    /// stream; returns the stop code if it stopped it.
    pub async fn stopped(&mut self) -> Result<Option<VarInt>, StreamError> {
        let id = self.id;
        poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Poll::Ready(Err(StreamError::ConnectionLost(e.clone())));
            }
            match inner.proto.send_stream(id).stopped() {
                Ok(Some(code)) => return Poll::Ready(Ok(Some(code))),
                Ok(None) => {}
                Err(_) => return Poll::Ready(Ok(None)),
            }
            if self.done && !inner.unacked.contains(&id) {
                return Poll::Ready(Ok(None));
            }
            inner.wakers.write.insert(id, cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for SendStream {
    /// Finishes the stream, unless the owner is unwinding from a panic: then the stream is
    /// reset, so the peer never mistakes a truncated answer for a complete one.
    fn drop(&mut self) {
        if !self.done {
            if std::thread::panicking() {
                self.reset(crate::close_code::INTERNAL);
            } else {
                let _ = self.finish();
            }
        }
    }
}

/// The receiving half of a stream. Dropping it before the end asks the peer to stop.
pub struct RecvStream {
    cell: ConnRef,
    id: StreamId,
    ended: bool,
}

impl RecvStream {
    fn new(cell: ConnRef, id: StreamId) -> Self {
        Self {
            cell,
            id,
            ended: false,
        }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Reads the next chunk of at most `max` bytes without copying; `None` at the end.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        let id = self.id;
        let (res, credit) = poll_fn(|cx| {
            let mut inner = self.cell.inner.borrow_mut();
            let mut stream = inner.proto.recv_stream(id);
            let mut chunks = match stream.read(true) {
                Ok(c) => c,
                Err(_) => return Poll::Ready((Err(StreamError::ClosedStream), false)),
            };
            let res = match chunks.next(max) {
                Ok(Some(chunk)) => Ok(Some(chunk.bytes)),
                Ok(None) => Ok(None),
                Err(quinn_proto::ReadError::Blocked) => Err(None),
                Err(quinn_proto::ReadError::Reset(code)) => Err(Some(StreamError::Reset(code))),
            };
            let credit = chunks.finalize().should_transmit();
            match res {
                Ok(v) => Poll::Ready((Ok(v), credit)),
                Err(Some(e)) => Poll::Ready((Err(e), credit)),
                Err(None) => {
                    if let Some(e) = &inner.lost {
                        return Poll::Ready((Err(StreamError::ConnectionLost(e.clone())), credit));
                    }
                    inner.wakers.read.insert(id, cx.waker().clone());
                    if credit {
                        drop(inner);
                        mark_dirty(&self.cell);
                    }
                    Poll::Pending
                }
            }
        })
        .await;
        if credit {
            mark_dirty(&self.cell);
        }
        match res {
            Ok(None) => {
                self.ended = true;
                Ok(None)
            }
            Err(e) => {
                self.ended = true;
                Err(e)
            }
            ok => ok,
        }
    }

    /// Reads into `buf`; `None` at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StreamError> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        match self.read_chunk(buf.len()).await? {
            Some(chunk) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    /// Reads until `buf` is full; `false` if the stream ended first.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool, StreamError> {
        let mut off = 0;
        while off < buf.len() {
            match self.read(&mut buf[off..]).await? {
                Some(n) => off += n,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Reads the rest of the stream, failing beyond `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.read_chunk(usize::MAX).await? {
            if out.len() + chunk.len() > limit {
                self.stop(0);
                return Err(StreamError::TooLong(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Asks the peer to stop sending.
    pub fn stop(&mut self, code: u32) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let _ = self
            .cell
            .inner
            .borrow_mut()
            .proto
            .recv_stream(self.id)
            .stop(VarInt::from_u32(code));
        mark_dirty(&self.cell);
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if !self.ended && self.cell.inner.borrow().lost.is_none() {
            self.stop(0);
        }
    }
}

impl monoio::io::AsyncReadRent for RecvStream {
    async fn read<T: monoio::buf::IoBufMut>(&mut self, mut buf: T) -> monoio::BufResult<usize, T> {
        let cap = buf.bytes_total();
        let res = match self.read_chunk(cap).await {
            Ok(Some(chunk)) => Ok(crate::net::sys::copy_into_iobuf(&mut buf, &chunk)),
            Ok(None) => Ok(0),
            Err(e) => Err(std::io::Error::other(e)),
        };
        (res, buf)
    }

    async fn readv<T: monoio::buf::IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "readv is not supported on QUIC streams; use read",
            )),
            buf,
        )
    }
}

impl monoio::io::AsyncWriteRent for SendStream {
    async fn write<T: monoio::buf::IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let res = {
            let slice = crate::net::sys::iobuf_slice(&buf);
            SendStream::write(self, slice).await
        };
        (res.map_err(std::io::Error::other), buf)
    }

    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "writev is not supported on QUIC streams; use write",
            )),
            buf,
        )
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self.finish() {
            Ok(()) | Err(StreamError::ClosedStream) => Ok(()),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

//! The receiving half of a stream: chunk reads as `poll_*` methods and as `async fn`s over
//! them, stop, and the monoio read trait.
//!
//! Reads are ordered: bytes come out in stream order, and a chunk is taken from quinn-proto
//! only by the poll that returns it, so every read is cancel-safe.

use super::{ConnRef, StreamCancel, StreamError, StreamSlot, mark_dirty};
use bytes::Bytes;
use quinn_proto::{StreamId, VarInt};
use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Context, Poll, ready};

/// The receiving half of a stream. Dropping it before the end asks the peer to stop.
pub struct RecvStream {
    cell: ConnRef,
    id: StreamId,
    ended: bool,
    /// This half's waker may be stored in the connection's read wakers.
    waiting: Cell<bool>,
}

impl RecvStream {
    pub(super) fn new(cell: ConnRef, id: StreamId) -> Self {
        Self {
            cell,
            id,
            ended: false,
            waiting: Cell::new(false),
        }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Takes the next chunk of at most `max` bytes without copying: `Some(chunk)`, `None` at
    /// the end of the stream, or pending (the task is woken when data, the end or a reset
    /// arrives). After the end or an error, further reads return `None`.
    ///
    /// Cancel-safety: data is consumed only by the call that returns it; a caller that stops
    /// polling loses nothing, and its waker stays stored (one, replaced by the next poll)
    /// until the stream is dropped or woken.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        poll_chunk(&self.cell, self.id, &mut self.ended, &self.waiting, cx, max)
    }

    /// Copies the next bytes into `buf`: `Some(n)`, `None` at the end of the stream, or
    /// pending. An empty `buf` reads nothing and returns `Some(0)`.
    ///
    /// Cancel-safety: as [`poll_read_chunk`](Self::poll_read_chunk); no byte is consumed
    /// that is not copied into `buf`.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Option<usize>, StreamError>> {
        poll_into(&self.cell, self.id, &mut self.ended, &self.waiting, cx, buf)
    }

    /// Runs one of the poll functions to its answer, removing the waker if the future is
    /// dropped before that.
    async fn wait<T>(
        &mut self,
        mut poll: impl FnMut(&ConnRef, StreamId, &mut bool, &Cell<bool>, &mut Context<'_>) -> Poll<T>,
    ) -> T {
        let Self {
            cell,
            id,
            ended,
            waiting,
        } = self;
        let (cell, id, waiting) = (&*cell, *id, &*waiting);
        let _cancel = StreamCancel {
            cell,
            id,
            slot: StreamSlot::Read,
            waiting,
        };
        poll_fn(|cx| poll(cell, id, ended, waiting, cx)).await
    }

    /// Reads the next chunk of at most `max` bytes without copying; `None` at the end.
    ///
    /// Cancel-safe: dropping the future before it finishes consumes no data and leaves no
    /// waker behind.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        self.wait(|cell, id, ended, waiting, cx| poll_chunk(cell, id, ended, waiting, cx, max))
            .await
    }

    /// Reads into `buf`; `None` at the end of the stream.
    ///
    /// Cancel-safe, as [`read_chunk`](Self::read_chunk).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StreamError> {
        self.wait(|cell, id, ended, waiting, cx| poll_into(cell, id, ended, waiting, cx, buf))
            .await
    }

    /// Reads until `buf` is full; `false` if the stream ended first.
    ///
    /// Not cancel-safe: a future dropped early may have filled part of `buf`.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool, StreamError> {
        let mut off = 0;
        while let Some(rest) = buf.get_mut(off..).filter(|r| !r.is_empty()) {
            match self.read(rest).await? {
                Some(n) => off += n,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Reads the rest of the stream, failing beyond `limit` bytes.
    ///
    /// Not cancel-safe: a future dropped early discards what it had read.
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
        self.stop_with(VarInt::from_u32(code));
    }

    /// [`stop`](Self::stop) with any QUIC application error code (up to 2^62 - 1).
    pub fn stop_with(&mut self, code: VarInt) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let _ = self
            .cell
            .inner
            .borrow_mut()
            .proto
            .recv_stream(self.id)
            .stop(code);
        mark_dirty(&self.cell);
    }
}

/// The one implementation of a chunk read.
fn poll_chunk(
    cell: &ConnRef,
    id: StreamId,
    ended: &mut bool,
    waiting: &Cell<bool>,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<Result<Option<Bytes>, StreamError>> {
    if *ended {
        return Poll::Ready(Ok(None));
    }
    let mut inner = cell.inner.borrow_mut();
    // `Err(None)`: nothing to read yet.
    let (res, credit) = match inner.proto.recv_stream(id).read(true) {
        Err(_) => (Err(Some(StreamError::ClosedStream)), false),
        Ok(mut chunks) => {
            let res = match chunks.next(max) {
                Ok(Some(chunk)) => Ok(Some(chunk.bytes)),
                Ok(None) => Ok(None),
                Err(quinn_proto::ReadError::Blocked) => Err(None),
                Err(quinn_proto::ReadError::Reset(code)) => Err(Some(StreamError::Reset(code))),
            };
            (res, chunks.finalize().should_transmit())
        }
    };
    let poll = match res {
        Ok(v) => Poll::Ready(Ok(v)),
        Err(Some(e)) => Poll::Ready(Err(e)),
        Err(None) => match &inner.lost {
            Some(e) => Poll::Ready(Err(StreamError::ConnectionLost(e.clone()))),
            None => Poll::Pending,
        },
    };
    match &poll {
        Poll::Pending => inner.wakers.read.pending(id, cx.waker(), waiting),
        Poll::Ready(r) => {
            inner.wakers.read.done(id, waiting);
            if matches!(r, Ok(None) | Err(_)) {
                *ended = true;
            }
        }
    }
    drop(inner);
    if credit {
        // Reading opened flow-control credit: let the driver announce it.
        mark_dirty(cell);
    }
    poll
}

/// A chunk read copied into `buf`.
fn poll_into(
    cell: &ConnRef,
    id: StreamId,
    ended: &mut bool,
    waiting: &Cell<bool>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<Result<Option<usize>, StreamError>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(Some(0)));
    }
    let chunk = ready!(poll_chunk(cell, id, ended, waiting, cx, buf.len()))?;
    Poll::Ready(Ok(chunk.map(|chunk| {
        let n = chunk.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), chunk.get(..n)) {
            dst.copy_from_slice(src);
        }
        n
    })))
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let Ok(mut inner) = self.cell.inner.try_borrow_mut() else {
            return;
        };
        inner.wakers.read.done(self.id, &self.waiting);
        let stop = !self.ended && inner.lost.is_none();
        drop(inner);
        if stop {
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

//! The sending half of a stream: writes, finish and the wait for its end as `poll_*` methods
//! and as `async fn`s over them, reset, and the monoio write trait.

use super::{ConnRef, StreamCancel, StreamError, StreamSlot, mark_dirty};
use bytes::Bytes;
use quinn_proto::{FinishError, StreamId, VarInt, WriteError};
use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Context, Poll, ready};

/// How far this side has ended the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Open,
    Finished,
    Reset,
}

/// The sending half of a stream. Dropping it finishes the stream.
pub struct SendStream {
    cell: ConnRef,
    id: StreamId,
    end: End,
    /// This half's waker may be stored in the connection's write wakers.
    writing: Cell<bool>,
    /// This half's waker may be stored in the wakers waiting for a send half to end.
    ending: Cell<bool>,
}

impl SendStream {
    pub(super) fn new(cell: ConnRef, id: StreamId) -> Self {
        Self {
            cell,
            id,
            end: End::Open,
            writing: Cell::new(false),
            ending: Cell::new(false),
        }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Writes a prefix of `buf` as soon as the stream has flow-control credit for some of
    /// it, returning its length, or pending (the task is woken when there is credit).
    ///
    /// Cancel-safety: bytes are written only by the call that returns their count; a caller
    /// that stops polling has written nothing, and its waker stays stored (one, replaced by
    /// the next poll) until the stream is dropped or woken.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, StreamError>> {
        poll_send(&self.cell, self.id, &self.writing, cx, |s| s.write(buf))
    }

    /// Writes a prefix of `chunk` without copying it, returning its length; `chunk` keeps
    /// the rest. Pending as [`poll_write`](Self::poll_write).
    ///
    /// Cancel-safety: as [`poll_write`](Self::poll_write); `chunk` is untouched unless the
    /// call is ready.
    pub fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<Result<usize, StreamError>> {
        poll_chunk(&self.cell, self.id, &self.writing, cx, chunk)
    }

    /// Finishes the stream on the first call, then is ready once the peer acknowledged all
    /// data: `Ok(())`, or `Err(StreamError::Stopped(code))` if the peer stopped the stream
    /// before that. A stream this side reset gives `Err(StreamError::ClosedStream)`. For
    /// finishing without waiting (as most protocols on QUIC need), call
    /// [`finish`](Self::finish).
    ///
    /// Cancel-safety: the stream is finished by the first call and stays finished; a caller
    /// that stops polling leaves it to be delivered as if dropped.
    pub fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        match self.end {
            End::Open => {
                if let Err(e) = self.finish() {
                    return Poll::Ready(Err(e));
                }
            }
            End::Reset => return Poll::Ready(Err(StreamError::ClosedStream)),
            End::Finished => {}
        }
        Poll::Ready(match ready!(self.poll_stopped(cx))? {
            None => Ok(()),
            Some(code) => Err(StreamError::Stopped(code)),
        })
    }

    /// Ready once the stream's sending ended: `Some(code)` when the peer stopped it, `None`
    /// when this side finished it and the peer acknowledged all data (or the stream is
    /// gone). Pending while the stream is open and not stopped.
    ///
    /// Cancel-safety: polling has no effect on the stream.
    pub fn poll_stopped(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<VarInt>, StreamError>> {
        poll_end(
            &self.cell,
            self.id,
            self.end == End::Finished,
            &self.ending,
            cx,
        )
    }

    /// Runs one of the poll functions to its answer, removing the waker in `slot` if the
    /// future is dropped before that.
    async fn wait<T>(
        &mut self,
        slot: StreamSlot,
        mut poll: impl FnMut(&ConnRef, StreamId, End, &Cell<bool>, &mut Context<'_>) -> Poll<T>,
    ) -> T {
        let waiting = match slot {
            StreamSlot::Stopped => &self.ending,
            StreamSlot::Write | StreamSlot::Read => &self.writing,
        };
        let (cell, id, end) = (&self.cell, self.id, self.end);
        let _cancel = StreamCancel {
            cell,
            id,
            slot,
            waiting,
        };
        poll_fn(|cx| poll(cell, id, end, waiting, cx)).await
    }

    /// Writes some of `buf`, waiting for flow-control credit; returns the bytes taken.
    ///
    /// Cancel-safe: dropping the future before it finishes writes nothing and leaves no
    /// waker behind.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        self.wait(StreamSlot::Write, |cell, id, _, writing, cx| {
            poll_send(cell, id, writing, cx, |s| s.write(buf))
        })
        .await
    }

    /// Writes all of `buf`.
    ///
    /// Not cancel-safe: a future dropped early may have written a prefix of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), StreamError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = buf.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    /// Writes a whole chunk without copying it.
    ///
    /// Not cancel-safe: a future dropped early may have written a prefix of `chunk`.
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), StreamError> {
        while !chunk.is_empty() {
            self.wait(StreamSlot::Write, |cell, id, _, writing, cx| {
                poll_chunk(cell, id, writing, cx, &mut chunk)
            })
            .await?;
        }
        Ok(())
    }

    /// Ends the stream: the peer reads to the end of what was written. Returns at once;
    /// [`stopped`](Self::stopped) waits for the acknowledgement.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if self.end != End::Open {
            return Err(StreamError::ClosedStream);
        }
        self.end = End::Finished;
        let r = {
            let mut inner = self.cell.inner.borrow_mut();
            if let Some(e) = &inner.lost {
                return Err(StreamError::ConnectionLost(e.clone()));
            }
            let id = self.id;
            let r = inner.proto.send_stream(id).finish();
            match r {
                Ok(()) => {
                    inner.unacked.insert(id);
                }
                //= https://www.rfc-editor.org/rfc/rfc9000#section-3.5
                //# An endpoint that receives a STOP_SENDING frame MUST send a
                //# RESET_STREAM frame if the stream is in the "Ready" or "Send" state.
                Err(FinishError::Stopped(code)) => {
                    let _ = inner.proto.send_stream(id).reset(code);
                }
                Err(_) => {}
            }
            r
        };
        mark_dirty(&self.cell);
        r.map_err(|e| match e {
            FinishError::Stopped(code) => StreamError::Stopped(code),
            _ => StreamError::ClosedStream,
        })
    }

    /// Abandons the stream with an error code.
    pub fn reset(&mut self, code: u32) {
        self.reset_with(VarInt::from_u32(code));
    }

    /// [`reset`](Self::reset) with any QUIC application error code (up to 2^62 - 1).
    pub fn reset_with(&mut self, code: VarInt) {
        if self.end != End::Open {
            return;
        }
        self.end = End::Reset;
        let _ = self
            .cell
            .inner
            .borrow_mut()
            .proto
            .send_stream(self.id)
            .reset(code);
        mark_dirty(&self.cell);
    }

    /// Waits until the peer has acknowledged everything (after `finish`) or stopped the
    /// stream; returns the stop code if it stopped it.
    ///
    /// Cancel-safe: dropping the future leaves no waker behind.
    pub async fn stopped(&mut self) -> Result<Option<VarInt>, StreamError> {
        self.wait(StreamSlot::Stopped, |cell, id, end, ending, cx| {
            poll_end(cell, id, end == End::Finished, ending, cx)
        })
        .await
    }
}

/// The one implementation of a write: `write` with the stream's credit.
fn poll_send<R>(
    cell: &ConnRef,
    id: StreamId,
    writing: &Cell<bool>,
    cx: &mut Context<'_>,
    write: impl FnOnce(&mut quinn_proto::SendStream<'_>) -> Result<R, WriteError>,
) -> Poll<Result<R, StreamError>> {
    let mut inner = cell.inner.borrow_mut();
    let r = match inner.lost.clone() {
        Some(e) => Err(StreamError::ConnectionLost(e)),
        None => {
            let written = write(&mut inner.proto.send_stream(id));
            match written {
                Err(WriteError::Blocked) => {
                    inner.wakers.write.pending(id, cx.waker(), writing);
                    return Poll::Pending;
                }
                Err(WriteError::Stopped(code)) => Err(StreamError::Stopped(code)),
                Err(_) => Err(StreamError::ClosedStream),
                Ok(r) => Ok(r),
            }
        }
    };
    inner.wakers.write.done(id, writing);
    drop(inner);
    if r.is_ok() {
        mark_dirty(cell);
    }
    Poll::Ready(r)
}

/// A write of a prefix of `chunk`, leaving the rest in it.
fn poll_chunk(
    cell: &ConnRef,
    id: StreamId,
    writing: &Cell<bool>,
    cx: &mut Context<'_>,
    chunk: &mut Bytes,
) -> Poll<Result<usize, StreamError>> {
    let mut chunks = [std::mem::take(chunk)];
    let r = poll_send(cell, id, writing, cx, |s| s.write_chunks(&mut chunks));
    let [rest] = chunks;
    *chunk = rest;
    r.map_ok(|w| w.bytes)
}

/// The one implementation of the wait for a send half's end.
fn poll_end(
    cell: &ConnRef,
    id: StreamId,
    finished: bool,
    ending: &Cell<bool>,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<VarInt>, StreamError>> {
    let mut inner = cell.inner.borrow_mut();
    let r = match inner.lost.clone() {
        Some(e) => Some(Err(StreamError::ConnectionLost(e))),
        None => {
            let stopped = inner.proto.send_stream(id).stopped();
            match stopped {
                Ok(Some(code)) => Some(Ok(Some(code))),
                // Finished and acknowledged, or reset: the stream is gone.
                Err(_) => Some(Ok(None)),
                Ok(None) => (finished && !inner.unacked.contains(&id)).then_some(Ok(None)),
            }
        }
    };
    match r {
        Some(r) => {
            inner.wakers.stopped.done(id, ending);
            Poll::Ready(r)
        }
        None => {
            inner.wakers.stopped.pending(id, cx.waker(), ending);
            Poll::Pending
        }
    }
}

impl Drop for SendStream {
    /// Finishes the stream, unless the owner is unwinding from a panic: then the stream is
    /// reset, so the peer never mistakes a truncated answer for a complete one.
    fn drop(&mut self) {
        if let Ok(mut inner) = self.cell.inner.try_borrow_mut() {
            inner.wakers.write.done(self.id, &self.writing);
            inner.wakers.stopped.done(self.id, &self.ending);
        }
        if self.end == End::Open {
            if std::thread::panicking() {
                self.reset(crate::close_code::INTERNAL);
            } else {
                let _ = self.finish();
            }
        }
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

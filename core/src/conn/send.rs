//! The sending half of a stream: writes, finish, reset, and the monoio write trait.

use super::{ConnRef, StreamError, mark_dirty};
use bytes::Bytes;
use quinn_proto::{StreamId, VarInt};
use std::future::poll_fn;
use std::task::Poll;

/// The sending half of a stream. Dropping it finishes the stream.
pub struct SendStream {
    cell: ConnRef,
    id: StreamId,
    done: bool,
}

impl SendStream {
    pub(super) fn new(cell: ConnRef, id: StreamId) -> Self {
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

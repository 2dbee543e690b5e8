//! The receiving half of a stream: chunk reads, stop, and the monoio read trait.

use super::{ConnRef, StreamError, mark_dirty};
use bytes::Bytes;
use quinn_proto::{StreamId, VarInt};
use std::future::poll_fn;
use std::task::Poll;

/// The receiving half of a stream. Dropping it before the end asks the peer to stop.
pub struct RecvStream {
    cell: ConnRef,
    id: StreamId,
    ended: bool,
}

impl RecvStream {
    pub(super) fn new(cell: ConnRef, id: StreamId) -> Self {
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

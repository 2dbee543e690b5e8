//! The tokio bridge: one QUIC stream, read and written by a task on the tokio side runtime,
//! pumped by a task on its shard.
//!
//! [`bridge`] splits a stream into a [`BridgedStream`] (tokio's `AsyncRead + AsyncWrite`,
//! `Send`, for russh, hyper and the like) and a pump, a shard-local future that moves bytes
//! between the QUIC stream and two bounded pipes. Bytes cross as `Bytes` chunks: a chunk
//! received from QUIC reaches the tokio reader without a copy until tokio's `ReadBuf`, and what
//! tokio writes is copied once, into a buffer the pump hands to QUIC whole. Each pipe holds at
//! most `buffer` bytes: a tokio side that stops reading stops the pump reading the QUIC stream,
//! so the stream's flow-control window closes and the peer stalls; a QUIC stream that stops
//! taking data (the peer's window) stalls tokio's writes.
//!
//! Closing and resetting map across as follows:
//!
//! | event | seen on the other side |
//! |---|---|
//! | QUIC peer finishes its stream (FIN) | tokio read returns `Ok(0)` (EOF) after the data |
//! | QUIC peer resets its stream | tokio read fails with `ConnectionReset` after the data before it |
//! | QUIC connection lost | tokio read and write fail with `ConnectionAborted` |
//! | QUIC peer stops the stream (STOP_SENDING) | tokio write (and flush, shutdown) fails with `BrokenPipe` |
//! | tokio `shutdown()` | QUIC stream finished once the data before it is handed to QUIC |
//! | tokio write after `shutdown()` | fails with `BrokenPipe` |
//! | `BridgedStream` dropped without `shutdown()` | QUIC stream reset with [`ABANDONED`] (0x4); reading side stopped with code 0 |
//! | `BridgedStream` dropped before the end of the peer's data | QUIC receiving side stopped with code 0 |
//!
//! [`serve_on_tokio`] is the usual way in: it bridges a stream, spawns the service's tokio task
//! on the [`SideRuntime`], pumps on the shard, closes the connection with
//! [`close_code::INTERNAL`] if the tokio task panics, and aborts the task when the connection
//! closes first (revocation, drain, idle timeout, the peer).
//!
//! This module does not own the tokio runtime ([`tokio_rt`](super::tokio_rt)) nor choose
//! what runs on it.

use super::close_code;
use super::tokio_rt::SideRuntime;
use crate::conn::{Connection, RecvStream, SendStream, StreamError};
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use quinn_proto::{ConnectionError, VarInt};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Stream reset code sent when the tokio side drops its [`BridgedStream`] without
/// `shutdown()`: the peer must not take a truncated answer for a complete one. The same code
/// the shard's own streams send when their writer unwinds from a panic.
pub const ABANDONED: u32 = close_code::INTERNAL;

/// Stop code sent when the tokio side drops its stream before reading to the end.
pub const NOT_READ: u32 = 0;

/// Why [`serve_on_tokio`] ended without the tokio task finishing normally.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The side runtime could not run the task; the stream was reset.
    #[error("{0}")]
    Runtime(io::Error),
    /// The tokio task panicked; its connection was closed with `close_code::INTERNAL`.
    #[error("the service's tokio task panicked; its connection was closed")]
    Panicked,
    /// The connection closed before the task ended; the task was cancelled.
    #[error("connection closed before the tokio task ended ({0}); the task was cancelled")]
    Cancelled(ConnectionError),
}

/// Stores `cx`'s waker in `slot` unless an equivalent one is there.
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the pipe consistent, so a poisoned lock is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the stream the shard reads ended.
#[derive(Debug, Clone)]
enum InEnd {
    Fin,
    Reset(VarInt),
    Lost(String),
}

/// QUIC → tokio: chunks received on the shard, waiting for the tokio reader.
struct Inbound {
    cap: usize,
    state: Mutex<InState>,
}

struct InState {
    chunks: VecDeque<Bytes>,
    len: usize,
    end: Option<InEnd>,
    reader_gone: bool,
    /// The tokio reader, parked on an empty pipe.
    reader: Option<Waker>,
    /// The pump, parked on a full pipe or on QUIC (then woken only if the reader goes).
    pump: Option<Waker>,
    pump_wants_space: bool,
}

impl Inbound {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Mutex::new(InState {
                chunks: VecDeque::new(),
                len: 0,
                end: None,
                reader_gone: false,
                reader: None,
                pump: None,
                pump_wants_space: false,
            }),
        }
    }

    /// The pump reads once half the pipe is free (or it is empty), so a slow reader does
    /// not turn every few bytes it takes into a wake-up of the shard.
    fn poll_space(&self, cx: &Context<'_>) -> Poll<Option<usize>> {
        let mut st = lock(&self.state);
        if st.reader_gone {
            return Poll::Ready(None);
        }
        park(&mut st.pump, cx);
        let free = self.cap.saturating_sub(st.len);
        if st.len == 0 || free >= self.cap / 2 {
            st.pump_wants_space = false;
            Poll::Ready(Some(free))
        } else {
            st.pump_wants_space = true;
            Poll::Pending
        }
    }

    /// Ready once the tokio side has dropped its stream.
    fn poll_gone(&self, cx: &Context<'_>) -> Poll<()> {
        let mut st = lock(&self.state);
        if st.reader_gone {
            return Poll::Ready(());
        }
        park(&mut st.pump, cx);
        Poll::Pending
    }

    fn push(&self, batch: &mut Vec<Bytes>, end: Option<InEnd>) {
        let reader = {
            let mut st = lock(&self.state);
            if !st.reader_gone {
                for b in batch.drain(..) {
                    st.len += b.len();
                    st.chunks.push_back(b);
                }
            }
            batch.clear();
            if end.is_some() {
                st.end = end;
            }
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// With the pipe empty: the end of the stream as tokio sees it, or park the reader.
    fn end_or_park(st: &mut InState, cx: &Context<'_>) -> Poll<io::Result<()>> {
        match &st.end {
            Some(InEnd::Fin) => Poll::Ready(Ok(())),
            Some(InEnd::Reset(code)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream reset by peer with code {code}"),
            ))),
            Some(InEnd::Lost(e)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("connection lost: {e}"),
            ))),
            None => {
                park(&mut st.reader, cx);
                Poll::Pending
            }
        }
    }

    /// Wakes the pump if it waits for space and half the pipe is free.
    fn space_freed(&self, st: &mut InState) -> Option<Waker> {
        if st.pump_wants_space && self.cap.saturating_sub(st.len) >= self.cap / 2 {
            st.pump_wants_space = false;
            st.pump.take()
        } else {
            None
        }
    }

    fn poll_read(&self, cx: &Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        if st.chunks.is_empty() {
            return Self::end_or_park(&mut st, cx);
        }
        let mut taken = 0;
        while buf.remaining() > 0 {
            let Some(front) = st.chunks.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(front.get(..n).unwrap_or_default());
            taken += n;
            if n == front.len() {
                st.chunks.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        st.len -= taken;
        let wake = self.space_freed(&mut st);
        drop(st);
        if let Some(w) = wake {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Takes the next chunk whole (`None` at the end), for tokio code that can use `Bytes`.
    fn poll_chunk(&self, cx: &Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let mut st = lock(&self.state);
        let Some(chunk) = st.chunks.pop_front() else {
            return Self::end_or_park(&mut st, cx).map_ok(|()| None);
        };
        st.len -= chunk.len();
        let wake = self.space_freed(&mut st);
        drop(st);
        if let Some(w) = wake {
            w.wake();
        }
        Poll::Ready(Ok(Some(chunk)))
    }

    fn reader_gone(&self) {
        let pump = {
            let mut st = lock(&self.state);
            st.reader_gone = true;
            st.chunks.clear();
            st.len = 0;
            st.pump.take()
        };
        if let Some(w) = pump {
            w.wake();
        }
    }
}

/// Why the QUIC stream the shard writes no longer takes data.
#[derive(Debug, Clone)]
enum Broken {
    Stopped(VarInt),
    Lost(String),
}

impl Broken {
    fn error(&self) -> io::Error {
        match self {
            Broken::Stopped(code) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("stream stopped by peer with code {code}"),
            ),
            Broken::Lost(e) => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("connection lost: {e}"),
            ),
        }
    }
}

/// tokio → QUIC: bytes written by the tokio side, waiting for the pump.
struct Outbound {
    cap: usize,
    state: Mutex<OutState>,
}

struct OutState {
    buf: BytesMut,
    /// Bytes the pump took and QUIC has not accepted yet: they count against `cap`.
    in_flight: usize,
    fin: bool,
    dropped: bool,
    /// The pump has finished the QUIC stream.
    finished: bool,
    broken: Option<Broken>,
    writer: Option<Waker>,
    pump: Option<Waker>,
}

enum Take {
    Data(Bytes),
    Fin,
    Dropped,
}

impl Outbound {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Mutex::new(OutState {
                buf: BytesMut::new(),
                in_flight: 0,
                fin: false,
                dropped: false,
                finished: false,
                broken: None,
                writer: None,
                pump: None,
            }),
        }
    }

    fn poll_write(&self, cx: &Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        if let Some(b) = &st.broken {
            return Poll::Ready(Err(b.error()));
        }
        if st.fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let free = self.cap.saturating_sub(st.buf.len() + st.in_flight);
        if free == 0 {
            park(&mut st.writer, cx);
            return Poll::Pending;
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(free - n);
            st.buf.extend_from_slice(b.get(..take).unwrap_or_default());
            n += take;
            if n == free {
                break;
            }
        }
        let pump = st.pump.take();
        drop(st);
        if let Some(w) = pump {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    /// Ready once everything written is handed to QUIC (and, with `fin`, the stream finished).
    fn poll_drained(&self, cx: &Context<'_>, fin: bool) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        if fin && !st.fin {
            st.fin = true;
            if let Some(w) = st.pump.take() {
                w.wake();
            }
        }
        if let Some(b) = &st.broken {
            return Poll::Ready(Err(b.error()));
        }
        let done = st.buf.is_empty() && st.in_flight == 0 && (!fin || st.finished);
        if done {
            Poll::Ready(Ok(()))
        } else {
            park(&mut st.writer, cx);
            Poll::Pending
        }
    }

    fn poll_take(&self, cx: &Context<'_>) -> Poll<Take> {
        let mut st = lock(&self.state);
        if !st.buf.is_empty() {
            let chunk = st.buf.split().freeze();
            st.in_flight += chunk.len();
            return Poll::Ready(Take::Data(chunk));
        }
        if st.fin {
            return Poll::Ready(Take::Fin);
        }
        if st.dropped {
            return Poll::Ready(Take::Dropped);
        }
        park(&mut st.pump, cx);
        Poll::Pending
    }

    /// QUIC took `n` bytes the pump held (or the pump finished the stream, `finished`).
    fn release(&self, n: usize, finished: bool) {
        let writer = {
            let mut st = lock(&self.state);
            st.in_flight = st.in_flight.saturating_sub(n);
            st.finished |= finished;
            st.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
    }

    fn break_with(&self, why: Broken) {
        let writer = {
            let mut st = lock(&self.state);
            st.broken = Some(why);
            st.buf.clear();
            st.in_flight = 0;
            st.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
    }

    fn writer_gone(&self) {
        let pump = {
            let mut st = lock(&self.state);
            st.dropped = true;
            st.pump.take()
        };
        if let Some(w) = pump {
            w.wake();
        }
    }
}

/// The tokio side of a bridged QUIC stream: `AsyncRead + AsyncWrite + Send + Unpin`, usable
/// on any tokio runtime (or none: it needs no runtime context). See the module docs for how
/// close and reset map across; call `shutdown()` to finish the stream, as dropping it without
/// resets the stream with [`ABANDONED`].
pub struct BridgedStream {
    inbound: Arc<Inbound>,
    outbound: Arc<Outbound>,
}

impl BridgedStream {
    /// Reads the next received chunk whole, without a copy; `None` at the end of the stream.
    /// Mixes with `AsyncRead` reads: each byte is delivered once, in order.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.inbound.poll_chunk(cx)).await
    }
}

impl std::fmt::Debug for BridgedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgedStream").finish_non_exhaustive()
    }
}

impl AsyncRead for BridgedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inbound.poll_read(cx, buf)
    }
}

impl AsyncWrite for BridgedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outbound.poll_write(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.outbound.poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbound.poll_drained(cx, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbound.poll_drained(cx, true)
    }
}

impl Drop for BridgedStream {
    fn drop(&mut self) {
        self.inbound.reader_gone();
        self.outbound.writer_gone();
    }
}

/// Bridges one bidirectional stream to tokio. Returns the tokio side and the pump: spawn the
/// pump on the stream's shard (e.g. with [`Connection::spawn`]) and hand the stream to a task
/// on the [`SideRuntime`]. Each direction buffers at most `buffer` bytes (at least 1). The
/// pump ends when both directions have ended; dropping it early drops the QUIC halves
/// (finishing the sending one, stopping the receiving one).
pub fn bridge(
    send: SendStream,
    recv: RecvStream,
    buffer: usize,
) -> (BridgedStream, impl Future<Output = ()> + 'static) {
    let cap = buffer.max(1);
    let inbound = Arc::new(Inbound::new(cap));
    let outbound = Arc::new(Outbound::new(cap));
    let stream = BridgedStream {
        inbound: inbound.clone(),
        outbound: outbound.clone(),
    };
    let pump = futures_util::future::join(pump_in(recv, inbound), pump_out(send, outbound));
    (stream, async move {
        pump.await;
    })
}

/// QUIC → tokio. Waits for a chunk (or the reader going away), then takes every further
/// chunk QUIC has ready in the same turn and hands the batch over under one lock, which keeps
/// the shard's cost per chunk low.
///
/// Every wait is on a future kept until it completes; a read polled only to see whether more
/// is ready is dropped when it is not, and nothing depends on its waker.
async fn pump_in(mut recv: RecvStream, pipe: Arc<Inbound>) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let Some(mut left) = poll_fn(|cx| pipe.poll_space(cx)).await else {
            return recv.stop(NOT_READ);
        };
        let first = {
            let read = pin!(recv.read_chunk(left));
            let gone = pin!(poll_fn(|cx| pipe.poll_gone(cx)));
            match futures_util::future::select(read, gone).await {
                Either::Left((r, _)) => Some(r),
                Either::Right(_) => None,
            }
        };
        let Some(first) = first else {
            return recv.stop(NOT_READ);
        };
        let mut end = None;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Ok(Some(chunk))) => {
                    left = left.saturating_sub(chunk.len());
                    batch.push(chunk);
                }
                Some(Ok(None)) => end = Some(InEnd::Fin),
                Some(Err(StreamError::Reset(code))) => end = Some(InEnd::Reset(code)),
                Some(Err(e)) => end = Some(InEnd::Lost(e.to_string())),
                None => break,
            }
            if end.is_some() || left == 0 {
                break;
            }
            // `read_chunk` takes nothing until it is ready, so dropping a pending one loses
            // no data.
            let more = poll_fn(|cx| Poll::Ready(pin!(recv.read_chunk(left)).poll(cx))).await;
            next = match more {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            };
        }
        let ended = end.is_some();
        pipe.push(&mut batch, end);
        if ended {
            return;
        }
    }
}

enum OutStep {
    Take(Take),
    Stopped(VarInt),
    Closed,
    Lost(StreamError),
}

/// tokio → QUIC. While tokio writes nothing, it watches for the peer stopping the stream or
/// the connection ending, so the tokio side learns of it before its next write.
async fn pump_out(mut send: SendStream, pipe: Arc<Outbound>) {
    loop {
        let step = {
            let take = pin!(poll_fn(|cx| pipe.poll_take(cx)));
            let stopped = pin!(send.stopped());
            match futures_util::future::select(take, stopped).await {
                Either::Left((t, _)) => OutStep::Take(t),
                Either::Right((Ok(Some(code)), _)) => OutStep::Stopped(code),
                Either::Right((Ok(None), _)) => OutStep::Closed,
                Either::Right((Err(e), _)) => OutStep::Lost(e),
            }
        };
        match step {
            OutStep::Take(Take::Data(chunk)) => {
                let n = chunk.len();
                match send.write_chunk(chunk).await {
                    Ok(()) => pipe.release(n, false),
                    Err(StreamError::Stopped(code)) => {
                        return pipe.break_with(Broken::Stopped(code));
                    }
                    Err(e) => return pipe.break_with(Broken::Lost(e.to_string())),
                }
            }
            OutStep::Take(Take::Fin) => {
                return match send.finish() {
                    Ok(()) | Err(StreamError::ClosedStream) => pipe.release(0, true),
                    Err(StreamError::Stopped(code)) => pipe.break_with(Broken::Stopped(code)),
                    Err(e) => pipe.break_with(Broken::Lost(e.to_string())),
                };
            }
            OutStep::Take(Take::Dropped) => return send.reset(ABANDONED),
            OutStep::Stopped(code) => return pipe.break_with(Broken::Stopped(code)),
            OutStep::Closed => return pipe.break_with(Broken::Lost("stream closed".into())),
            OutStep::Lost(e) => return pipe.break_with(Broken::Lost(e.to_string())),
        }
    }
}

/// Serves one bidirectional stream with a task on the tokio side runtime; call it on the
/// stream's shard (in a handler or a [`Connection::spawn`]ed task).
///
/// `serve` is called here with the [`BridgedStream`] and the future it returns runs on `rt`,
/// while this future pumps the stream on the shard. It returns when the task has ended and
/// the pump has handed everything to QUIC (`Ok`), or:
/// - the task panicked: the connection is closed with [`close_code::INTERNAL`], the panic
///   counted ([`SideRuntime::panics`]) and logged ([`BridgeError::Panicked`]);
/// - the connection closed first, for any reason (the peer, revocation, drain, a timeout):
///   the task is aborted, and this returns once tokio has dropped it
///   ([`BridgeError::Cancelled`], counted in [`SideRuntime::cancelled`]).
pub async fn serve_on_tokio<F, Fut>(
    rt: &SideRuntime,
    conn: &Connection,
    send: SendStream,
    recv: RecvStream,
    serve: F,
) -> Result<(), BridgeError>
where
    F: FnOnce(BridgedStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stream, pump) = bridge(send, recv, rt.bridge_buffer());
    let mut task = rt.spawn(serve(stream)).map_err(BridgeError::Runtime)?;
    let mut pump = pin!(pump);
    let mut closed = pin!(conn.closed());
    let mut pumped = false;
    let mut aborted: Option<ConnectionError> = None;
    let outcome = poll_fn(|cx| {
        if !pumped && pump.as_mut().poll(cx).is_ready() {
            pumped = true;
        }
        if let Poll::Ready(r) = Pin::new(&mut task).poll(cx) {
            return Poll::Ready(r);
        }
        if aborted.is_none()
            && let Poll::Ready(e) = closed.as_mut().poll(cx)
        {
            // Woken again once tokio has dropped the task.
            task.abort();
            aborted = Some(e);
        }
        Poll::Pending
    })
    .await;
    if let Some(e) = aborted {
        rt.count_cancelled();
        tracing::debug!(error = %e, "connection closed; its tokio task was cancelled");
        return Err(BridgeError::Cancelled(e));
    }
    match outcome {
        Ok(()) => {
            if !pumped {
                pump.await;
            }
            Ok(())
        }
        Err(e) if e.is_panic() => {
            rt.count_panic();
            tracing::error!(
                remote = %conn.remote_address(),
                "a service task on the tokio side runtime panicked; closing its connection"
            );
            conn.close(close_code::INTERNAL, b"internal error");
            Err(BridgeError::Panicked)
        }
        Err(_) => {
            // Cancelled by the runtime stopping (process stop): the connection goes with it.
            rt.count_cancelled();
            Err(BridgeError::Cancelled(ConnectionError::LocallyClosed))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The two pipes against a plain model: bytes in order, never more than the bound held,
    //! ends and errors mapped as the module table says.
    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn read(pipe: &Inbound, n: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut buf = vec![0u8; n];
        let mut rb = ReadBuf::new(&mut buf);
        match pipe.poll_read(&cx(), &mut rb) {
            Poll::Ready(Ok(())) => {
                let k = rb.filled().len();
                buf.truncate(k);
                Poll::Ready(Ok(buf))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    #[test]
    fn inbound_keeps_order_and_bound_then_ends() {
        let pipe = Inbound::new(100);
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut seed = 7u32;
        for round in 0..2_000u32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if seed % 3 != 0 {
                // The pump: read from QUIC only what the pipe has room for.
                if let Poll::Ready(Some(free)) = pipe.poll_space(&cx()) {
                    let n = (seed as usize >> 8) % 60 + 1;
                    let n = n.min(free);
                    let chunk: Vec<u8> = (0..n).map(|i| (round as usize + i) as u8).collect();
                    sent.extend_from_slice(&chunk);
                    pipe.push(&mut vec![Bytes::from(chunk)], None);
                }
            } else if let Poll::Ready(Ok(b)) = read(&pipe, (seed as usize >> 4) % 50 + 1) {
                assert!(!b.is_empty(), "no EOF before the end");
                got.extend_from_slice(&b);
            }
            let held = lock(&pipe.state).len;
            assert!(held <= 100, "{held} bytes held, bound 100");
            assert_eq!(held, sent.len() - got.len());
        }
        pipe.push(&mut Vec::new(), Some(InEnd::Fin));
        while let Poll::Ready(Ok(b)) = read(&pipe, 64) {
            if b.is_empty() {
                break;
            }
            got.extend_from_slice(&b);
        }
        assert_eq!(got, sent);
        assert!(matches!(read(&pipe, 8), Poll::Ready(Ok(b)) if b.is_empty()));
    }

    #[test]
    fn inbound_reset_and_loss_are_errors_after_the_data() {
        let pipe = Inbound::new(64);
        assert!(read(&pipe, 8).is_pending());
        pipe.push(
            &mut vec![Bytes::from_static(b"abc")],
            Some(InEnd::Reset(VarInt::from_u32(7))),
        );
        assert!(matches!(read(&pipe, 8), Poll::Ready(Ok(b)) if b == b"abc"));
        match read(&pipe, 8) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            _ => panic!("a reset must read as ConnectionReset"),
        }
        let lost = Inbound::new(64);
        lost.push(&mut Vec::new(), Some(InEnd::Lost("timed out".into())));
        match read(&lost, 8) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted),
            _ => panic!("a lost connection must read as ConnectionAborted"),
        }
        lost.reader_gone();
        assert_eq!(lost.poll_space(&cx()), Poll::Ready(None));
    }

    #[test]
    fn inbound_pump_waits_for_half_the_pipe() {
        let pipe = Inbound::new(100);
        pipe.push(&mut vec![Bytes::from(vec![1u8; 100])], None);
        assert_eq!(pipe.poll_space(&cx()), Poll::Pending);
        assert!(read(&pipe, 30).is_ready());
        assert_eq!(pipe.poll_space(&cx()), Poll::Pending, "30 free of 100");
        assert!(read(&pipe, 20).is_ready());
        assert_eq!(pipe.poll_space(&cx()), Poll::Ready(Some(50)));
    }

    fn write(pipe: &Outbound, data: &[u8]) -> Poll<io::Result<usize>> {
        pipe.poll_write(&cx(), &[io::IoSlice::new(data)])
    }

    #[test]
    fn outbound_holds_at_most_the_bound_until_quic_takes_it() {
        let pipe = Outbound::new(10);
        assert!(matches!(write(&pipe, b"0123456"), Poll::Ready(Ok(7))));
        assert!(matches!(write(&pipe, b"789abc"), Poll::Ready(Ok(3))));
        assert!(write(&pipe, b"x").is_pending(), "full");
        let Poll::Ready(Take::Data(chunk)) = pipe.poll_take(&cx()) else {
            panic!("data expected");
        };
        assert_eq!(&chunk[..], b"0123456789");
        assert!(
            write(&pipe, b"x").is_pending(),
            "in flight counts against the bound"
        );
        assert!(pipe.poll_drained(&cx(), false).is_pending());
        pipe.release(chunk.len(), false);
        assert!(pipe.poll_drained(&cx(), false).is_ready());
        assert!(matches!(write(&pipe, b"yz"), Poll::Ready(Ok(2))));
        // Shutdown: the data first, then the finish, then shutdown completes.
        assert!(pipe.poll_drained(&cx(), true).is_pending());
        assert!(matches!(pipe.poll_take(&cx()), Poll::Ready(Take::Data(c)) if &c[..] == b"yz"));
        pipe.release(2, false);
        assert!(matches!(pipe.poll_take(&cx()), Poll::Ready(Take::Fin)));
        assert!(pipe.poll_drained(&cx(), true).is_pending());
        pipe.release(0, true);
        assert!(matches!(
            pipe.poll_drained(&cx(), true),
            Poll::Ready(Ok(()))
        ));
        match write(&pipe, b"late") {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            _ => panic!("a write after shutdown must fail"),
        }
    }

    #[test]
    fn outbound_stop_is_broken_pipe_and_drop_is_abandon() {
        let pipe = Outbound::new(10);
        pipe.break_with(Broken::Stopped(VarInt::from_u32(9)));
        match write(&pipe, b"x") {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            _ => panic!("a write after a stop must be BrokenPipe"),
        }
        let dropped = Outbound::new(10);
        assert!(matches!(write(&dropped, b"ab"), Poll::Ready(Ok(2))));
        dropped.writer_gone();
        assert!(matches!(
            dropped.poll_take(&cx()),
            Poll::Ready(Take::Data(_))
        ));
        assert!(matches!(
            dropped.poll_take(&cx()),
            Poll::Ready(Take::Dropped)
        ));
    }
}

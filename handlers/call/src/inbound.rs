//! The receiving side of a connection's streams, without I/O: each stream's frame decoder,
//! the connection-wide account of the memory they hold, and the decision on each call a
//! peer starts (serve it, refuse it as over the limit, or reject a duplicate id).
//!
//! The session's stream readers are thin loops over this: read a chunk, [`Inbound::feed`],
//! [`Inbound::poll`] until empty, act on each message. It knows nothing of tasks, queues or
//! operations; that split lets the fuzz target drive the same code with frames across
//! several streams.

use alknet_proto::call::{CallId, DecodeError, Decoder, Message};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

/// Largest chunk read from a stream at once.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// One stream's decoder, its capacity counted in the connection's `total` while it lives.
pub(crate) struct Inbound {
    dec: Decoder,
    held: usize,
    total: Rc<Cell<usize>>,
}

impl Inbound {
    /// A decoder for frames of up to `max_frame` bytes, accounted in `total`.
    pub(crate) fn new(max_frame: usize, total: Rc<Cell<usize>>) -> Self {
        Self {
            dec: Decoder::with_max(max_frame),
            held: 0,
            total,
        }
    }

    /// Appends bytes read from the stream.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.dec.feed(bytes);
        self.account();
    }

    /// The next message and the bytes its frame took, `Ok(None)` when more bytes are needed.
    pub(crate) fn poll(&mut self) -> Result<Option<(Message, usize)>, DecodeError> {
        let before = self.dec.buffered();
        let res = self.dec.poll();
        let frame_len = before - self.dec.buffered();
        self.account();
        res.map(|m| m.map(|m| (m, frame_len)))
    }

    /// Whether one more read fits the connection's budget of `max_buffered` bytes.
    pub(crate) fn may_read(&self, max_buffered: usize) -> bool {
        self.total.get() + READ_CHUNK <= max_buffered
    }

    /// True when no partial frame is held (the stream may end cleanly here).
    pub(crate) fn is_empty(&self) -> bool {
        self.dec.buffered() == 0
    }

    /// Bytes this stream's decoder has allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.dec.capacity()
    }

    /// What the decoder allocated, not what it holds: a buffer is memory whether or not it
    /// is full.
    fn account(&mut self) {
        let now = self.dec.capacity();
        self.total.set(self.total.get() - self.held + now);
        self.held = now;
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.total.set(self.total.get() - self.held);
    }
}

/// What to do with a call the peer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Serve it.
    Serve,
    /// A call with this id is being served: a protocol violation.
    Duplicate,
    /// The connection serves its limit of calls: answer `UNAVAILABLE`.
    Busy,
}

/// Decides on a call `id` given the calls being served and the limit.
pub(crate) fn admit<V>(served: &HashMap<CallId, V>, id: CallId, max_concurrent: usize) -> Admit {
    if served.contains_key(&id) {
        Admit::Duplicate
    } else if served.len() >= max_concurrent {
        Admit::Busy
    } else {
        Admit::Serve
    }
}

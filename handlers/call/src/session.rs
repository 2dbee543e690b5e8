//! The call engine for one connection, on either side: every bidirectional stream is a
//! channel carrying frames both ways, calls are correlated by id, and each side may serve
//! calls and make them.
//!
//! Bounds: a per-connection cap on calls being served, on the memory the frame decoders
//! hold (their capacity, beyond QUIC's flow control, which stops counting once bytes are
//! read), on results queued for a caller that does not read them, and on queued outgoing
//! frames per stream and per connection. Every frame this side answers with (results,
//! completions, errors, refusals) waits for room in that send queue, and the stream's reader
//! waits with it: a peer that sends calls but never reads the answers stops being read, and
//! QUIC flow control stops it in turn. The one frame queued without waiting is the
//! `call.aborted` a dropped call handle sends (at most one per call this side started, and
//! starting a call waits for room). Error messages quote what the peer sent only in part
//! ([`MAX_QUOTED`] bytes of an operation id, [`MAX_ERROR_MESSAGE`] bytes of any message).
//! A peer's protocol violation costs it the stream (answered with `call.error` where
//! possible); after [`Limits::max_violations`] the connection is closed with
//! `PROTOCOL_ERROR`.

use crate::inbound::{Admit, Inbound, READ_CHUNK, admit};
use crate::ops::{Call, CallError, OpInfo, Operations, Origin, RawSink, SinkTo};
use crate::sync::{Abort, Notify, Outcome, run_guarded};
use alknet_core::{AuthContext, Connection, RecvStream, SendStream, close_code};
use alknet_proto::call::{
    Body, CallId, DecodeError, ErrorCode, Message, Request, encode_into, truncate,
};
use bytes::Bytes;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Stream error code sent with `STOP_SENDING` after a protocol violation.
const STOP_PROTOCOL: u32 = 0x107;
/// Bytes of a peer-chosen name (an operation id) quoted in an error or a log line.
pub(crate) const MAX_QUOTED: usize = 64;
/// Bytes of an error message sent to the peer; longer ones (a serde message quoting the
/// peer's input, say) are cut.
pub(crate) const MAX_ERROR_MESSAGE: usize = 512;

/// Per-connection limits of the call service.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame body accepted and sent (clamped to 64 MiB).
    pub max_frame: usize,
    /// Calls served at once per connection; more are answered `UNAVAILABLE`.
    pub max_concurrent_calls: usize,
    /// Bytes of partly received frames held per connection across its streams.
    pub max_buffered: usize,
    /// Bytes of results queued for one outgoing call before the stream stops being read.
    pub max_pending_output: usize,
    /// Bytes of frames queued for sending per stream before senders (and the stream's
    /// reader) wait.
    pub max_send_queue: usize,
    /// Bytes of frames queued for sending across the connection's streams before senders
    /// (and readers) wait.
    pub max_connection_send_queue: usize,
    /// Time a call may take, served or made.
    pub call_timeout: Duration,
    /// Protocol violations after which the connection is closed.
    pub max_violations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: alknet_proto::call::DEFAULT_MAX_FRAME,
            max_concurrent_calls: 256,
            max_buffered: 32 << 20,
            max_pending_output: 1 << 20,
            max_send_queue: 1 << 20,
            max_connection_send_queue: 4 << 20,
            call_timeout: Duration::from_secs(30),
            max_violations: 8,
        }
    }
}

/// Who may call what on this side.
pub(crate) enum Authority {
    /// A server checking its authenticated peer's scopes.
    Peer(AuthContext),
    /// A client serving the server it chose and pinned: every operation.
    Trusted,
}

/// The bytes queued for sending on all of a connection's streams, shared by their channels.
#[derive(Default)]
struct SendBudget {
    queued: Cell<usize>,
    /// Woken whenever a writer sends or a channel breaks: senders waiting for room re-check.
    notify: Notify,
}

/// One bidirectional stream: a queue of frames its writer task drains, and the calls on it.
pub(crate) struct Channel {
    queue: RefCell<VecDeque<Bytes>>,
    queued: Cell<usize>,
    budget: Rc<SendBudget>,
    closing: Cell<bool>,
    broken: Cell<bool>,
    notify: Notify,
    served: RefCell<HashSet<CallId>>,
    outgoing: RefCell<HashSet<CallId>>,
}

impl Channel {
    fn new(budget: Rc<SendBudget>) -> Rc<Self> {
        Rc::new(Self {
            queue: RefCell::default(),
            queued: Cell::new(0),
            budget,
            closing: Cell::new(false),
            broken: Cell::new(false),
            notify: Notify::default(),
            served: RefCell::default(),
            outgoing: RefCell::default(),
        })
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.closing.get() && !self.broken.get()
    }

    /// Queues a frame without waiting. Only for `call.aborted` from a dropped call handle
    /// (small, one per call started, and starting a call waits for room).
    fn push_now(&self, frame: Bytes) {
        if self.broken.get() {
            return;
        }
        let len = frame.len();
        self.queued.set(self.queued.get() + len);
        self.budget.queued.set(self.budget.queued.get() + len);
        self.queue.borrow_mut().push_back(frame);
        self.notify.notify();
    }

    /// Queues a frame once this stream's queue and the connection's have room (each may be
    /// passed by the one frame that finds room). Waiting here is the back-pressure that stops
    /// a reader whose peer does not read.
    async fn push(&self, frame: Bytes, limits: &Limits) -> Result<(), CallError> {
        self.budget
            .notify
            .wait_until(|| {
                self.broken.get()
                    || (self.queued.get() < limits.max_send_queue
                        && self.budget.queued.get() < limits.max_connection_send_queue)
            })
            .await;
        if self.broken.get() {
            return Err(CallError::unavailable("stream closed"));
        }
        self.push_now(frame);
        Ok(())
    }

    /// Bytes taken off the queue: gives them back to both budgets and wakes senders.
    fn sent(&self, len: usize) {
        self.queued.set(self.queued.get().saturating_sub(len));
        self.budget
            .queued
            .set(self.budget.queued.get().saturating_sub(len));
        self.notify.notify();
        self.budget.notify.notify();
    }

    fn close(&self) {
        self.closing.set(true);
        self.notify.notify();
    }
}

async fn run_writer(chan: Rc<Channel>, mut send: SendStream) {
    loop {
        chan.notify
            .wait_until(|| !chan.queue.borrow().is_empty() || chan.closing.get())
            .await;
        let next = chan.queue.borrow_mut().pop_front();
        match next {
            Some(frame) => {
                let len = frame.len();
                let res = send.write_chunk(frame).await;
                chan.sent(len);
                if res.is_err() {
                    chan.broken.set(true);
                    let left: usize = chan.queue.borrow_mut().drain(..).map(|f| f.len()).sum();
                    chan.sent(left);
                    return;
                }
            }
            None => {
                let _ = send.finish();
                return;
            }
        }
    }
}

/// One result of an outgoing call (`None` once completed) and the frame bytes it took.
pub(crate) type Item = (Result<Option<Value>, CallError>, usize);

/// Results of one outgoing call, queued until its caller reads them.
pub(crate) struct Pending {
    pub(crate) items: RefCell<VecDeque<Item>>,
    pub(crate) bytes: Cell<usize>,
    pub(crate) notify: Notify,
}

/// The engine for one connection.
pub(crate) struct Session {
    conn: Connection,
    ops: Operations,
    authority: Authority,
    limits: Limits,
    served: RefCell<HashMap<CallId, Rc<Abort>>>,
    outgoing: RefCell<HashMap<CallId, Rc<Pending>>>,
    /// Capacity of the frame decoders of all streams.
    buffered: Rc<Cell<usize>>,
    budget: Rc<SendBudget>,
    violations: Cell<u32>,
    shared: RefCell<Option<Rc<Channel>>>,
    opening: Cell<bool>,
    notify: Notify,
}

impl Session {
    pub(crate) fn new(
        conn: Connection,
        ops: Operations,
        authority: Authority,
        limits: Limits,
    ) -> Rc<Self> {
        Rc::new(Self {
            conn,
            ops,
            authority,
            limits,
            served: RefCell::default(),
            outgoing: RefCell::default(),
            buffered: Rc::default(),
            budget: Rc::default(),
            violations: Cell::new(0),
            shared: RefCell::new(None),
            opening: Cell::new(false),
            notify: Notify::default(),
        })
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn operations(&self) -> &Operations {
        &self.ops
    }

    pub(crate) fn auth(&self) -> Option<&AuthContext> {
        match &self.authority {
            Authority::Peer(a) => Some(a),
            Authority::Trusted => None,
        }
    }

    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        match &self.authority {
            Authority::Peer(a) => a.has_scope(scope),
            Authority::Trusted => true,
        }
    }

    /// Whether the peer may call (and see) `op`.
    pub(crate) fn may_call(&self, op: &OpInfo) -> bool {
        op.scope.as_deref().is_none_or(|s| self.has_scope(s))
    }

    /// Starts accepting the peer's streams, in a task of the connection.
    pub(crate) fn start(self: &Rc<Self>) {
        self.conn.spawn(self.clone().accept_loop());
    }

    /// Accepts the peer's streams until the connection ends.
    pub(crate) async fn accept_loop(self: Rc<Self>) {
        while let Ok((send, recv)) = self.conn.accept_bi().await {
            self.clone().start_channel(send, recv);
        }
    }

    fn start_channel(self: Rc<Self>, send: SendStream, recv: RecvStream) -> Rc<Channel> {
        let chan = Channel::new(self.budget.clone());
        self.conn.spawn(run_writer(chan.clone(), send));
        self.conn.spawn(self.clone().run_reader(chan.clone(), recv));
        chan
    }

    /// Opens a new stream for this side's calls.
    pub(crate) async fn open_channel(self: &Rc<Self>) -> Result<Rc<Channel>, CallError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| CallError::unavailable(format!("connection lost: {e}")))?;
        Ok(self.clone().start_channel(send, recv))
    }

    /// The stream shared by calls made without choosing one; opened on first use.
    pub(crate) async fn shared_channel(self: &Rc<Self>) -> Result<Rc<Channel>, CallError> {
        loop {
            if let Some(c) = self.shared.borrow().as_ref()
                && c.is_open()
            {
                return Ok(c.clone());
            }
            if !self.opening.get() {
                break;
            }
            self.notify.wait_until(|| !self.opening.get()).await;
        }
        self.opening.set(true);
        let res = self.open_channel().await;
        self.opening.set(false);
        self.notify.notify();
        let chan = res?;
        *self.shared.borrow_mut() = Some(chan.clone());
        Ok(chan)
    }

    fn frame(&self, msg: &Message) -> Option<Bytes> {
        let mut out = Vec::new();
        match encode_into(msg, self.limits.max_frame, &mut out) {
            Ok(()) => Some(Bytes::from(out)),
            Err(e) => {
                warn!(error = %e, "cannot encode call message");
                None
            }
        }
    }

    /// Queues a frame once there is room (see [`Channel::push`]); a frame that cannot be
    /// encoded is logged and dropped.
    async fn push(&self, chan: &Channel, id: CallId, body: Body) {
        if let Some(f) = self.frame(&Message { id, body }) {
            // A closed stream has no one to answer.
            let _ = chan.push(f, &self.limits).await;
        }
    }

    /// Queues `call.error`, its message cut to [`MAX_ERROR_MESSAGE`] bytes.
    async fn push_error(&self, chan: &Channel, id: CallId, e: &CallError) {
        let mut body = e.to_body();
        if body.message.len() > MAX_ERROR_MESSAGE {
            let cut = truncate(&body.message, MAX_ERROR_MESSAGE).len();
            body.message.truncate(cut);
            body.message.push('…');
        }
        self.push(chan, id, Body::Error(body)).await;
    }

    pub(crate) async fn send_output(
        &self,
        chan: &Channel,
        id: CallId,
        output: Value,
    ) -> Result<(), CallError> {
        let msg = Message {
            id,
            body: Body::Responded { output },
        };
        let mut out = Vec::new();
        encode_into(&msg, self.limits.max_frame, &mut out)
            .map_err(|e| CallError::internal(e.to_string()))?;
        chan.push(Bytes::from(out), &self.limits).await
    }

    /// Starts a call on `chan` once its queue has room; results arrive in the returned queue.
    pub(crate) async fn start_call(
        &self,
        chan: &Rc<Channel>,
        req: Request,
    ) -> Result<(CallId, Rc<Pending>), CallError> {
        if !chan.is_open() {
            return Err(CallError::unavailable("stream closed"));
        }
        let id = CallId::from_random(rand::random());
        let frame = self
            .frame(&Message {
                id,
                body: Body::Requested(req),
            })
            .ok_or_else(|| CallError::invalid_input("input too large for one frame"))?;
        chan.push(frame, &self.limits).await?;
        // Registered in the same poll as the frame is queued: no answer can come between.
        let pending = Rc::new(Pending {
            items: RefCell::default(),
            bytes: Cell::new(0),
            notify: Notify::default(),
        });
        self.outgoing.borrow_mut().insert(id, pending.clone());
        chan.outgoing.borrow_mut().insert(id);
        Ok((id, pending))
    }

    /// Ends this side's interest in an outgoing call; `abort` tells the peer to stop it.
    pub(crate) fn finish_call(&self, chan: &Channel, id: CallId, abort: bool) {
        let was = self.outgoing.borrow_mut().remove(&id);
        chan.outgoing.borrow_mut().remove(&id);
        chan.notify.notify();
        if let Some(p) = &was {
            // Wakes a reader waiting for this call's queue to drain.
            p.notify.notify();
        }
        if abort
            && was.is_some()
            && let Some(f) = self.frame(&Message {
                id,
                body: Body::Aborted,
            })
        {
            // Called from `Drop`, so it cannot wait: one small frame per call started.
            chan.push_now(f);
        }
    }

    async fn violation(
        &self,
        chan: &Channel,
        id: Option<CallId>,
        code: ErrorCode,
        message: String,
    ) {
        let n = self.violations.get() + 1;
        self.violations.set(n);
        let remote = self.conn.remote_address();
        let message = if message.len() > MAX_ERROR_MESSAGE {
            format!("{}…", truncate(&message, MAX_ERROR_MESSAGE))
        } else {
            message
        };
        info!(%remote, violations = n, error = %message, "call protocol violation");
        if n >= self.limits.max_violations {
            warn!(%remote, violations = n, "closing connection after repeated call protocol violations");
            self.conn.close(
                close_code::PROTOCOL_ERROR,
                b"repeated call protocol violations",
            );
            return;
        }
        self.push_error(
            chan,
            id.unwrap_or(CallId::NIL),
            &CallError::new(code, message),
        )
        .await;
    }

    async fn run_reader(self: Rc<Self>, chan: Rc<Channel>, mut recv: RecvStream) {
        let mut inbound = Inbound::new(self.limits.max_frame, self.buffered.clone());
        let clean_end = 'read: loop {
            loop {
                match inbound.poll() {
                    Ok(None) => break,
                    Ok(Some((msg, frame_len))) => {
                        if let Err((id, message)) = self.dispatch(&chan, msg, frame_len).await {
                            self.violation(&chan, Some(id), ErrorCode::InvalidInput, message)
                                .await;
                            break 'read false;
                        }
                    }
                    Err(e) => {
                        self.violation(&chan, e.id(), ErrorCode::InvalidInput, describe(&e))
                            .await;
                        break 'read false;
                    }
                }
            }
            if !inbound.may_read(self.limits.max_buffered) {
                self.push_error(
                    &chan,
                    CallId::NIL,
                    &CallError::unavailable("connection receive buffer full; use fewer streams"),
                )
                .await;
                break false;
            }
            match recv.read_chunk(READ_CHUNK).await {
                Ok(Some(chunk)) => inbound.feed(&chunk),
                Ok(None) => break inbound.is_empty(),
                Err(e) => {
                    debug!(error = %e, "call stream ended");
                    break false;
                }
            }
        };
        drop(inbound);
        let outgoing: Vec<CallId> = chan.outgoing.borrow_mut().drain().collect();
        for id in outgoing {
            if let Some(p) = self.outgoing.borrow_mut().remove(&id) {
                p.items
                    .borrow_mut()
                    .push_back((Err(CallError::unavailable("stream closed by the peer")), 0));
                p.notify.notify();
            }
        }
        if clean_end {
            // The peer sent everything; answer what it asked, then end our side.
            chan.notify
                .wait_until(|| chan.served.borrow().is_empty() || chan.broken.get())
                .await;
        } else {
            recv.stop(STOP_PROTOCOL);
            let served: Vec<CallId> = chan.served.borrow().iter().copied().collect();
            for id in served {
                if let Some(a) = self.served.borrow().get(&id) {
                    a.abort();
                }
            }
        }
        chan.close();
    }

    /// Handles one message; `Err` is a protocol violation that ends the stream.
    async fn dispatch(
        self: &Rc<Self>,
        chan: &Rc<Channel>,
        msg: Message,
        frame_len: usize,
    ) -> Result<(), (CallId, String)> {
        let id = msg.id;
        match msg.body {
            Body::Requested(req) => {
                let admitted = admit(&self.served.borrow(), id, self.limits.max_concurrent_calls);
                if admitted == Admit::Duplicate {
                    return Err((
                        id,
                        format!("duplicate call id {id}: a call with this id is in flight"),
                    ));
                }
                if admitted == Admit::Busy {
                    // Waits for room like any answer: a flood of refused calls stops the
                    // reader too.
                    self.push_error(
                        chan,
                        id,
                        &CallError::unavailable(format!(
                            "too many calls in flight (limit {}); retry later",
                            self.limits.max_concurrent_calls
                        )),
                    )
                    .await;
                    return Ok(());
                }
                let abort = Rc::new(Abort::default());
                self.served.borrow_mut().insert(id, abort.clone());
                chan.served.borrow_mut().insert(id);
                self.conn
                    .spawn(self.clone().serve(chan.clone(), id, req, abort));
            }
            Body::Aborted => {
                if let Some(a) = self.served.borrow().get(&id) {
                    a.abort();
                } else {
                    self.deliver(
                        id,
                        Err(CallError::unavailable("call aborted by the peer")),
                        0,
                    );
                }
            }
            Body::Responded { output } => {
                let pending = self.outgoing.borrow().get(&id).cloned();
                if let Some(p) = pending {
                    // Back-pressure: stop reading this stream until the caller catches up.
                    let limit = self.limits.max_pending_output;
                    p.notify
                        .wait_until(|| {
                            p.bytes.get() < limit || !self.outgoing.borrow().contains_key(&id)
                        })
                        .await;
                    self.deliver(id, Ok(Some(output)), frame_len);
                }
            }
            Body::Completed => self.deliver(id, Ok(None), 0),
            Body::Error(e) => self.deliver(id, Err(CallError::from_body(e)), 0),
        }
        Ok(())
    }

    /// Hands a result to an outgoing call; results for calls no longer wanted are dropped.
    fn deliver(&self, id: CallId, item: Result<Option<Value>, CallError>, len: usize) {
        let pending = self.outgoing.borrow().get(&id).cloned();
        if let Some(p) = pending {
            p.bytes.set(p.bytes.get() + len);
            p.items.borrow_mut().push_back((item, len));
            p.notify.notify();
        }
    }

    async fn serve(self: Rc<Self>, chan: Rc<Channel>, id: CallId, req: Request, abort: Rc<Abort>) {
        let Request {
            operation_id,
            input,
            auth_token,
            forwarded_for,
        } = req;
        // The peer's name for the operation, quoted and cut: what errors and logs show.
        let op_id = quote(&operation_id);
        if auth_token.is_some() {
            // Access follows the connection's key; a token cannot widen it (yet).
            debug!(call = %id, operation = %op_id, "call carries a bearer token; ignored");
        }
        drop(auth_token);
        if let Some(f) = &forwarded_for {
            debug!(call = %id, operation = %op_id, forwarded_for = %quote(f), "call forwarded");
        }
        let entry = self.ops.entry(&operation_id);
        drop(operation_id);
        let result = match entry {
            None => Some(Err(CallError::not_found(format!("no operation {op_id}")))),
            Some(entry) if !self.may_call(&entry.info) => Some(Err(CallError::forbidden(format!(
                "{op_id} needs scope `{}`",
                entry.info.scope.as_deref().unwrap_or_default()
            )))),
            Some(entry) => {
                let call = Call {
                    origin: Origin::Session(self.clone()),
                    id,
                    operation: entry.info.clone(),
                    forwarded_for,
                    abort: abort.clone(),
                };
                let sink = RawSink {
                    to: SinkTo::Channel {
                        session: self.clone(),
                        channel: chan.clone(),
                        id,
                    },
                    abort: abort.clone(),
                };
                let work = (entry.handler)(call, input, sink);
                match run_guarded(work, &abort, self.limits.call_timeout).await {
                    Outcome::Done(r) => Some(r),
                    Outcome::Aborted => None,
                    Outcome::TimedOut => Some(Err(CallError::new(
                        ErrorCode::Timeout,
                        format!(
                            "{op_id} did not finish within {} s",
                            self.limits.call_timeout.as_secs_f64()
                        ),
                    ))),
                    Outcome::Panicked => {
                        warn!(operation = %op_id, "call handler panicked");
                        Some(Err(CallError::internal("the operation failed")))
                    }
                }
            }
        };
        // The call keeps its slot until its last frame is queued: a peer that does not read
        // runs out of slots, and its reader then waits to refuse the next call.
        match result {
            Some(Ok(())) => self.push(&chan, id, Body::Completed).await,
            Some(Err(e)) => self.push_error(&chan, id, &e).await,
            None => self.push(&chan, id, Body::Aborted).await,
        }
        self.served.borrow_mut().remove(&id);
        chan.served.borrow_mut().remove(&id);
        chan.notify.notify();
    }
}

fn describe(e: &DecodeError) -> String {
    e.to_string()
}

/// A peer-chosen name as errors and logs show it: in backquotes, control and other
/// invisible characters escaped, cut to [`MAX_QUOTED`] bytes (`…` marks the cut).
pub(crate) fn quote(s: &str) -> String {
    let cut = truncate(s, MAX_QUOTED);
    let mut out = String::with_capacity(cut.len() + 4);
    out.push('`');
    for c in cut.chars() {
        let invisible = c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '`' {
            out.push_str("\\`");
        } else if invisible {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut.len() < s.len() {
        out.push('…');
    }
    out.push('`');
    out
}

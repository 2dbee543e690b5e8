//! Making calls: [`CallClient`] over one connection, usable on the client side of a
//! connection (from `ClientEndpoint::connect`) and on the server side (a node calling back
//! the peer that called it). A client also serves the peer's calls with its own operations.

use crate::ops::{CallError, Operations};
use crate::session::{Authority, Channel, Limits, Pending, Session};
use alknet_core::Connection;
use alknet_proto::call::{CallId, ErrorCode, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Options of one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Time the whole call may take; the client's default when `None`.
    pub timeout: Option<Duration>,
    /// A bearer token sent with the call.
    pub auth_token: Option<String>,
    /// Whom this call is made for (a claim, logged by the callee).
    pub forwarded_for: Option<String>,
}

/// Calls operations on the peer of one connection. Cheap to clone; shard-local.
#[derive(Clone)]
pub struct CallClient {
    session: Rc<Session>,
    channel: Option<Rc<Channel>>,
}

impl CallClient {
    /// A client on `conn` (the client side of a connection negotiated with
    /// [`ALPN`](crate::ALPN)) that also serves the peer's calls with `ops`, trusting the
    /// server it connected to with every operation.
    pub fn new(conn: Connection, ops: Operations) -> Self {
        Self::with_limits(conn, ops, Limits::default())
    }

    /// As [`CallClient::new`], with explicit limits.
    pub fn with_limits(conn: Connection, ops: Operations, limits: Limits) -> Self {
        let session = Session::new(conn, ops, Authority::Trusted, limits);
        session.start();
        Self {
            session,
            channel: None,
        }
    }

    pub(crate) fn from_session(session: Rc<Session>) -> Self {
        Self {
            session,
            channel: None,
        }
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        self.session.connection()
    }

    /// A client whose calls go on a stream of their own (by default all calls share one).
    pub async fn on_new_stream(&self) -> Result<CallClient, CallError> {
        let chan = self.session.open_channel().await?;
        Ok(Self {
            session: self.session.clone(),
            channel: Some(chan),
        })
    }

    /// Starts a call; read its results from the returned [`CallStream`].
    pub async fn start(
        &self,
        operation: &str,
        input: Value,
        options: CallOptions,
    ) -> Result<CallStream, CallError> {
        let chan = match &self.channel {
            Some(c) => c.clone(),
            None => self.session.shared_channel().await?,
        };
        let (id, pending) = self
            .session
            .start_call(
                &chan,
                Request {
                    operation_id: operation.to_owned(),
                    input,
                    auth_token: options.auth_token,
                    forwarded_for: options.forwarded_for,
                },
            )
            .await?;
        let timeout = options
            .timeout
            .unwrap_or(self.session.limits().call_timeout);
        Ok(CallStream {
            session: self.session.clone(),
            chan,
            id,
            pending,
            deadline: Instant::now() + timeout,
            timeout,
            done: false,
        })
    }

    /// Calls `operation` and collects every result.
    pub async fn call(&self, operation: &str, input: Value) -> Result<Vec<Value>, CallError> {
        let mut s = self.start(operation, input, CallOptions::default()).await?;
        let mut out = Vec::new();
        while let Some(v) = s.next().await {
            out.push(v?);
        }
        Ok(out)
    }

    /// Calls a unary operation with typed input and output.
    pub async fn call_typed<I: Serialize, O: DeserializeOwned>(
        &self,
        operation: &str,
        input: &I,
    ) -> Result<O, CallError> {
        let input = serde_json::to_value(input)
            .map_err(|e| CallError::invalid_input(format!("cannot serialize input: {e}")))?;
        let mut s = self.start(operation, input, CallOptions::default()).await?;
        let first = match s.next().await {
            Some(v) => v?,
            None => {
                return Err(CallError::internal(format!(
                    "{operation} returned no result"
                )));
            }
        };
        while let Some(v) = s.next().await {
            v?;
        }
        serde_json::from_value(first)
            .map_err(|e| CallError::internal(format!("unexpected result from {operation}: {e}")))
    }
}

/// The results of one call. Dropping it before the end aborts the call.
pub struct CallStream {
    session: Rc<Session>,
    chan: Rc<Channel>,
    id: CallId,
    pending: Rc<Pending>,
    deadline: Instant,
    timeout: Duration,
    done: bool,
}

impl CallStream {
    /// The call's id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// The next result; `None` once the call completed. After an error, `None` follows.
    pub async fn next(&mut self) -> Option<Result<Value, CallError>> {
        if self.done {
            return None;
        }
        let pending = self.pending.clone();
        let wait = pending
            .notify
            .wait_until(|| !pending.items.borrow().is_empty());
        let left = self.deadline.saturating_duration_since(Instant::now());
        if monoio::time::timeout(left, wait).await.is_err() {
            self.finish(true);
            return Some(Err(CallError::new(
                ErrorCode::Timeout,
                format!("no answer within {} s", self.timeout.as_secs_f64()),
            )));
        }
        let item = pending.items.borrow_mut().pop_front();
        if let Some((_, len)) = &item {
            pending.bytes.set(pending.bytes.get().saturating_sub(*len));
            pending.notify.notify();
        }
        match item.map(|(i, _)| i) {
            Some(Ok(Some(v))) => Some(Ok(v)),
            Some(Ok(None)) | None => {
                self.finish(false);
                None
            }
            Some(Err(e)) => {
                self.finish(false);
                Some(Err(e))
            }
        }
    }

    /// Cancels the call: the peer stops its work and every call made on its behalf.
    pub fn abort(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, abort: bool) {
        if !std::mem::replace(&mut self.done, true) {
            self.session.finish_call(&self.chan, self.id, abort);
        }
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        self.finish(true);
    }
}

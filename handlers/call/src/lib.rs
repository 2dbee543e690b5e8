//! Alknet call service: typed operations, discoverable with their schemas, callable from a
//! shell, a script or another node, over the `alknet/call` ALPN.
//!
//! The wire format lives in `alknet_proto::call`; this crate holds the operation registry
//! ([`Operations`]), the per-connection engine (calls correlated by id on any number of
//! streams, both sides calling each other, limits, timeouts, abort), the client library
//! ([`CallClient`]) and the `alknet call` command ([`cli`]).
#![forbid(unsafe_code)]

mod builtins;
pub mod cli;
mod client;
mod ops;
mod session;
mod sync;

pub use alknet_proto::call::{CallId, ErrorCode};
pub use builtins::{
    ADMIN_SCOPE, NodeInfo, OperationSchema, OperationSummary, SchemaRequest, ServiceList,
};
pub use client::{CallClient, CallOptions, CallStream};
pub use ops::{
    Call, CallError, NoInput, OpInfo, Operations, RegisterError, Sink, valid_operation_id,
};
pub use session::Limits;

use alknet_core::service::FnFactory;
use alknet_core::{AuthContext, Connection, HandlerFactory, LocalBoxFuture, ProtocolHandler};
use session::{Authority, Session};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// The call service's ALPN.
pub const ALPN: &[u8] = b"alknet/call";

/// The scope a peer needs to open `alknet/call`.
pub const SCOPE: &str = "call";

/// A snapshot producer for the admin built-ins (`/node/sessions`, `/services/list-peers`).
pub type JsonSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the service needs from the node: facts for `/node/info`, the sources of the admin
/// built-ins, the node's own operations and the limits. Build it with [`CallContext::new`]
/// and the `with_*` methods.
#[derive(Clone)]
pub struct CallContext {
    /// The node's fingerprint, `ed25519:<hex>`.
    pub fingerprint: String,
    /// Software version.
    pub version: String,
    /// ALPNs the node serves.
    pub alpns: Vec<String>,
    /// Worker threads.
    pub workers: usize,
    /// When the node started.
    pub started: Instant,
    /// Live sessions for `/node/sessions`; `UNAVAILABLE` when `None`.
    pub sessions: Option<JsonSource>,
    /// Known peers for `/services/list-peers`; `UNAVAILABLE` when `None`.
    pub peers: Option<JsonSource>,
    /// Operations served besides the built-ins.
    pub operations: Operations,
    /// Per-connection limits.
    pub limits: Limits,
}

impl CallContext {
    /// A context for the node with this fingerprint; version is this crate's, started now.
    pub fn new(fingerprint: impl Into<String>) -> Self {
        Self {
            fingerprint: fingerprint.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            alpns: vec![String::from_utf8_lossy(ALPN).into_owned()],
            workers: 1,
            started: Instant::now(),
            sessions: None,
            peers: None,
            operations: Operations::new(),
            limits: Limits::default(),
        }
    }

    /// Sets the ALPNs reported by `/node/info`.
    pub fn with_alpns<S: AsRef<[u8]>>(mut self, alpns: impl IntoIterator<Item = S>) -> Self {
        self.alpns = alpns
            .into_iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .collect();
        self
    }

    /// Sets the worker count.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the start time.
    pub fn with_started(mut self, started: Instant) -> Self {
        self.started = started;
        self
    }

    /// Sets the source of `/node/sessions`.
    pub fn with_sessions(
        mut self,
        f: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        self.sessions = Some(Arc::new(f));
        self
    }

    /// Sets the source of `/services/list-peers`.
    pub fn with_peers(mut self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        self.peers = Some(Arc::new(f));
        self
    }

    /// Sets the operations served besides the built-ins.
    pub fn with_operations(mut self, ops: Operations) -> Self {
        self.operations = ops;
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Built-ins plus the node's operations.
    pub fn all_operations(&self) -> Result<Operations, RegisterError> {
        let mut ops = Operations::new();
        builtins::register(&mut ops, self)?;
        ops.merge(&self.operations)?;
        Ok(ops)
    }
}

/// The `alknet/call` handler of one shard.
pub struct CallHandler {
    ops: Operations,
    limits: Limits,
}

impl ProtocolHandler for CallHandler {
    fn alpn(&self) -> &'static [u8] {
        ALPN
    }

    fn scope(&self) -> Option<&str> {
        Some(SCOPE)
    }

    fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) -> LocalBoxFuture<()> {
        let session = Session::new(
            conn,
            self.ops.clone(),
            Authority::Peer(auth),
            self.limits.clone(),
        );
        Box::pin(session.accept_loop())
    }
}

/// The factory registering `alknet/call`. Fails when an operation of `ctx` collides with a
/// built-in.
pub fn try_factory(ctx: CallContext) -> Result<Arc<dyn HandlerFactory>, RegisterError> {
    let ops = ctx.all_operations()?;
    let limits = ctx.limits.clone();
    Ok(Arc::new(FnFactory::new(ALPN, false, move |_| {
        Rc::new(CallHandler {
            ops: ops.clone(),
            limits: limits.clone(),
        }) as Rc<dyn ProtocolHandler>
    })))
}

/// The factory registering `alknet/call`. If an operation of `ctx` collides with a built-in,
/// it is left out (logged); use [`try_factory`] to treat that as an error.
pub fn factory(ctx: CallContext) -> Arc<dyn HandlerFactory> {
    match try_factory(ctx.clone()) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "call service: node operations left out");
            let ctx = ctx.with_operations(Operations::new());
            let mut ops = Operations::new();
            if let Err(e) = builtins::register(&mut ops, &ctx) {
                tracing::error!(error = %e, "call service: built-ins failed to register");
            }
            let limits = ctx.limits;
            Arc::new(FnFactory::new(ALPN, false, move |_| {
                Rc::new(CallHandler {
                    ops: ops.clone(),
                    limits: limits.clone(),
                }) as Rc<dyn ProtocolHandler>
            }))
        }
    }
}

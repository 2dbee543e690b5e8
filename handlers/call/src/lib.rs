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
#[doc(hidden)]
pub mod fuzzing;
mod inbound;
mod local;
mod ops;
mod session;
mod sync;

pub use alknet_proto::call::{CallId, ErrorCode};
pub use builtins::{
    ADMIN_SCOPE, DisconnectRequest, Disconnected, NodeInfo, OperationSchema, OperationSummary,
    SchemaRequest, ServiceList, StatsRequest,
};
pub use client::{CallClient, CallOptions, CallStream};
pub use local::Invocation;
pub use ops::{
    Call, CallError, NoInput, OpInfo, Operations, RegisterError, Sink, valid_operation_id,
};
pub use session::Limits;

use alknet_core::{
    AuthContext, Connection, Handler, NoConfig, Service, ServiceContext, ServiceInfo,
};
use session::{Authority, Session};
use std::rc::Rc;

/// The call service's ALPN.
pub const ALPN: &[u8] = b"alknet/call";

/// The scope a peer needs to open `alknet/call`.
pub const SCOPE: &str = "call";

/// The `alknet/call` service: the built-ins (discovery, node facts read from the service
/// context), the node's own operations and the per-connection limits. Its section,
/// `[services.call]`, has no keys besides `enabled`.
#[derive(Clone, Default)]
pub struct CallService {
    operations: Operations,
    limits: Limits,
}

impl CallService {
    /// The service with only the built-ins and default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `operations` besides the built-ins; an id a built-in already has is an error.
    pub fn with_operations(mut self, operations: Operations) -> Result<Self, RegisterError> {
        if let Some(id) = builtins::IDS.iter().find(|id| operations.get(id).is_some()) {
            return Err(RegisterError::Duplicate((*id).to_owned()));
        }
        self.operations = operations;
        Ok(self)
    }

    /// Sets the per-connection limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

impl Service for CallService {
    const NAME: &'static str = "call";
    type Config = NoConfig;
    type Handler = CallHandler;

    fn info(&self, _config: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: &[SCOPE],
            anonymous: false,
            uni_streams: false,
        }
    }

    fn build(&self, ctx: &ServiceContext<'_, NoConfig>) -> CallHandler {
        let ops = node_operations(ctx.node().clone(), &self.operations).unwrap_or_else(|e| {
            // `with_operations` rules collisions out; this is a bug guard.
            tracing::error!(error = %e, "call service: operations left out");
            Operations::new()
        });
        CallHandler {
            ops,
            limits: self.limits.clone(),
        }
    }
}

/// The operations a node serves: the built-ins, answering from `node`, and `extra`; an id of
/// `extra` a built-in already has is an error.
pub fn node_operations(
    node: std::sync::Arc<alknet_core::service::NodeFacts>,
    extra: &Operations,
) -> Result<Operations, RegisterError> {
    let mut ops = Operations::new();
    builtins::register(&mut ops, node)?;
    ops.merge(extra)?;
    Ok(ops)
}

/// The `alknet/call` handler of one shard.
pub struct CallHandler {
    ops: Operations,
    limits: Limits,
}

impl Handler for CallHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        let session = Session::new(
            conn,
            self.ops.clone(),
            Authority::Peer(auth),
            self.limits.clone(),
        );
        session.accept_loop().await;
    }
}

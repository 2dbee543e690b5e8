//! The operations every node serves: discovery (`/services/*`) and node facts (`/node/*`).

use crate::ops::{CallError, NoInput, Operations, RegisterError};
use alknet_core::service::{NodeError, NodeFacts};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// Scope of the operations that reveal other peers and sessions.
pub const ADMIN_SCOPE: &str = "admin";

/// One entry of `/services/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperationSummary {
    /// `/service/operation`.
    pub id: String,
    /// One line for people.
    pub description: String,
    /// Whether it may send several results.
    pub streaming: bool,
}

/// Output of `/services/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceList {
    /// The operations the caller may call, in id order.
    pub operations: Vec<OperationSummary>,
}

/// Input of `/services/schema`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SchemaRequest {
    /// The operation to describe.
    #[serde(rename = "operationId")]
    pub operation_id: String,
}

/// Output of `/services/schema`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OperationSchema {
    /// The operation.
    #[serde(rename = "operationId")]
    pub operation_id: String,
    /// One line for people.
    pub description: String,
    /// Whether it may send several results.
    pub streaming: bool,
    /// JSON Schema of the input.
    pub input: Value,
    /// JSON Schema of each result.
    pub output: Value,
}

/// Output of `/node/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeInfo {
    /// The node's key, `ed25519:<hex>`.
    pub fingerprint: String,
    /// Software version.
    pub version: String,
    /// The ALPNs this node serves.
    pub alpns: Vec<String>,
    /// Worker threads (shards).
    pub workers: usize,
    /// Seconds since the node started.
    pub uptime_secs: u64,
}

/// Input of `/node/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsRequest {
    /// Milliseconds between two snapshots (100..=1000; default 1000).
    #[serde(default)]
    #[schemars(range(min = 100, max = 1000))]
    pub interval_ms: Option<u32>,
    /// Snapshots to send (1..=20; default 1): a series ends within 20 s, a watcher
    /// (the status page's event stream) asks again.
    #[serde(default)]
    #[schemars(range(min = 1, max = 20))]
    pub count: Option<u32>,
}

/// Input of `/node/disconnect`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// The peer whose live sessions to close.
    pub peer: String,
}

/// Output of `/node/disconnect`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Disconnected {
    /// Its sessions that were live.
    pub sessions: usize,
}

/// The ids of the built-in operations (a node's own operations may not reuse them).
pub(crate) const IDS: [&str; 7] = [
    "/node/disconnect",
    "/services/list",
    "/services/schema",
    "/services/list-peers",
    "/node/info",
    "/node/sessions",
    "/node/stats",
];

fn node_error(e: NodeError) -> CallError {
    match e {
        NodeError::Unavailable(_) => CallError::unavailable(e.to_string()),
        _ => CallError::internal(e.to_string()),
    }
}

fn to_json<T: Serialize>(value: T) -> Result<Value, CallError> {
    serde_json::to_value(value).map_err(|e| CallError::internal(e.to_string()))
}

/// Registers the built-in operations, answering from `node`.
pub(crate) fn register(ops: &mut Operations, node: Arc<NodeFacts>) -> Result<(), RegisterError> {
    ops.unary(
        "/services/list",
        "List the operations you may call",
        None,
        |call, _: NoInput| async move {
            let operations = call
                .operations()
                .iter()
                .filter(|op| op.scope.as_deref().is_none_or(|s| call.has_scope(s)))
                .map(|op| OperationSummary {
                    id: op.id.clone(),
                    description: op.description.clone(),
                    streaming: op.streaming,
                })
                .collect();
            Ok(ServiceList { operations })
        },
    )?;
    ops.unary(
        "/services/schema",
        "JSON Schema of an operation's input and output",
        None,
        |call, req: SchemaRequest| async move {
            // An operation the caller may not call does not exist for it.
            match call.operations().get(&req.operation_id) {
                Some(op) if op.scope.as_deref().is_none_or(|s| call.has_scope(s)) => {
                    Ok(OperationSchema {
                        operation_id: op.id.clone(),
                        description: op.description.clone(),
                        streaming: op.streaming,
                        input: op.input_schema.clone(),
                        output: op.output_schema.clone(),
                    })
                }
                _ => Err(CallError::not_found(format!(
                    "no operation {}",
                    req.operation_id
                ))),
            }
        },
    )?;
    let n = node.clone();
    ops.unary(
        "/services/list-peers",
        "List the peers this node knows (admin)",
        Some(ADMIN_SCOPE),
        move |_call, _: NoInput| {
            // Core's types carry no JSON Schema; the answer is their JSON.
            let peers = n.peers().map_err(node_error).and_then(to_json);
            async move { peers }
        },
    )?;
    let n = node.clone();
    ops.unary(
        "/node/info",
        "The node's fingerprint, version, services, workers and uptime",
        None,
        move |_call, _: NoInput| {
            let info = NodeInfo {
                fingerprint: n.fingerprint().to_string(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                alpns: n
                    .alpns()
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
                workers: n.workers(),
                uptime_secs: n.started().elapsed().as_secs(),
            };
            async move { Ok(info) }
        },
    )?;
    let n = node.clone();
    ops.streaming(
        "/node/stats",
        "The node's counters (as `alknet stats`): `count` snapshots, one per interval",
        None,
        move |call, req: StatsRequest, sink: crate::ops::Sink<Value>| {
            let n = n.clone();
            async move {
                let interval = req.interval_ms.unwrap_or(1000);
                if !(100..=1000).contains(&interval) {
                    return Err(CallError::invalid_input("interval_ms must be 100..=1000"));
                }
                let count = req.count.unwrap_or(1);
                if !(1..=20).contains(&count) {
                    return Err(CallError::invalid_input("count must be 1..=20"));
                }
                for i in 0..count {
                    if call.is_aborted() {
                        break;
                    }
                    if i > 0 {
                        monoio::time::sleep(std::time::Duration::from_millis(interval.into()))
                            .await;
                    }
                    let mut v = to_json(n.stats())?;
                    if let Some(m) = v.as_object_mut() {
                        m.insert("uptime_secs".into(), n.started().elapsed().as_secs().into());
                        m.insert("sessions".into(), n.sessions().len().into());
                    }
                    sink.send(&v).await?;
                }
                Ok(())
            }
        },
    )?;
    let n = node.clone();
    ops.unary(
        "/node/disconnect",
        "Close every live session of a peer (admin; the peer may connect again)",
        Some(ADMIN_SCOPE),
        move |call, req: DisconnectRequest| {
            let sessions = n.close_peer(&req.peer);
            let by = call
                .auth()
                .and_then(|a| a.identity.as_ref())
                .map(|i| i.id.clone())
                .unwrap_or_default();
            tracing::info!(peer = %req.peer, by = %by, sessions, "sessions closed on request");
            async move { Ok(Disconnected { sessions }) }
        },
    )?;
    ops.unary(
        "/node/sessions",
        "The node's live sessions (admin)",
        Some(ADMIN_SCOPE),
        move |_call, _: NoInput| {
            let sessions = to_json(node.sessions());
            async move { sessions }
        },
    )?;
    Ok(())
}

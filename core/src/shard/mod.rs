//! One shard: a `quinn_proto::Endpoint`, its connections and their timers, on one core.
//!
//! The shard is a sans-IO state machine driven by a thin monoio layer, as quinn-proto is
//! driven by quinn:
//!
//! | file          | its one job                                                          |
//! |---------------|----------------------------------------------------------------------|
//! | `state.rs`    | the state machine: routing, the endpoint, driving connections, events |
//! | `admit.rs`    | what to do with a connection attempt (accept, Retry, refuse, ignore) |
//! | `auth.rs`     | whom a finished handshake serves, or the typed reason it is refused  |
//! | `timers.rs`   | every connection's next deadline, and the earliest of them           |
//! | `penalty.rs`  | per-source penalties for repeated failed handshakes and authentication |
//! | `sources.rs`  | what all shards share per source and peer: handshakes in flight, connection counts, used Retry tokens |
//! | `forward.rs`  | the byte budget of each shard's inbox of forwarded datagrams         |
//! | `migrate.rs`  | how often a connection may move to an address it has not used      |
//! | `driver.rs`   | the monoio tasks: socket, inbox and wake-ups in; transmits, forwards and handler tasks out |
//!
//! The state never reads a clock, touches a socket or spawns a task; the driver reads the
//! clock once per wake-up and passes `now` in. The deterministic tests in `tests/` drive the
//! same state with a virtual clock against a quinn-proto client.
//!
//! Nothing is shared with other shards except the forwarding queues (datagrams whose
//! connection lives elsewhere), the admission tables (`sources.rs`: atomics read without a
//! lock on every connection attempt, a mutex only on failures and per-peer counts) and the
//! counters.

mod admit;
pub(crate) mod auth;
pub(crate) mod driver;
mod forward;
mod migrate;
pub mod penalty;
pub(crate) mod sources;
pub(crate) mod state;
mod timers;

#[cfg(test)]
mod tests;

pub use auth::AuthFailure;
pub use forward::ForwardBatch;
pub(crate) use forward::ForwardBudget;
pub(crate) use migrate::MigrationGate;

use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A service as the shard sees it: found by ALPN, asked for its scope and anonymity, and
/// given each connection it serves.
pub(crate) type Service = crate::service::Route;

/// A datagram handed from the shard that received it to the shard that owns it.
#[derive(Debug)]
pub struct Forwarded {
    /// The sender.
    pub remote: SocketAddr,
    /// The local address it arrived on, when known.
    pub local_ip: Option<IpAddr>,
    /// ECN bits as received.
    pub ecn: Option<quinn_proto::EcnCodepoint>,
    /// The datagram.
    pub data: Bytes,
}

/// Messages between shards and from the control plane.
#[derive(Debug)]
pub enum ShardMsg {
    /// Datagrams owned by the receiving shard, holding their bytes of its inbox budget.
    Datagrams(ForwardBatch),
    /// Stop accepting, drain, close everything, exit.
    Shutdown,
    /// Close every connection of this peer (revoked or disabled).
    ClosePeer(String),
    /// This peer's record changed (a key or scope removed): check each of its live sessions
    /// against the current record and close those it no longer authorises.
    Recheck(String),
    /// The process crossed its memory budget (`true`: now above it).
    MemoryPressure(bool),
    /// A reload: the limits read per event from now on, and the services turned off.
    Reload(Arc<LiveUpdate>),
}

/// What a reload changes on a running shard.
#[derive(Debug)]
pub struct LiveUpdate {
    /// The configuration the shard reads from now on: the new file's keys that can change
    /// live (admission caps, handshake timeout and caps, drain period), the running values
    /// of the others (see [`crate::ops::reload`]).
    pub config: Arc<crate::config::Config>,
    /// The ALPNs of the services now off (the whole list, not a change): new connections to
    /// them are refused and live ones closed.
    pub disabled_alpns: Vec<Vec<u8>>,
}

/// The authenticated connections of one shard, readable from any thread without asking the
/// shard (so a handler on a shard can list sessions without waiting on itself).
pub type SessionBoard = Arc<std::sync::Mutex<std::collections::HashMap<u64, SessionInfo>>>;

/// One authenticated connection, as `alknet sessions` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// Peer id (`anonymous` for anonymous services).
    pub peer: String,
    /// Service ALPN.
    pub alpn: String,
    /// Remote address now: where the connection's current path goes, which changes when the
    /// client moves (NAT rebinding, another network).
    pub remote: String,
    /// Remote address at the handshake.
    #[serde(default)]
    pub handshake_remote: String,
    /// When the handshake finished, Unix seconds.
    pub since_unix: u64,
    /// The largest UDP payload the connection's path carries now, as MTU discovery found it
    /// (starts at 1200; see `[transport] max_udp_payload`).
    #[serde(default)]
    pub mtu: u16,
    /// The shard holding it.
    pub shard: usize,
}

/// The authenticated connections on `boards` (one per shard), by peer then age.
pub(crate) fn sessions_of(boards: &[SessionBoard]) -> Vec<SessionInfo> {
    let mut all: Vec<SessionInfo> = boards
        .iter()
        .flat_map(|b| match b.lock() {
            Ok(g) => g.values().cloned().collect::<Vec<_>>(),
            Err(p) => p.into_inner().values().cloned().collect(),
        })
        .collect();
    all.sort_by(|a, b| (&a.peer, a.since_unix).cmp(&(&b.peer, b.since_unix)));
    all
}

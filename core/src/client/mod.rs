//! The client side: one shard in the client role, on the caller's monoio runtime.
//!
//! Used by `alknet connect`, `alknet call`, `alknet join` and by node-to-node clients. The
//! server's key is pinned (by `--fingerprint`, or by the entry of a server stored under a
//! name) or checked against the known-servers file (trust on first use), as ssh does.

use crate::config::Config;
use crate::conn::Connection;
use crate::identity::tls::{NodeKey, TlsError};
use crate::net::udp::UdpIo;
use crate::ops::stats::ShardStats;
use crate::shard::driver::Driver;
use crate::shard::state::{Role, ShardConfig, ShardState, WallClock};
use alknet_proto::Fingerprint;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

mod join;
mod servers;
mod trust;

pub use join::{JoinFailure, Joined, join};
pub(crate) use servers::fuzz_servers;
pub use servers::{
    ResolveError, ResolvedServer, SERVERS_FILE, ServerEntry, Servers, resolve_server, valid_name,
};
pub(crate) use trust::fuzz_known_servers;
pub use trust::{KnownServers, TrustedConnect, connect_trusted, connect_trusted_on};

/// A pinned server key as a client option gives it (`--fingerprint`, or
/// `ALKNET_SERVER_FINGERPRINT`): `None` when absent or empty; the error names `what`.
pub fn parse_pin(
    what: &str,
    value: Option<&str>,
) -> Result<Option<alknet_proto::Fingerprint>, String> {
    match value {
        None | Some("") => Ok(None),
        Some(f) => f
            .parse::<alknet_proto::Fingerprint>()
            .map(Some)
            .map_err(|e| format!("{what} {f:?}: {e}")),
    }
}

/// File in the data directory remembering servers' keys.
pub const KNOWN_SERVERS_FILE: &str = "known_servers";

/// Why a client connection failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Local socket set-up.
    #[error("cannot open a local UDP socket: {0}")]
    Socket(std::io::Error),
    /// TLS set-up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn-proto refused to start the connection.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The server presented another key than the pinned or remembered one.
    #[error(
        "@@@ SERVER KEY MISMATCH @@@\nthe server at {addr} presented key {got}\nbut {source_desc} says it is {expected}.\nSomeone may be intercepting this connection, or the server's key was replaced.\n{fix}"
    )]
    KeyMismatch {
        /// The server.
        addr: String,
        /// The key it presented.
        got: Box<Fingerprint>,
        /// The key expected.
        expected: Box<Fingerprint>,
        /// Where the expectation came from.
        source_desc: String,
        /// What to do if the change is expected.
        fix: String,
    },
    /// A first-seen server key could not be remembered.
    #[error("cannot write {}: {error}", path.display())]
    Remember {
        /// The known-servers file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The handshake or connection failed.
    #[error("connection to {addr} failed: {reason}")]
    Failed {
        /// The server.
        addr: SocketAddr,
        /// Why.
        reason: quinn_proto::ConnectionError,
    },
}

/// A client endpoint: owns the shard that drives its connections.
pub struct ClientEndpoint {
    driver: Rc<Driver>,
}

impl ClientEndpoint {
    /// Opens a UDP socket for talking to `server` and starts its tasks on the current monoio
    /// runtime.
    pub fn new(
        config: Arc<Config>,
        node: &NodeKey,
        server: SocketAddr,
    ) -> Result<Self, ClientError> {
        let bind: SocketAddr = if server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .and_then(|s| {
            s.set_nonblocking(true)?;
            s.bind(&bind.into())?;
            Ok(s)
        })
        .map_err(ClientError::Socket)?;
        let io = UdpIo::new(socket, &config.udp).map_err(ClientError::Socket)?;
        let codec = crate::net::endpoint::cid_codec(node, 0);
        let ep_cfg = Arc::new(crate::net::endpoint::endpoint_config(
            node,
            &codec,
            0,
            config.transport.max_udp_payload,
        ));
        let endpoint = quinn_proto::Endpoint::new(ep_cfg, None, !io.may_fragment(), None);
        let (tx, rx) = flume::bounded(64);
        let state = ShardState::new(ShardConfig {
            id: 0,
            shards: 1,
            endpoint,
            codec,
            config,
            stats: Arc::new(ShardStats::default()),
            segments: io.segment_limit(),
            wall: WallClock {
                at: Instant::now(),
                unix: crate::ops::control::unix_now(),
            },
            // One shard: nothing is ever forwarded.
            forward_budget: crate::shard::ForwardBudget::new(1, 0),
            role: Role::Client,
        });
        let driver = Driver::new(state, io, vec![tx]);
        monoio::spawn(driver.clone().run_receiver());
        monoio::spawn(driver.clone().run_inbox(rx));
        monoio::spawn(driver.clone().run_waker());
        Ok(Self { driver })
    }

    /// Starts a connection; await [`Connection::connected`] for the handshake.
    pub fn connect(
        &self,
        client_config: quinn_proto::ClientConfig,
        addr: SocketAddr,
    ) -> Result<Connection, ClientError> {
        let now = Instant::now();
        let cell = self
            .driver
            .state()
            .borrow_mut()
            .connect(now, client_config, addr, "alknet")
            .map_err(|e| ClientError::Connect {
                addr,
                message: e.to_string(),
            })?;
        // Send the first flight from the waker task, on the next turn.
        self.driver.state().borrow().signal().notify();
        Ok(crate::shard::state::connection(&cell))
    }

    /// The local socket address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.driver.io().local_addr()
    }

    /// Waits until every connection of this endpoint has finished closing (bounded by
    /// `limit`).
    pub async fn wait_idle(&self, limit: std::time::Duration) {
        let until = Instant::now() + limit;
        while self.driver.state().borrow().connection_count() > 0 && Instant::now() < until {
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

//! The client side: one shard with no server role, on the caller's monoio runtime.
//!
//! Used by `alknet connect` and by node-to-node clients. The server's key is pinned or
//! checked against the known-servers file (trust on first use), as ssh does.

use crate::config::Config;
use crate::conn::{ConnCell, ConnInner, Connection};
use crate::identity::MemoryIdentities;
use crate::identity::tls::{NodeKey, ServerKeySeen, ServerTrust, TlsError};
use crate::net::udp::UdpIo;
use crate::ops::stats::ShardStats;
use crate::service::Registry;
use crate::shard::Shard;
use alknet_proto::Fingerprint;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

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
    shard: Rc<Shard>,
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
        let ep_cfg = Arc::new(crate::net::endpoint::endpoint_config(node, &codec, 0));
        let endpoint = quinn_proto::Endpoint::new(ep_cfg, None, !io.may_fragment(), None);
        let (tx, rx) = flume::bounded(64);
        let shard = Shard::new(
            0,
            1,
            endpoint,
            io,
            Arc::new(ShardStats::default()),
            vec![tx],
            codec,
            Registry::new().build(0),
            Arc::new(MemoryIdentities::new()),
            config,
            None,
            Arc::default(),
            Arc::default(),
        );
        monoio::spawn(shard.clone().run_receiver());
        monoio::spawn(shard.clone().run_inbox(rx));
        monoio::spawn(shard.clone().run_driver());
        Ok(Self { shard })
    }

    /// Starts a connection; await [`Connection::connected`] for the handshake.
    pub fn connect(
        &self,
        client_config: quinn_proto::ClientConfig,
        addr: SocketAddr,
    ) -> Result<Connection, ClientError> {
        let now = Instant::now();
        let shard = &self.shard;
        let mut core = shard.core.borrow_mut();
        let (ch, proto) = core
            .endpoint_mut()
            .connect(now, client_config, addr, "alknet")
            .map_err(|e| ClientError::Connect {
                addr,
                message: e.to_string(),
            })?;
        let cell = Rc::new(ConnCell {
            inner: RefCell::new(ConnInner::new(proto, ch, now)),
            signal: shard.signal.clone(),
            stats: shard.stats.clone(),
        });
        shard.insert(&mut core, ch, cell.clone());
        drop(core);
        crate::conn::mark_dirty(&cell);
        Ok(Connection::new(cell))
    }

    /// The local socket address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shard.io.local_addr()
    }

    /// Waits until every connection of this endpoint has finished closing (bounded by
    /// `limit`).
    pub async fn wait_idle(&self, limit: std::time::Duration) {
        let until = Instant::now() + limit;
        while self.shard.connection_count() > 0 && Instant::now() < until {
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// The known-servers file: one `host:port ed25519:…` line per server.
pub struct KnownServers {
    path: PathBuf,
}

impl KnownServers {
    /// The file in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(KNOWN_SERVERS_FILE),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remembered key for `server`, if any. Malformed lines are skipped.
    pub fn get(&self, server: &str) -> Option<Fingerprint> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines().rev().find_map(|line| {
            let mut parts = line.split_whitespace();
            let host = parts.next()?;
            let fp = parts.next()?;
            (host == server).then(|| fp.parse().ok()).flatten()
        })
    }

    /// Remembers `fp` for `server`.
    pub fn add(&self, server: &str, fp: &Fingerprint) -> std::io::Result<()> {
        crate::fsutil::append_private(&self.path, &format!("{server} {fp}\n"))
    }
}

/// How to trust the server for a connection: the pinned key, else the remembered one, else
/// whatever it presents (to be remembered after the handshake).
pub fn trust_for(pinned: Option<Fingerprint>, known: &KnownServers, server: &str) -> ServerTrust {
    match pinned.or_else(|| known.get(server)) {
        Some(fp) => ServerTrust::Pinned(fp),
        None => ServerTrust::Observe,
    }
}

/// Turns a failed handshake into a key-mismatch error when the key differed.
pub fn explain_failure(
    err: quinn_proto::ConnectionError,
    addr: SocketAddr,
    server: &str,
    trust: &ServerTrust,
    seen: &ServerKeySeen,
    pinned: bool,
    known: &KnownServers,
) -> ClientError {
    if let (ServerTrust::Pinned(expected), Some(got)) = (trust, seen.get())
        && *expected != got
    {
        return ClientError::KeyMismatch {
            addr: server.to_owned(),
            got: Box::new(got),
            expected: Box::new(*expected),
            source_desc: if pinned {
                "--fingerprint".to_owned()
            } else {
                known.path().display().to_string()
            },
            fix: if pinned {
                format!("If the change is expected, pass --fingerprint {got}.")
            } else {
                format!(
                    "If the change is expected, remove the line for {server} from {} (or pass --fingerprint {got}).",
                    known.path().display()
                )
            },
        };
    }
    ClientError::Failed { addr, reason: err }
}

//! The one `alknet/tunnel` connection of `alknet forward` and `alknet socks`, kept up: a
//! lost connection is replaced with capped exponential backoff, and a network change the
//! connection survives (QUIC migration) is not a loss at all.
//!
//! The first connection must succeed: a wrong address or key is an error at start, not a
//! retry loop. After that only what cannot heal ends the client: the server's key changed,
//! or the gateway refused this client (unknown key, revoked, no `tunnel` scope).

use super::remote::Remote;
use alknet_core::client::{
    ClientEndpoint, ClientError, KnownServers, TrustedConnect, connect_trusted_on, resolve_server,
};
use alknet_core::config::Config;
use alknet_core::identity::tls::NodeKey;
use alknet_core::{Connection, ConnectionError, close_code};
use alknet_proto::Fingerprint;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// The first wait after a failed attempt; doubled per failure up to [`MAX_BACKOFF`].
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection that lived at least this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Keep-alive interval: under the 30 s idle timeout, and often enough for NAT mappings.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Where and as whom to connect.
pub(crate) struct LinkTarget {
    /// The data directory (known servers, stored servers).
    pub(crate) data_dir: PathBuf,
    /// The server as given: `host:port` or a stored name.
    pub(crate) server: String,
    /// `--fingerprint`, which wins over a stored server's key.
    pub(crate) pinned: Option<Fingerprint>,
    /// This client's key.
    pub(crate) node_key: NodeKey,
}

/// The kept-up connection; local connections wait on [`Link::current`] for it.
pub(crate) struct Link {
    target: LinkTarget,
    config: Arc<Config>,
    known: KnownServers,
    current: watch::Sender<Option<Connection>>,
    /// One endpoint (socket) per address family, reused by every attempt.
    endpoints: RefCell<[Option<Rc<ClientEndpoint>>; 2]>,
}

impl Link {
    /// A link to `target`, not yet connected.
    pub(crate) fn new(target: LinkTarget) -> Rc<Self> {
        let mut config = Config::default();
        config.transport.keep_alive = alknet_core::config::ConfigDuration(KEEP_ALIVE);
        let known = KnownServers::in_dir(&target.data_dir);
        Rc::new(Self {
            target,
            config: Arc::new(config),
            known,
            current: watch::channel(None).0,
            endpoints: RefCell::new([None, None]),
        })
    }

    /// The connection once one is up, waiting at most `limit`.
    pub(crate) async fn current(&self, limit: Duration) -> Option<Connection> {
        let mut rx = self.current.subscribe();
        let wait = async {
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
                .await
                .ok()
                .and_then(|c| c.clone())
        };
        monoio::time::timeout(limit, wait).await.ok().flatten()
    }

    /// Closes the current connection (the client is stopping) and waits, bounded, until the
    /// close is through.
    pub(crate) async fn close(&self, reason: &[u8]) {
        if let Some(c) = self.current.send_replace(None) {
            c.close(close_code::NO_ERROR, reason);
        }
        let endpoints: Vec<_> = self.endpoints.borrow().iter().flatten().cloned().collect();
        for e in endpoints {
            e.wait_idle(Duration::from_secs(1)).await;
        }
    }

    fn endpoint(&self, addr: SocketAddr) -> Result<Rc<ClientEndpoint>, ClientError> {
        let slot = usize::from(addr.is_ipv6());
        if let Some(e) = self.endpoints.borrow().get(slot).cloned().flatten() {
            return Ok(e);
        }
        let e = Rc::new(ClientEndpoint::new(
            self.config.clone(),
            &self.target.node_key,
            addr,
        )?);
        if let Some(s) = self.endpoints.borrow_mut().get_mut(slot) {
            *s = Some(e.clone());
        }
        Ok(e)
    }

    /// One attempt: resolve the server (names again each time, off this thread) and connect.
    async fn attempt(&self) -> Result<Connection, Failure> {
        let (tx, rx) = flume::bounded(1);
        let (dir, name) = (self.target.data_dir.clone(), self.target.server.clone());
        std::thread::spawn(move || {
            let _ = tx.send(resolve_server(&dir, &name));
        });
        let server = match rx.recv_async().await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::Retry(e.to_string())),
            Err(_) => return Err(Failure::Retry("name resolution failed".into())),
        };
        let endpoint = self
            .endpoint(server.addr)
            .map_err(|e| Failure::Retry(e.to_string()))?;
        let t = TrustedConnect {
            config: self.config.clone(),
            node_key: &self.target.node_key,
            known: &self.known,
            server_name: &server.server_name,
            addr: server.addr,
            alpn: crate::ALPN,
            pinned: self.target.pinned.or(server.pinned),
        };
        connect_trusted_on(&endpoint, &t)
            .await
            .map_err(|e| match e {
                ClientError::KeyMismatch { .. } | ClientError::Remember { .. } => {
                    Failure::Fatal(e.to_string())
                }
                ClientError::Failed { reason, .. } if refused(&reason).is_some() => {
                    Failure::Fatal(refused(&reason).unwrap_or_default())
                }
                e => Failure::Retry(e.to_string()),
            })
    }

    /// Keeps the connection up until something that cannot heal ends it (the error says
    /// what). `remote` asks for the remote forwards on each connection.
    pub(crate) async fn run(self: Rc<Self>, remote: Rc<Remote>) -> anyhow::Result<()> {
        let mut backoff = INITIAL_BACKOFF;
        let mut first = true;
        info!(server = %self.target.server, "connecting to the gateway");
        loop {
            let conn = match self.attempt().await {
                Ok(c) => c,
                Err(Failure::Fatal(m)) => anyhow::bail!("{m}"),
                Err(Failure::Retry(m)) if first => {
                    anyhow::bail!("cannot connect to {}: {m}", self.target.server)
                }
                Err(Failure::Retry(m)) => {
                    warn!(server = %self.target.server, error = %m, retry_in = ?backoff, "cannot reach the gateway");
                    monoio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let since = Instant::now();
            info!(server = %self.target.server, addr = %conn.remote_address(), "connected to the gateway");
            self.current.send_replace(Some(conn.clone()));
            if let Err(e) = remote.clone().start(&conn, first).await {
                // A refusal of the whole client shows first as a failed request.
                if let Some(m) = conn.close_reason().as_ref().and_then(refused) {
                    anyhow::bail!("{m}");
                }
                return Err(e);
            }
            first = false;
            let reason = conn.closed().await;
            self.current.send_replace(None);
            if let Some(m) = refused(&reason) {
                anyhow::bail!("{m}");
            }
            if matches!(reason, ConnectionError::LocallyClosed) {
                return Ok(());
            }
            if since.elapsed() >= STABLE {
                backoff = INITIAL_BACKOFF;
                warn!(server = %self.target.server, reason = %reason, "connection to the gateway lost; reconnecting");
            } else {
                warn!(server = %self.target.server, reason = %reason, retry_in = ?backoff, "connection to the gateway lost; reconnecting");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

enum Failure {
    Fatal(String),
    Retry(String),
}

/// The gateway's refusal of this client, which no retry changes, as a message.
fn refused(e: &ConnectionError) -> Option<String> {
    let ConnectionError::ApplicationClosed(c) = e else {
        return None;
    };
    let code = u32::try_from(c.error_code.into_inner()).ok()?;
    let (what, fix) = match code {
        close_code::UNAUTHORIZED => (
            "the gateway does not know this client's key (or disabled it)",
            "give its operator this client's key (`alknet id`) to add as a peer with the `tunnel` scope, or join with an invite (`alknet join CODE --as NAME`)",
        ),
        close_code::FORBIDDEN => (
            "the gateway does not give this client the tunnel service",
            "ask its operator for the `tunnel` scope (`alknet peer update ID --add-scope tunnel` on the gateway)",
        ),
        close_code::REVOKED => (
            "the gateway revoked this client",
            "ask its operator to enable it again",
        ),
        _ => return None,
    };
    let reason = String::from_utf8_lossy(&c.reason);
    Some(format!("{what}: {reason}\n{fix}"))
}

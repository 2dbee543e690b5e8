//! What a service is given when it is built on a shard: the [`ServiceContext`], and the node
//! facts it can read ([`NodeFacts`]) as typed values.

use super::drain::Drain;
use super::registry::ShardSetup;
use super::spawn::Spawner;
use crate::identity::store::RedbStore;
use crate::identity::{IdentityError, IdentityProvider, IdentityStore};
use crate::ops::admin::PeerView;
use crate::ops::stats::{self, ShardStats};
use crate::service::tokio_rt::SideRuntime;
use crate::shard::sources::SharedAdmission;
use crate::shard::{SessionBoard, SessionInfo};
use alknet_proto::Fingerprint;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use thiserror::Error;

/// Everything a service's [`build`](super::Service::build) may use on one shard.
///
/// Handlers keep what they need beyond `build` by cloning it: [`drain`](Self::drain),
/// [`spawner`](Self::spawner), [`identities`](Self::identities), [`node`](Self::node).
pub struct ServiceContext<'a, C> {
    shard: &'a ShardSetup,
    config: &'a C,
    watch: &'a ConfigWatch<C>,
}

impl<'a, C> ServiceContext<'a, C> {
    pub(crate) fn new(shard: &'a ShardSetup, config: &'a C, watch: &'a ConfigWatch<C>) -> Self {
        Self {
            shard,
            config,
            watch,
        }
    }

    /// The shard being built (0-based; one shard per worker thread).
    pub fn shard(&self) -> usize {
        self.shard.shard
    }

    /// The service's own `[services.NAME]` keys, parsed, as they were when the shard was
    /// built. A handler that should follow a live reload keeps [`config_watch`](Self::config_watch)
    /// instead.
    pub fn config(&self) -> &'a C {
        self.config
    }

    /// The service's section as it is now: a reload (SIGHUP, `alknet reload`) that changes
    /// `[services.NAME]` stores the newly parsed section here, on every shard at once, after
    /// the whole file was checked. Read [`ConfigWatch::current`] where a decision is taken
    /// (a new session, a new request), so work already under way keeps the rules it started
    /// with.
    pub fn config_watch(&self) -> ConfigWatch<C> {
        self.watch.clone()
    }

    /// Who the peers are: lookups by key fingerprint and by token (`alk_…`), answered from
    /// memory without waiting on disk.
    pub fn identities(&self) -> &Arc<dyn IdentityProvider> {
        &self.shard.identities
    }

    /// Facts about the node: its key, the ALPNs it serves, its sessions, its peers.
    pub fn node(&self) -> &Arc<NodeFacts> {
        &self.shard.node
    }

    /// The shard's drain signal: fired when the server starts shutting down, so services
    /// can finish what they are doing and stop taking new work. Connections still open at
    /// the end of the drain period are closed by the shard.
    pub fn drain(&self) -> Drain {
        self.shard.drain.clone()
    }

    /// The guarded spawn, to keep in a handler.
    pub fn spawner(&self) -> Spawner {
        self.shard.spawner.clone()
    }

    /// The node's tokio side runtime, for libraries that need tokio (russh, hyper, child
    /// processes): shared by every shard, started on first use. Bridge a stream to it with
    /// [`serve_on_tokio`](crate::service::bridge::serve_on_tokio); the QUIC data path stays
    /// on the shard.
    pub fn tokio(&self) -> &Arc<SideRuntime> {
        &self.shard.tokio
    }

    /// Where the service reports a client it refused as a failed authentication (see
    /// [`AuthFailures`]), to keep in a handler.
    pub fn auth_failures(&self) -> AuthFailures {
        self.shard.auth_failures.clone()
    }

    /// Starts a task on this shard; the only way a service starts one (see [`Spawner`]).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + 'static,
    {
        self.shard.spawner.spawn(task);
    }
}

/// A service's `[services.NAME]` section that follows live reloads: cheap to clone, shared by
/// every shard, read without waiting on a reload (the section is swapped whole).
pub struct ConfigWatch<C> {
    inner: Arc<WatchInner<C>>,
}

struct WatchInner<C> {
    current: RwLock<Arc<C>>,
    version: AtomicU64,
}

impl<C> Clone for ConfigWatch<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> ConfigWatch<C> {
    /// A watch holding `config`, at version 0.
    pub fn new(config: C) -> Self {
        Self {
            inner: Arc::new(WatchInner {
                current: RwLock::new(Arc::new(config)),
                version: AtomicU64::new(0),
            }),
        }
    }

    /// The section as it is now.
    pub fn current(&self) -> Arc<C> {
        match self.inner.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// How many reloads changed the section since start: a handler that derives state from
    /// the section (compiled rules) rebuilds it when this moves.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Stores a newly parsed section (the registry does, on reload).
    pub(crate) fn replace(&self, config: C) {
        let mut guard = match self.inner.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Arc::new(config);
        self.inner.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// How a service reports a failed authentication it decided itself, after the shard let
/// the connection in (the join service refusing a forged, expired or spent invite): the
/// same one `alknet::auth` log line with the source address that fail2ban's filter matches,
/// the same `auth_failures` counters (`alknet stats`, `alknet_auth_failures_total`), and a
/// count against the source's penalty, so a source guessing at a service gets dropped
/// before its next handshake exactly as one presenting unknown keys does.
#[derive(Clone)]
pub struct AuthFailures {
    stats: Arc<ShardStats>,
    /// The per-source penalties; `None` for a shard built without them (unit tests).
    admission: Option<Arc<SharedAdmission>>,
}

impl AuthFailures {
    pub(crate) fn new(stats: Arc<ShardStats>, admission: Option<Arc<SharedAdmission>>) -> Self {
        Self { stats, admission }
    }

    pub(crate) fn with_penalties(self, admission: Arc<SharedAdmission>) -> Self {
        Self {
            admission: Some(admission),
            ..self
        }
    }

    /// Reports one failed authentication from `remote` on `alpn`: logs it, counts it under
    /// `reason` (a short, fixed phrase such as `"unknown invite"`) and penalises the source.
    pub fn report(
        &self,
        remote: SocketAddr,
        alpn: &str,
        fingerprint: Option<Fingerprint>,
        reason: &'static str,
    ) {
        stats::bump(&self.stats.auth_failures);
        stats::bump(self.stats.auth_reason(reason));
        // A root event (no connection span before the target), so the line has the shape
        // deploy/fail2ban/alknet.conf anchors on.
        tracing::warn!(
            target: "alknet::auth",
            parent: None,
            %remote,
            alpn,
            fingerprint = %fingerprint.map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
            reason,
            "authentication failed"
        );
        if let Some(admission) = &self.admission {
            crate::shard::state::penalise(admission, remote, std::time::Instant::now());
        }
    }
}

/// Why a node fact is not available.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// This node was started without the source of this fact.
    #[error("this node does not offer {0}")]
    Unavailable(&'static str),
    /// The identity store failed.
    #[error(transparent)]
    Store(#[from] IdentityError),
}

/// Facts about the running node, the same on every shard.
pub struct NodeFacts {
    fingerprint: Fingerprint,
    alpns: Vec<Vec<u8>>,
    workers: usize,
    started: Instant,
    boards: Vec<SessionBoard>,
    peer_store: Option<Arc<dyn IdentityStore>>,
    invites: Option<Arc<RedbStore>>,
    stats: Vec<Arc<crate::ops::stats::ShardStats>>,
    shards: Vec<flume::Sender<crate::shard::ShardMsg>>,
    quic_addr: Option<std::net::SocketAddr>,
}

impl NodeFacts {
    pub(crate) fn new(
        fingerprint: Fingerprint,
        alpns: Vec<Vec<u8>>,
        boards: Vec<SessionBoard>,
        peer_store: Option<Arc<dyn IdentityStore>>,
    ) -> Self {
        Self {
            fingerprint,
            alpns,
            workers: boards.len(),
            started: Instant::now(),
            boards,
            peer_store,
            invites: None,
            stats: Vec::new(),
            shards: Vec::new(),
            quic_addr: None,
        }
    }

    /// The same facts with the QUIC socket's address.
    pub(crate) fn with_quic_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.quic_addr = Some(addr);
        self
    }

    /// The address the QUIC endpoint listens on (`None` in a node built without sockets).
    pub fn quic_addr(&self) -> Option<std::net::SocketAddr> {
        self.quic_addr
    }

    /// The same facts with the shards' inboxes (for [`NodeFacts::close_peer`]).
    pub(crate) fn with_shards(
        mut self,
        shards: Vec<flume::Sender<crate::shard::ShardMsg>>,
    ) -> Self {
        self.shards = shards;
        self
    }

    /// Closes every live connection of `peer` on every shard (as `alknet peer revoke` does
    /// after removing it); returns how many of its sessions were live.
    pub fn close_peer(&self, peer: &str) -> usize {
        let live = self.sessions().iter().filter(|s| s.peer == peer).count();
        for tx in &self.shards {
            let _ = tx.send(crate::shard::ShardMsg::ClosePeer(peer.to_owned()));
        }
        live
    }

    /// The same facts with the shards' counters (for [`NodeFacts::stats`]).
    pub(crate) fn with_stats(mut self, stats: Vec<Arc<crate::ops::stats::ShardStats>>) -> Self {
        self.stats = stats;
        self
    }

    /// The node's counters, summed over its shards (what `alknet stats` shows).
    pub fn stats(&self) -> crate::ops::stats::StatsSnapshot {
        crate::ops::stats::sum(self.stats.iter().map(|s| s.as_ref()))
    }

    /// The same facts with the store that holds the invites (for the join service).
    pub(crate) fn with_invites(mut self, store: Option<Arc<RedbStore>>) -> Self {
        self.invites = store;
        self
    }

    /// The store holding invites, where the join service redeems them; `None` on a node
    /// started without one (the join service then refuses every request).
    pub fn invites(&self) -> Option<Arc<RedbStore>> {
        self.invites.clone()
    }

    /// The node's key, as clients pin it.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The ALPNs the node serves, in offer order.
    pub fn alpns(&self) -> &[Vec<u8>] {
        &self.alpns
    }

    /// Worker threads (shards).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// When the server started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The authenticated connections of every shard, by peer then age.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        crate::shard::sessions_of(&self.boards)
    }

    /// The peers of the node's store, as operators see them, in id order.
    pub fn peers(&self) -> Result<Vec<PeerView>, NodeError> {
        let store = self
            .peer_store
            .as_ref()
            .ok_or(NodeError::Unavailable("a peer list"))?;
        Ok(store
            .list_peers()?
            .iter()
            .map(|p| PeerView::from(&**p))
            .collect())
    }
}

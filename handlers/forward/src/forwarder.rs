//! The runtime side (tokio): resolve a target once, check it, connect to exactly what was
//! checked; bind listeners the policy allows; count what each peer holds.
//!
//! One [`Forwarder`] serves the whole gateway (SSH port forwards and `alknet/tunnel`
//! alike), so the per-peer caps count over both. Its policy can be replaced while it runs
//! ([`Forwarder::set_policy`], for a configuration reload): new forwards follow the new
//! rules; forwards already open keep running until they end or their session does.

use crate::class;
use crate::policy::{Host, Policy, Refusal, Requester};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

/// A future resolving a name to addresses.
pub type Resolution<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves host names (injectable, so tests can script answers).
pub trait Resolve: Send + Sync {
    /// The addresses of `name`.
    fn resolve<'a>(&'a self, name: &'a str) -> Resolution<'a>;
}

/// The system resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> Resolution<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// The gateway's own addresses, asked at each decision (interfaces come and go).
pub type OwnAddresses = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

#[derive(Default)]
struct Counts {
    per_peer: HashMap<String, (u32, u32)>,
    connections: u32,
}

/// What is open, per peer and in all.
#[derive(Default)]
struct Holds(Mutex<Counts>);

impl Holds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One forwarded connection counted against its peer's and the gateway's caps; released
/// on drop.
pub struct ConnectionHold {
    holds: Arc<Holds>,
    peer: String,
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        let mut c = self.holds.lock();
        c.connections = c.connections.saturating_sub(1);
        release(&mut c, &self.peer, |e| e.0 = e.0.saturating_sub(1));
    }
}

/// One listener counted against its peer's cap; released on drop.
pub struct ListenerHold {
    holds: Arc<Holds>,
    peer: String,
}

impl Drop for ListenerHold {
    fn drop(&mut self) {
        let mut c = self.holds.lock();
        release(&mut c, &self.peer, |e| e.1 = e.1.saturating_sub(1));
    }
}

fn release(c: &mut Counts, peer: &str, f: impl FnOnce(&mut (u32, u32))) {
    if let Some(e) = c.per_peer.get_mut(peer) {
        f(e);
        if *e == (0, 0) {
            c.per_peer.remove(peer);
        }
    }
}

/// An outbound forward: the connected stream and its hold.
pub struct Outbound {
    /// The connection to the target.
    pub stream: TcpStream,
    /// The address connected to (one the policy checked).
    pub addr: SocketAddr,
    /// Counts the connection until dropped.
    pub hold: ConnectionHold,
}

/// A remote-forward listener and its hold.
pub struct Inbound {
    /// The bound listener.
    pub listener: TcpListener,
    /// The address bound (with the port the system picked, when 0 was asked for).
    pub addr: SocketAddr,
    /// Counts the listener until dropped.
    pub hold: ListenerHold,
}

/// The gateway's forwarder: policy, resolver, caps.
pub struct Forwarder {
    policy: RwLock<Arc<Policy>>,
    resolver: Arc<dyn Resolve>,
    own: OwnAddresses,
    holds: Arc<Holds>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder with the system resolver and this host's interface addresses.
    pub fn new(policy: Policy) -> Self {
        Self::with(
            policy,
            Arc::new(SystemResolver),
            Arc::new(class::interface_addresses),
        )
    }

    /// A forwarder with a given resolver and source of own addresses (tests).
    pub fn with(policy: Policy, resolver: Arc<dyn Resolve>, own: OwnAddresses) -> Self {
        Self {
            policy: RwLock::new(Arc::new(policy)),
            resolver,
            own,
            holds: Arc::default(),
        }
    }

    /// Replaces the policy; forwards decided from now on follow it.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts one more forwarded connection of `peer`, or refuses at a cap. Connections
    /// accepted on a remote-forward listener are counted this way too.
    pub fn hold_connection(&self, peer: &str) -> Result<ConnectionHold, Refusal> {
        let caps = self.policy().caps();
        let mut c = self.holds.lock();
        if c.connections >= caps.connections {
            return Err(Refusal::GatewayCap);
        }
        let e = c.per_peer.entry(peer.to_owned()).or_default();
        if e.0 >= caps.connections_per_peer {
            if *e == (0, 0) {
                c.per_peer.remove(peer);
            }
            return Err(Refusal::ConnectionCap);
        }
        e.0 += 1;
        c.connections += 1;
        Ok(ConnectionHold {
            holds: self.holds.clone(),
            peer: peer.to_owned(),
        })
    }

    fn hold_listener(&self, peer: &str) -> Result<ListenerHold, Refusal> {
        let caps = self.policy().caps();
        let mut c = self.holds.lock();
        let e = c.per_peer.entry(peer.to_owned()).or_default();
        if e.1 >= caps.listeners_per_peer {
            if *e == (0, 0) {
                c.per_peer.remove(peer);
            }
            return Err(Refusal::ListenerCap);
        }
        e.1 += 1;
        Ok(ListenerHold {
            holds: self.holds.clone(),
            peer: peer.to_owned(),
        })
    }

    /// Forwarded connections and listeners `peer` holds now.
    pub fn held(&self, peer: &str) -> (u32, u32) {
        self.holds
            .lock()
            .per_peer
            .get(peer)
            .copied()
            .unwrap_or_default()
    }

    /// Checks `host:port` for `who` and returns the addresses to connect to: the name (if
    /// it is one) resolved exactly once, every address checked. No connection is made.
    pub async fn decide(
        &self,
        who: &Requester<'_>,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let policy = self.policy();
        let host = Host::parse(host)?;
        policy.precheck(who, &host, port)?;
        let addrs = match &host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(n) => match self.resolver.resolve(n).await {
                Ok(a) => a,
                Err(e) => {
                    debug!(peer = who.peer, error = %e, "target name does not resolve");
                    return Err(Refusal::Unresolved);
                }
            },
        };
        policy.decide_connect(who, &host, port, &addrs, &(self.own)())
    }

    /// Connects `who` to `host:port` if the policy allows: within the caps, to an address
    /// that was checked, within the connect timeout.
    pub async fn connect(
        &self,
        who: &Requester<'_>,
        host: &str,
        port: u16,
    ) -> Result<Outbound, Refusal> {
        let hold = self.hold_connection(who.peer)?;
        let addrs = self.decide(who, host, port).await?;
        let timeout = self.policy().caps().connect_timeout;
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Outbound { stream, addr, hold });
                }
                Ok(Err(e)) => debug!(peer = who.peer, port, error = %e, "connect failed"),
                Err(_) => debug!(peer = who.peer, port, "connect timed out"),
            }
        }
        Err(Refusal::Unreachable)
    }

    /// Binds a listener for `who` on `bind:port` if the policy allows, within the cap.
    pub fn listen(&self, who: &Requester<'_>, bind: &str, port: u32) -> Result<Inbound, Refusal> {
        let addr = self.policy().decide_listen(who, bind, port)?;
        let hold = self.hold_listener(who.peer)?;
        let bound = (|| {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(128)
        })();
        match bound {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap_or(addr);
                Ok(Inbound {
                    listener,
                    addr,
                    hold,
                })
            }
            Err(e) => {
                debug!(peer = who.peer, port, error = %e, "bind failed");
                Err(Refusal::BindFailed)
            }
        }
    }
}

//! The TCP+TLS listener: for clients that cannot reach the QUIC port (UDP blocked, browsers
//! and curl without HTTP/3), services are also reached over TLS on TCP.
//!
//! A service asks for it by declaring a [`TcpOffer`] (the address, default the QUIC listen
//! address over TCP, and the ALPNs it serves there). The server binds one `SO_REUSEPORT`
//! listener per shard for each address, with a TLS configuration of its own: the node's
//! certificate (and an ECDSA P-256 one for browsers, which cannot verify Ed25519), TLS 1.3 only, client keys requested, and the ALPNs of the services on that
//! address. The accept path is the same for every service: the handshake (bounded by
//! `[transport] handshake_timeout`), the negotiated ALPN picking the service (a client that
//! offers none gets `http/1.1` where a service serves it), and the client key authorised by
//! the rule QUIC uses ([`crate::shard`]: a known enabled peer with one of the service's
//! scopes, or any client for a service that serves strangers). The handler then gets the
//! [`TlsStream`] and the [`AuthContext`] on its shard's thread.
//!
//! Bounds: `[transport] max_connections_per_shard` connections per shard (more are closed
//! at accept), sources penalised for failed authentications are refused at accept, and
//! anonymous clients count against `[admission] max_connections_per_anonymous_source`.

use crate::identity::tls::NodeKey;
use crate::identity::{AuthContext, Identity, IdentityProvider};
use crate::service::{AuthFailures, Drain, Spawner};
use crate::shard::auth::{ServiceRule, authorize};
use crate::shard::sources::SharedAdmission;
use alknet_proto::Fingerprint;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The stream a service's [`crate::Handler::handle_tcp`] reads and writes: TLS over a TCP
/// connection, with tokio's `AsyncRead + AsyncWrite` (no tokio runtime needed: the shard's
/// ring polls the socket).
pub type TlsStream = tokio_rustls::server::TlsStream<monoio::net::tcp::stream_poll::TcpStreamPoll>;

/// The ALPN a client that offers none is served with, where a service serves it.
pub const DEFAULT_ALPN: &[u8] = b"http/1.1";

/// Where and how a service is reached over TCP+TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOffer {
    /// The address to listen on; `None` for the QUIC listen address's, over TCP.
    pub listen: Option<SocketAddr>,
    /// The ALPNs it serves there, in preference order (`h2`, `http/1.1`).
    pub alpns: &'static [&'static [u8]],
}

/// One TCP address and the ALPNs served on it, with its listeners (one per shard).
pub(crate) struct TcpGroup {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) listeners: Vec<std::net::TcpListener>,
}

/// Binds the TCP listeners the registered services ask for: `workers` per address.
pub(crate) fn bind(
    quic_addr: SocketAddr,
    node: &NodeKey,
    offers: &[(TcpOffer, bool)],
    workers: usize,
) -> Result<Vec<TcpGroup>, String> {
    let mut addrs: Vec<(SocketAddr, Vec<Vec<u8>>, bool)> = Vec::new();
    for (offer, anonymous) in offers {
        let addr = offer.listen.unwrap_or(quic_addr);
        let i = match addrs.iter().position(|(a, _, _)| *a == addr) {
            Some(i) => i,
            None => {
                addrs.push((addr, Vec::new(), false));
                addrs.len() - 1
            }
        };
        if let Some((_, alpns, anon)) = addrs.get_mut(i) {
            for a in offer.alpns {
                if !alpns.iter().any(|x| x == a) {
                    alpns.push(a.to_vec());
                }
            }
            *anon |= *anonymous;
        }
    }
    addrs
        .into_iter()
        .map(|(addr, alpns, anonymous)| {
            let tls = crate::identity::tls::tcp_server_config(node, alpns, !anonymous)
                .map_err(|e| format!("TCP listener {addr}: {e}"))?;
            let listeners = (0..workers)
                .map(|_| listen(addr))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AddrInUse => format!(
                        "{addr} (tcp) is already in use by another process; stop it or set another address ([services.http] tcp_listen)"
                    ),
                    _ => format!("cannot listen on {addr} (tcp): {e}"),
                })?;
            Ok(TcpGroup {
                addr,
                tls: Arc::new(tls),
                listeners,
            })
        })
        .collect()
}

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A TCP-served service on one shard.
#[derive(Clone)]
pub(crate) struct TcpRoute {
    pub(crate) name: &'static str,
    pub(crate) offer: TcpOffer,
    pub(crate) alpn: &'static [u8],
    pub(crate) scopes: &'static [&'static str],
    pub(crate) anonymous: bool,
    pub(crate) handler: Rc<dyn crate::service::ErasedHandler>,
}

/// What one shard's TCP accept loops share.
pub(crate) struct TcpShard {
    pub(crate) routes: Vec<TcpRoute>,
    pub(crate) identities: Arc<dyn IdentityProvider>,
    pub(crate) admission: Arc<SharedAdmission>,
    pub(crate) failures: AuthFailures,
    pub(crate) spawner: Spawner,
    pub(crate) drain: Drain,
    pub(crate) quic_addr: SocketAddr,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) anonymous_cap: u32,
    pub(crate) open: Cell<usize>,
}

/// Accepts connections on one listener until the shard drains.
pub(crate) async fn accept_loop(
    shard: Rc<TcpShard>,
    group_addr: SocketAddr,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(addr = %group_addr, error = %e, "TCP listener set-up failed");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let routes: Vec<TcpRoute> = shard
        .routes
        .iter()
        .filter(|r| r.offer.listen.unwrap_or(shard.quic_addr) == group_addr)
        .cloned()
        .collect();
    let routes = Rc::new(routes);
    let drain = shard.drain.clone();
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => a,
            _ = drain.wait() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning.
                debug!(error = %e, "TCP accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        if shard.open.get() >= shard.max_connections {
            debug!(%remote, "TCP connection refused: shard at max_connections_per_shard");
            continue;
        }
        if shard
            .admission
            .penalties
            .is_blocked(remote.ip(), Instant::now())
        {
            debug!(%remote, "TCP connection from a penalised source dropped");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shard2 = shard.clone();
        let routes = routes.clone();
        let acceptor = acceptor.clone();
        shard.open.set(shard.open.get() + 1);
        shard.spawner.spawn(async move {
            let _open = OpenGuard(shard2.clone());
            serve(shard2, routes, acceptor, stream, remote).await;
        });
    }
}

struct OpenGuard(Rc<TcpShard>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

async fn serve(
    shard: Rc<TcpShard>,
    routes: Rc<Vec<TcpRoute>>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: monoio::net::TcpStream,
    remote: SocketAddr,
) {
    let poll = match stream.try_into_poll_io() {
        Ok(p) => p,
        Err((e, _)) => {
            debug!(%remote, error = %e, "TCP stream set-up failed");
            return;
        }
    };
    let tls = match monoio::time::timeout(shard.handshake_timeout, acceptor.accept(poll)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "TLS handshake failed (tcp)");
            return;
        }
        Err(_) => {
            debug!(%remote, "TLS handshake timed out (tcp)");
            return;
        }
    };
    let (alpn, fingerprint) = {
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let fp = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| Fingerprint::from_peer_der(c.as_ref()).ok());
        (alpn, fp)
    };
    let alpn = alpn.unwrap_or_else(|| DEFAULT_ALPN.to_vec());
    let Some(route) = routes
        .iter()
        .find(|r| r.offer.alpns.contains(&alpn.as_slice()))
    else {
        debug!(%remote, alpn = %String::from_utf8_lossy(&alpn), "no TCP service for the negotiated ALPN");
        return;
    };
    let static_alpn = route
        .offer
        .alpns
        .iter()
        .copied()
        .find(|a| *a == alpn.as_slice())
        .unwrap_or(route.alpn);
    let alpn_text = String::from_utf8_lossy(static_alpn).into_owned();
    let peer = match fingerprint {
        Some(fp) => match shard.identities.by_fingerprint(&fp) {
            Ok(p) => p,
            Err(e) => {
                warn!(%remote, error = %e, "identity lookup failed (tcp)");
                return;
            }
        },
        None => None,
    };
    let rule = ServiceRule {
        alpn: &alpn_text,
        scopes: route.scopes,
        anonymous: route.anonymous,
    };
    let peer = match authorize(peer.as_deref(), fingerprint, rule) {
        Ok(p) => p.cloned(),
        Err(failure) => {
            if failure.penalises() {
                shard
                    .failures
                    .report(remote, &alpn_text, fingerprint, failure.log_reason());
            } else {
                warn!(%remote, alpn = %alpn_text, reason = failure.log_reason(), "TCP connection refused: {failure}");
            }
            return;
        }
    };
    let _held = match &peer {
        Some(_) => None,
        None => {
            let slot = shard.admission.source(remote);
            match shard.admission.hold_anonymous(slot, shard.anonymous_cap) {
                Some(h) => Some(h),
                None => {
                    debug!(%remote, "TCP connection refused: source at max_connections_per_anonymous_source");
                    return;
                }
            }
        }
    };
    let auth = AuthContext {
        identity: peer.as_ref().map(|p| Identity {
            id: p.peer_id.clone(),
        }),
        scopes: peer
            .as_ref()
            .map(|p| p.scopes.clone().into())
            .unwrap_or_else(|| Arc::from(Vec::<String>::new())),
        alpn: static_alpn,
        remote_addr: remote,
        tls_client_fingerprint: fingerprint,
        forwarded_for: None,
    };
    debug!(service = route.name, %remote, alpn = %alpn_text, peer = ?auth.identity.as_ref().map(|i| &i.id), "TCP connection");
    route.handler.clone().serve_tcp(tls, auth).await;
}

/// Spawns the accept loops of `groups` for shard `shard_no` on its runtime.
pub(crate) fn start_shard(
    shard: Rc<TcpShard>,
    groups: Vec<(SocketAddr, std::net::TcpListener, Arc<rustls::ServerConfig>)>,
) {
    for (addr, listener, tls) in groups {
        let s = shard.clone();
        shard.spawner.spawn(accept_loop(s, addr, listener, tls));
    }
}

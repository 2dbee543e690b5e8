//! The tunnel service (`alknet/tunnel`, scope `tunnel`): each bidirectional stream a client
//! opens carries one TCP connection, so one lost packet stalls only the connection it
//! belongs to.
//!
//! A stream starts with a header ([`alknet_proto::tunnel`]): CONNECT asks the gateway to
//! dial a target; LISTEN asks it to listen (a remote forward) for as long as that stream
//! stays open, and the gateway then opens one stream to the client per accepted connection,
//! headed ACCEPTED with the listener's id. Every decision (is this target allowed, the
//! per-peer caps, the resolution of names) is the shared [`alknet_forward::Forwarder`]'s,
//! the same one SSH port forwarding uses. After the verdict, bytes are relayed both ways on
//! the tokio side runtime with half-close carried as FIN ([`alknet_forward::relay`]).
//!
//! Streams are served through the core's tokio bridge, so the connection closing for any
//! reason (revocation, drain, the client leaving) aborts every relay and listener of it. A
//! failed relay drops its bridged stream, which resets the QUIC stream with the bridge's
//! `ABANDONED` code (0x4); a malformed or late header drops the stream the same way.
#![forbid(unsafe_code)]

pub mod client;

use alknet_core::service::bridge::{BridgedStream, serve_on_tokio};
use alknet_core::service::tokio_rt::SideRuntime;
use alknet_core::{
    AuthContext, Connection, Handler, NoConfig, Service, ServiceContext, ServiceInfo,
};
use alknet_forward::{ConnectionHold, Forwarder, Refusal as PolicyRefusal, Requester};
use alknet_proto::tunnel::{Accepted, Decoded, Failure, MAX_HEADER_LEN, Refusal, Request, Verdict};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// The tunnel service's ALPN.
pub const ALPN: &[u8] = b"alknet/tunnel";

/// The scope that opens it.
pub const SCOPES: &[&str] = &["tunnel"];

/// Time a client has to send a whole stream header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted remote-forward connections waiting for their stream to the client, per QUIC
/// connection; more are closed at once.
pub const ACCEPT_QUEUE: usize = 64;

/// The tunnel service, sharing the gateway's forwarder (policy, caps) with SSH forwarding.
pub struct Tunnel {
    forwarder: Arc<Forwarder>,
}

impl Tunnel {
    /// The service deciding with `forwarder`.
    pub fn new(forwarder: Arc<Forwarder>) -> Self {
        Self { forwarder }
    }
}

impl Service for Tunnel {
    const NAME: &'static str = "tunnel";
    type Config = NoConfig;
    type Handler = TunnelHandler;

    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: SCOPES,
            anonymous: false,
            uni_streams: false,
        }
    }

    fn build(&self, ctx: &ServiceContext<'_, NoConfig>) -> TunnelHandler {
        TunnelHandler {
            forwarder: self.forwarder.clone(),
            rt: ctx.tokio().clone(),
        }
    }
}

/// The tunnel service on one shard.
pub struct TunnelHandler {
    forwarder: Arc<Forwarder>,
    rt: Arc<SideRuntime>,
}

/// What a stream's tokio task knows of its connection.
struct Peer {
    id: String,
    scopes: Vec<String>,
    forwarder: Arc<Forwarder>,
    accepted: flume::Sender<Incoming>,
    next_listener: AtomicU32,
}

/// A connection accepted on a remote-forward listener, waiting for its stream.
struct Incoming {
    tcp: TcpStream,
    from: SocketAddr,
    listener: u32,
    hold: ConnectionHold,
}

impl Handler for TunnelHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        let Some(id) = auth.identity.as_ref().map(|i| i.id.clone()) else {
            return;
        };
        let (tx, rx) = flume::bounded::<Incoming>(ACCEPT_QUEUE);
        let peer = Arc::new(Peer {
            id,
            scopes: auth.scopes.to_vec(),
            forwarder: self.forwarder.clone(),
            accepted: tx,
            next_listener: AtomicU32::new(1),
        });
        // Server-opened streams, one per accepted remote-forward connection, opened in order
        // so a client without stream credit pushes back on the queue.
        let (me, c, p) = (self.clone(), conn.clone(), peer.clone());
        conn.spawn(async move {
            while let Ok(inc) = rx.recv_async().await {
                let Ok((send, recv)) = c.open_bi().await else {
                    return;
                };
                let p = p.clone();
                let cc = c.clone();
                let rt = me.rt.clone();
                c.spawn(async move {
                    let _ =
                        serve_on_tokio(&rt, &cc, send, recv, move |s| accepted(s, inc, p)).await;
                });
            }
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            let p = peer.clone();
            let c = conn.clone();
            let rt = self.rt.clone();
            conn.spawn(async move {
                if let Err(e) = serve_on_tokio(&rt, &c, send, recv, move |s| stream(s, p)).await {
                    debug!(error = %e, "tunnel stream ended with its connection");
                }
            });
        }
    }
}

/// The verdict for a refusal of the policy engine.
pub fn verdict_for(r: &PolicyRefusal) -> Verdict {
    match r {
        PolicyRefusal::Unresolved => Verdict::Failed(Failure::NameNotResolved),
        PolicyRefusal::Unreachable => Verdict::Failed(Failure::Unreachable),
        PolicyRefusal::BindFailed => Verdict::Failed(Failure::Other),
        PolicyRefusal::ConnectionCap | PolicyRefusal::GatewayCap => {
            Verdict::Refused(Refusal::ConnectionLimit)
        }
        PolicyRefusal::ListenerCap => Verdict::Refused(Refusal::ListenerLimit),
        _ => Verdict::Refused(Refusal::Forbidden),
    }
}

/// Reads a request header; the bytes after it that were read with it come back too.
async fn read_request(s: &mut BridgedStream) -> Option<(Request, Vec<u8>)> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut len = 0;
    loop {
        match Request::decode(buf.get(..len)?) {
            Ok(Decoded::Done(r, n)) => return Some((r, buf.get(n..len)?.to_vec())),
            Ok(Decoded::Incomplete) => {}
            Err(e) => {
                debug!(error = %e, "bad tunnel header");
                return None;
            }
        }
        let n = s.read(buf.get_mut(len..)?).await.ok()?;
        if n == 0 {
            return None;
        }
        len += n;
    }
}

async fn refuse(mut s: BridgedStream, peer: &Peer, r: &PolicyRefusal) {
    info!(peer = %peer.id, reason = %r, "tunnel request refused");
    if s.write_all(&verdict_for(r).encode()).await.is_ok() {
        let _ = s.shutdown().await;
    }
}

/// One client-opened stream.
async fn stream(mut s: BridgedStream, peer: Arc<Peer>) {
    let Ok(Some((req, early))) = tokio::time::timeout(HEADER_TIMEOUT, read_request(&mut s)).await
    else {
        return;
    };
    let who = Requester {
        peer: &peer.id,
        scopes: &peer.scopes,
    };
    match req {
        Request::Connect(t) => {
            let host = t.host.to_string();
            let out = match peer.forwarder.connect(&who, &host, t.port).await {
                Ok(o) => o,
                Err(r) => return refuse(s, &peer, &r).await,
            };
            if s.write_all(&Verdict::Connected.encode()).await.is_err() {
                return;
            }
            let mut tcp = out.stream;
            if !early.is_empty() && tcp.write_all(&early).await.is_err() {
                return;
            }
            let r = alknet_forward::relay::relay(s, tcp).await;
            alknet_forward::relay::log_end(&peer.id, "tunnel", &host, t.port, &r);
            drop(out.hold);
        }
        Request::Listen(t) => {
            let inbound = match peer
                .forwarder
                .listen(&who, &t.host.to_string(), u32::from(t.port))
            {
                Ok(i) => i,
                Err(r) => return refuse(s, &peer, &r).await,
            };
            let id = peer.next_listener.fetch_add(1, Ordering::Relaxed);
            let v = Verdict::Listening {
                id,
                port: inbound.addr.port(),
            };
            if s.write_all(&v.encode()).await.is_err() {
                return;
            }
            info!(peer = %peer.id, port = inbound.addr.port(), "tunnel listener open");
            let mut scratch = [0u8; 64];
            loop {
                tokio::select! {
                    // The client ends the listener by finishing (or resetting) its stream.
                    r = s.read(&mut scratch) => {
                        if !matches!(r, Ok(n) if n > 0) { break; }
                    }
                    a = inbound.listener.accept() => match a {
                        Ok((tcp, from)) => {
                            let hold = match peer.forwarder.hold_connection(&peer.id) {
                                Ok(h) => h,
                                Err(r) => {
                                    warn!(peer = %peer.id, reason = %r, "remote-forward connection closed");
                                    continue;
                                }
                            };
                            let inc = Incoming { tcp, from, listener: id, hold };
                            if peer.accepted.try_send(inc).is_err() {
                                warn!(peer = %peer.id, "remote-forward queue full; connection closed");
                            }
                        }
                        Err(e) => debug!(error = %e, "accept failed"),
                    },
                }
            }
            info!(peer = %peer.id, port = inbound.addr.port(), "tunnel listener closed");
            let _ = s.shutdown().await;
            drop(inbound);
        }
    }
}

/// One server-opened stream: a connection accepted on a remote-forward listener.
async fn accepted(mut s: BridgedStream, inc: Incoming, peer: Arc<Peer>) {
    let head = Accepted {
        listener: inc.listener,
        from: inc.from,
    };
    if s.write_all(&head.encode()).await.is_err() {
        return;
    }
    let r = alknet_forward::relay::relay(inc.tcp, s).await;
    alknet_forward::relay::log_end(&peer.id, "tunnel-remote", "", head.from.port(), &r);
    drop(inc.hold);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refusals_map_to_verdicts_the_client_can_explain() {
        assert_eq!(
            verdict_for(&PolicyRefusal::NoRule),
            Verdict::Refused(Refusal::Forbidden)
        );
        assert_eq!(
            verdict_for(&PolicyRefusal::Protected("loopback")),
            Verdict::Refused(Refusal::Forbidden)
        );
        assert_eq!(
            verdict_for(&PolicyRefusal::ConnectionCap),
            Verdict::Refused(Refusal::ConnectionLimit)
        );
        assert_eq!(
            verdict_for(&PolicyRefusal::ListenerCap),
            Verdict::Refused(Refusal::ListenerLimit)
        );
        assert_eq!(
            verdict_for(&PolicyRefusal::Unresolved),
            Verdict::Failed(Failure::NameNotResolved)
        );
    }
}
